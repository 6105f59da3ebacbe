"""Stitching overlapping photos with OpenCV's stitcher, keeping the stitcher's own mask.

:func:`stitch_images` registers the photos with ``cv2.Stitcher`` (its features, matching,
camera estimation, bundle adjustment and wave correction; ``panorama`` or ``scans`` mode) and
composes them with the components the stitcher composes with (OpenCV's ``detail`` API: the
chosen warper, block gain compensation in panorama mode, graph-cut seams, multi-band blending),
step for step as ``Stitcher::composePanorama`` does. Composing here rather than calling
``composePanorama`` is what makes the projection a choice (the Python binding has no
``setWarper``) and gives the mask: the **multi-band blender's result mask**
(``Blender.blend`` -> ``dst_mask``), i.e. the union of each photo's all-ones mask warped by the
warper with the estimated camera (nearest-neighbour, constant border) and cut by its seam.
It never looks at pixel values, so black content inside a photo stays valid.
(``Stitcher.resultMask()`` is not exposed to Python by OpenCV 4.8-5.x.) With the mode's default
projection the stitch equals ``cv2.Stitcher.stitch``'s output in size and, up to rounding,
in pixels (``tests/test_stitch.py`` checks it).

A stitch that fails (too little overlap, a failed homography or camera adjustment) raises
:class:`StitchError`, one line naming the photos. :func:`overlapping_views` cuts overlapping
views of one photo, each under a small homography, to try it on.

Example:
    >>> import numpy as np
    >>> from stablemotion.io.images import load_image
    >>> from stablemotion.data.synthesis.photos import bundled_photo_paths
    >>> photo = load_image(bundled_photo_paths("bundled-test")[0])      # chelsea, 300 x 451
    >>> views = overlapping_views(photo, 3, np.random.default_rng(0))
    >>> pano = stitch_images(views)
    >>> pano.image.shape[2], pano.mask.shape == pano.image.shape[:2], pano.used, pano.projection
    (3, True, (0, 1, 2), 'spherical')
    >>> bool(0.8 < pano.mask.mean() < 1.0), pano.image.shape[1] > 1.5 * views[0].shape[1]   # a wider frame
    (True, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "MODES", "PROJECTIONS", "Registration", "StitchError", "Stitched", "check_images", "compose", "overlapping_views",
    "register_images", "stitch_images",
]

#: Stitcher modes -> (OpenCV mode, default projection, allowed projections). ``panorama``: a camera
#: rotating about its centre (spherical by default); ``scans``: flat documents or a moving camera
#: under an affine model (affine warp only).
MODES: dict[str, tuple[int, str, tuple[str, ...]]] = {
    "panorama": (cv2.Stitcher_PANORAMA, "spherical",
                 ("spherical", "cylindrical", "plane", "mercator", "transverseMercator", "stereographic",
                  "fisheye")),
    "scans": (cv2.Stitcher_SCANS, "affine", ("affine",)),
}
#: Every projection (``cv2.PyRotationWarper`` type) some mode takes.
PROJECTIONS = tuple(dict.fromkeys(p for _, _, allowed in MODES.values() for p in allowed))

_FAILURES = {
    cv2.Stitcher_ERR_NEED_MORE_IMGS: "too little overlap: OpenCV found no two photos that match confidently "
                                     "(need more photos or more overlap between them)",
    cv2.Stitcher_ERR_HOMOGRAPHY_EST_FAIL: "homography estimation failed (too few matching features between them)",
    cv2.Stitcher_ERR_CAMERA_PARAMS_ADJUST_FAIL: "camera parameter adjustment failed (the matches are "
                                                "inconsistent; try --mode scans for flat scenes)",
}
#: A stitch larger than this many times the photos' total area means the registration went wrong.
_MAX_GROWTH = 16


class StitchError(ValueError):
    """A set of photos OpenCV cannot stitch (or cannot be given to it); the message is one line
    naming the photos."""


@dataclass
class Stitched:
    """What :func:`stitch_images` returns.

    Attributes:
        image: the stitch, (H, W, 3) uint8 RGB, black where no photo landed.
        mask: (H, W) bool, True where a photo landed (the blender's result mask).
        used: indices of the photos in the stitch (OpenCV leaves out photos it cannot match
            confidently to the largest group).
        projection: the warper used.
        mode: ``"panorama"`` or ``"scans"``.
    """

    image: np.ndarray
    mask: np.ndarray
    used: tuple[int, ...]
    projection: str
    mode: str


def _describe(names: Sequence[str]) -> str:
    return ", ".join(names) if len(names) <= 8 else ", ".join(names[:8]) + f" and {len(names) - 8} more"


def check_images(images: Sequence[np.ndarray], names: Sequence[str] | None = None) -> list[str]:
    """Check photos before stitching -> their names (``names`` or ``image 1``, ``image 2`` ...).

    Each must be uint8, (H, W, 3) RGB or (H, W) grey (all the same kind), at least 16 px a side.

    Raises:
        StitchError: fewer than two photos, another dtype or shape, grey mixed with colour.

    Example:
        >>> import numpy as np
        >>> check_images([np.zeros((20, 20, 3), np.uint8)] * 2)
        ['image 1', 'image 2']
        >>> check_images([np.zeros((20, 20, 3), np.uint8), np.zeros((20, 20), np.uint8)], ["a.jpg", "b.png"])
        Traceback (most recent call last):
        ...
        stablemotion.core.stitching.StitchError: cannot stitch a.jpg, b.png: mixed channel counts (a.jpg: 3, b.png: 1); give all colour or all grey photos
    """
    names = list(names) if names is not None else [f"image {i + 1}" for i in range(len(images))]
    if len(names) != len(images):
        raise ValueError(f"{len(names)} names for {len(images)} images")
    if len(images) < 2:
        raise StitchError(f"cannot stitch {_describe(names) or 'nothing'}: need at least two overlapping photos, "
                          f"got {len(images)}")
    channels = []
    for name, image in zip(names, images, strict=True):
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            raise StitchError(f"cannot stitch {name}: expected a uint8 image, got "
                              f"{getattr(image, 'dtype', type(image).__name__)}")
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3) or min(image.shape[:2]) < 16:
            raise StitchError(f"cannot stitch {name}: expected (H, W, 3) RGB or (H, W) grey, at least 16 px a "
                              f"side, got shape {image.shape}")
        channels.append(1 if image.ndim == 2 else 3)
    if len(set(channels)) > 1:
        counts = ", ".join(f"{n}: {c}" for n, c in zip(names, channels, strict=True))
        raise StitchError(f"cannot stitch {_describe(names)}: mixed channel counts ({counts}); give all colour or "
                          "all grey photos")
    return names


def _scaled_k(camera: cv2.detail.CameraParams, factor: float) -> np.ndarray:
    k = camera.K().astype(np.float32)
    k[0, 0] *= factor
    k[0, 2] *= factor
    k[1, 1] *= factor
    k[1, 2] *= factor
    return k


def _median_focal(cameras: Sequence[cv2.detail.CameraParams]) -> float:
    """The warp scale ``Stitcher::estimateCameraParams`` picks, in float32 as it keeps it."""
    focals = sorted(c.focal for c in cameras)
    n = len(focals)
    mid = focals[n // 2] if n % 2 else (focals[n // 2 - 1] + focals[n // 2]) * 0.5
    return float(np.float32(mid))


def _resize(image: np.ndarray, scale: float) -> np.ndarray:
    if abs(scale - 1) <= 1e-1:
        return image
    return cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR_EXACT)


def _ones(image: np.ndarray) -> np.ndarray:
    return np.full(image.shape[:2], 255, np.uint8)


def _umat_list(masks: Sequence[np.ndarray | cv2.UMat]) -> list[np.ndarray]:
    return [m.get() if isinstance(m, cv2.UMat) else np.asarray(m) for m in masks]


@dataclass
class Registration:
    """Photos registered by ``cv2.Stitcher`` (:func:`register_images`), ready to compose.

    Attributes:
        stitcher: the ``cv2.Stitcher`` that registered them (``composePanorama()`` composes
            them its own way, with its default projection).
        photos: the photos of the stitch, BGR uint8, in ``used`` order.
        cameras: their ``cv2.detail.CameraParams`` at the stitcher's work scale.
        used: indices of the photos kept (OpenCV leaves out photos it cannot join confidently
            to the largest matching group).
        names: the names of all the photos given.
        mode: ``"panorama"`` or ``"scans"``.
        grey: the photos were grey.
    """

    stitcher: cv2.Stitcher
    photos: list[np.ndarray]
    cameras: list[cv2.detail.CameraParams]
    used: tuple[int, ...]
    names: list[str]
    mode: str
    grey: bool = False


def register_images(
    images: Sequence[np.ndarray],
    *,
    mode: str = "panorama",
    names: Sequence[str] | None = None,
    confidence: float = 1.0,
    registration_megapixels: float = 0.6,
) -> Registration:
    """Match overlapping photos and estimate their cameras with ``cv2.Stitcher`` (``mode``
    ``"panorama"`` or ``"scans"``) -> :class:`Registration`. See :func:`stitch_images` for the
    arguments.

    Raises:
        StitchError: :func:`check_images`' errors, or OpenCV could not register them.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(1)
        >>> register_images([rng.integers(0, 255, (64, 64, 3), np.uint8) for _ in range(2)], names=["a.png", "b.png"])
        Traceback (most recent call last):
        ...
        stablemotion.core.stitching.StitchError: cannot stitch a.png, b.png: too little overlap: ...
    """
    names = check_images(images, names)
    if mode not in MODES:
        raise ValueError(f"unknown stitch mode {mode!r}; choose from {sorted(MODES)}")
    grey = all(im.ndim == 2 for im in images)
    photos = [cv2.cvtColor(im, cv2.COLOR_GRAY2BGR) if grey else np.ascontiguousarray(im[..., ::-1]) for im in images]
    stitcher = cv2.Stitcher_create(MODES[mode][0])
    stitcher.setPanoConfidenceThresh(float(confidence))
    stitcher.setRegistrationResol(float(registration_megapixels))
    try:
        status = stitcher.estimateTransform(photos)
    except cv2.error as exc:
        raise StitchError(f"cannot stitch {_describe(names)}: OpenCV failed ({_first_line(exc)})") from None
    if status != cv2.Stitcher_OK:
        raise StitchError(f"cannot stitch {_describe(names)}: {_FAILURES.get(status, f'OpenCV status {status}')}")
    used = tuple(int(i) for i in stitcher.component())
    cameras = list(stitcher.cameras())
    if len(used) < 2 or len(cameras) != len(used):
        raise StitchError(f"cannot stitch {_describe(names)}: {_FAILURES[cv2.Stitcher_ERR_NEED_MORE_IMGS]}")
    return Registration(stitcher, [photos[i] for i in used], cameras, used, names, mode, grey)


def compose(registration: Registration, projection: str | None = None,
            compose_megapixels: float | None = None) -> Stitched:
    """Compose registered photos with ``projection`` (default: the mode's) -> :class:`Stitched`,
    as ``Stitcher::composePanorama`` does (see the module's docstring), keeping the blender's
    result mask. ``compose_megapixels``: the size to compose at (``None``: full resolution).

    Raises:
        ValueError: a projection the mode does not take.
        StitchError: OpenCV failed, or the cameras give an absurdly large stitch.
    """
    mode, reg = registration.mode, registration
    projection = _projection(mode, projection)
    names = [reg.names[i] for i in reg.used]
    try:
        image, mask = _compose(reg.photos, reg.cameras, reg.stitcher.workScale(), projection,
                               blocks_gain=mode == "panorama", compose_megapixels=compose_megapixels, names=names)
    except cv2.error as exc:
        raise StitchError(f"cannot stitch {_describe(reg.names)}: OpenCV failed while composing "
                          f"({_first_line(exc)})") from None
    rgb = image[..., :1].repeat(3, axis=2) if reg.grey else image[..., ::-1]
    return Stitched(np.ascontiguousarray(rgb), mask, reg.used, projection, mode)


def _projection(mode: str, projection: str | None) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown stitch mode {mode!r}; choose from {sorted(MODES)}")
    _, default, allowed = MODES[mode]
    if projection is not None and projection not in allowed:
        raise ValueError(f"projection {projection!r} is not available in {mode} mode; choose from {list(allowed)}")
    return projection or default


def stitch_images(
    images: Sequence[np.ndarray],
    *,
    mode: str = "panorama",
    projection: str | None = None,
    names: Sequence[str] | None = None,
    confidence: float = 1.0,
    registration_megapixels: float = 0.6,
    compose_megapixels: float | None = None,
) -> Stitched:
    """Stitch overlapping photos (uint8 RGB (H, W, 3), or all grey) -> :class:`Stitched`:
    :func:`register_images`, then :func:`compose`.

    ``mode``: ``"panorama"`` (a rotating camera) or ``"scans"`` (affine); ``projection``: a
    :data:`PROJECTIONS` name the mode allows (default spherical / affine). ``confidence``: the
    stitcher's pair-match confidence threshold (lower keeps weaker matches); photos it cannot
    join to the largest group are left out (see ``used``). ``registration_megapixels``: the size
    features are matched at; ``compose_megapixels``: the size of the stitch (``None``: the
    photos' full resolution). ``names`` label the photos in errors. OpenCV's feature matching
    runs in parallel with random sampling, so two runs may differ by a pixel or two.

    Raises:
        StitchError: :func:`check_images`' errors, or OpenCV could not stitch them (one line
            naming the photos and the reason).
    """
    _projection(mode, projection)  # before the work
    registration = register_images(images, mode=mode, names=names, confidence=confidence,
                                   registration_megapixels=registration_megapixels)
    return compose(registration, projection, compose_megapixels)


def _first_line(exc: Exception) -> str:
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    return lines[-1] if lines else type(exc).__name__


def _compose(photos: list[np.ndarray], cameras: list[cv2.detail.CameraParams], work_scale: float,
             projection: str, *, blocks_gain: bool, compose_megapixels: float | None,
             names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``Stitcher::composePanorama`` step for step (BGR uint8 photos of the stitch, their cameras
    at the work scale) -> (BGR uint8 stitch, bool mask)."""
    area = photos[0].shape[0] * photos[0].shape[1]
    seam_scale = min(1.0, float(np.sqrt(0.1e6 / area)))  # the stitcher's seam estimation resolution
    seam_aspect = seam_scale / work_scale
    scale = _median_focal(cameras)
    # seams at the seam scale, on exposure-compensated warps
    warper = cv2.PyRotationWarper(projection, scale * seam_aspect)
    corners, warped, masks = [], [], []
    for photo, cam in zip(photos, cameras, strict=True):
        small = cv2.resize(photo, None, fx=seam_scale, fy=seam_scale, interpolation=cv2.INTER_LINEAR_EXACT) \
            if seam_scale < 1 else photo  # the stitcher always resizes its seam images
        k = _scaled_k(cam, seam_aspect)
        corner, image = warper.warp(small, k, cam.R, cv2.INTER_LINEAR, cv2.BORDER_REFLECT)
        masks.append(warper.warp(_ones(small), k, cam.R, cv2.INTER_NEAREST, cv2.BORDER_CONSTANT)[1])
        corners.append(corner)
        warped.append(image)
    # scans: no exposure compensation (the stitcher's NoExposureCompensator; its binding crashes on feed)
    compensator = cv2.detail_BlocksGainCompensator() if blocks_gain else None
    if compensator is not None:
        compensator.feed(corners=corners, images=[cv2.UMat(w) for w in warped], masks=[cv2.UMat(m) for m in masks])
        warped = [compensator.apply(i, corners[i], w, masks[i]) for i, w in enumerate(warped)]
    seams = _umat_list(cv2.detail_GraphCutSeamFinder("COST_COLOR").find(
        [w.astype(np.float32) for w in warped], corners, [cv2.UMat(m) for m in masks]))
    # compose at full (or compose_megapixels) resolution
    compose_scale = 1.0 if not compose_megapixels else min(1.0, float(np.sqrt(compose_megapixels * 1e6 / area)))
    aspect = compose_scale / work_scale
    warper = cv2.PyRotationWarper(projection, float(np.float32(scale * aspect)))
    ks = [_scaled_k(cam, aspect) for cam in cameras]
    rois = []
    for photo, cam, k in zip(photos, cameras, ks, strict=True):
        size = photo.shape[1::-1] if abs(compose_scale - 1) <= 1e-1 else \
            (round(photo.shape[1] * compose_scale), round(photo.shape[0] * compose_scale))
        rois.append(warper.warpRoi(tuple(int(s) for s in size), k, cam.R))
    corners = [(x, y) for x, y, _, _ in rois]
    roi = cv2.detail.resultRoi(corners=corners, sizes=[(w, h) for _, _, w, h in rois])
    if roi[2] * roi[3] > _MAX_GROWTH * sum(p.shape[0] * p.shape[1] for p in photos) * compose_scale ** 2:
        raise StitchError(f"cannot stitch {_describe(names)}: the estimated cameras give a {roi[2]} x {roi[3]} "
                          "stitch, far larger than the photos (the registration failed; try more overlap or "
                          "--mode scans)")
    blender = cv2.detail_MultiBandBlender(0)
    blender.prepare(roi)
    for i, (photo, cam, k) in enumerate(zip(photos, cameras, ks, strict=True)):
        image = _resize(photo, compose_scale)
        _, image_warped = warper.warp(image, k, cam.R, cv2.INTER_LINEAR, cv2.BORDER_REFLECT)
        _, mask_warped = warper.warp(_ones(image), k, cam.R, cv2.INTER_NEAREST, cv2.BORDER_CONSTANT)
        if compensator is not None:
            image_warped = compensator.apply(i, corners[i], image_warped, mask_warped)
        seam = cv2.resize(cv2.dilate(seams[i], np.ones((3, 3), np.uint8)), mask_warped.shape[::-1],
                          interpolation=cv2.INTER_LINEAR_EXACT)
        blender.feed(image_warped.astype(np.int16), cv2.bitwise_and(seam, mask_warped), corners[i])
    result, result_mask = blender.blend(None, None)
    return np.clip(result, 0, 255).astype(np.uint8), np.asarray(result_mask) > 0


def overlapping_views(photo: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` overlapping views across ``photo`` (uint8 (H, W, 3)), left to right, each 45-60% of
    its width and 75-92% of its height under a small random homography (corners moved by
    about 4% of the view's width), as a hand-held camera panning over a scene would take them.

    Example:
        >>> import numpy as np
        >>> views = overlapping_views(np.zeros((100, 200, 3), np.uint8), 3, np.random.default_rng(0))
        >>> len(views), views[0].shape == views[2].shape
        (3, True)
    """
    h, w = photo.shape[:2]
    vw, vh = int(w * rng.uniform(0.45, 0.6)), int(h * rng.uniform(0.75, 0.92))
    out = []
    for x in np.linspace(0, w - vw, n).astype(int):
        y = int(rng.integers(0, h - vh + 1))
        src = np.float32([[x, y], [x + vw, y], [x + vw, y + vh], [x, y + vh]])
        dst = np.float32([[0, 0], [vw, 0], [vw, vh], [0, vh]]) + rng.normal(0, 0.04 * vw, (4, 2)).astype(np.float32)
        homography = cv2.getPerspectiveTransform(src, dst)
        out.append(cv2.warpPerspective(photo, homography, (vw, vh), borderMode=cv2.BORDER_REFLECT))
    return out

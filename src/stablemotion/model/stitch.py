"""Stitch, then rectangle: overlapping photos -> OpenCV's stitch -> the SIR model's rectangle.

:func:`stitch` stitches the photos with :func:`stablemotion.core.stitching.stitch_images`
(``cv2.Stitcher``'s registration, its seams and multi-band blending, the mask from the blender
rather than from pixel values), then rectangles the stitch with a SIR pipeline through the
one-image path every command uses (:func:`stablemotion.model.service.prepare_request` with the
stitcher's mask as the given mask, then :func:`stablemotion.model.service.rectify`: the network
at a capped working size, wide panoramas in windows, the warp at full size in strips).
:func:`write_stitch` writes the rectangle, the raw stitch and on request the mask and flow,
each atomically. ``stablemotion stitch`` (:mod:`stablemotion.cli.stitch`) is the command.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.large_image import MAX_WORK_PIXELS
from ..core.stitching import Stitched, StitchError, stitch_images
from ..io.images import DEFAULT_MAX_PIXELS, PathLike, load_image, save_image
from .service import RectifyResult, prepare_request, rectify, unchanged_result, write_results

__all__ = ["StitchResult", "StitchError", "rectangle_stitch", "stitch", "stitched_path", "write_stitch"]


@dataclass
class StitchResult:
    """What :func:`stitch` returns.

    Attributes:
        stitched: the raw stitch, (H, W, 3) uint8 RGB, black where no photo landed.
        mask: (H, W) bool, True where a photo landed (OpenCV's blender mask).
        image: the rectangled stitch, (H, W, 3) uint8 RGB, or ``None`` (``rectangle=False``).
        flow: its backward flow (H, W, 2) float32 pixels, or ``None``.
        used: indices of the photos in the stitch (OpenCV leaves out photos it cannot match).
        names: the names of all the photos given (file names, or ``image 1`` ...).
        projection, mode: the stitcher's projection and mode.
        stitch_seconds, rectangle_seconds: wall times of the two stages.
        rectified: the rectangling's :class:`~stablemotion.model.service.RectifyResult`, or ``None``.
    """

    stitched: np.ndarray
    mask: np.ndarray
    image: np.ndarray | None
    flow: np.ndarray | None
    used: tuple[int, ...]
    names: list[str]
    projection: str
    mode: str
    stitch_seconds: float
    rectangle_seconds: float = 0.0
    rectified: RectifyResult | None = field(default=None, repr=False)

    @property
    def seconds(self) -> float:
        """Total wall time, stitch and rectangle."""
        return self.stitch_seconds + self.rectangle_seconds

    @property
    def left_out(self) -> list[str]:
        """Names of the photos OpenCV left out of the stitch."""
        return [n for i, n in enumerate(self.names) if i not in self.used]


def _read(images: Sequence[PathLike | np.ndarray], max_pixels: int | None) -> tuple[list[np.ndarray], list[str]]:
    arrays, names = [], []
    for i, item in enumerate(images):
        if isinstance(item, np.ndarray):
            arrays.append(item)
            names.append(f"image {i + 1}")
            continue
        path = Path(os.fspath(item))
        try:
            arrays.append(load_image(path, max_pixels=max_pixels))
        except FileNotFoundError:
            raise FileNotFoundError(f"cannot stitch: {path} does not exist") from None
        except (OSError, ValueError) as exc:
            raise StitchError(f"cannot stitch: {path} is not a readable image ({exc})") from None
        names.append(path.name)
    return arrays, names


def _pipeline(pipeline: Any) -> Any:
    from .loading import load_bundled_pipeline, load_pipeline

    if pipeline is None:
        return load_bundled_pipeline("sir")
    if isinstance(pipeline, (str, os.PathLike)):
        return load_pipeline(pipeline, progress=False)
    return pipeline


def stitch(
    images: Sequence[PathLike | np.ndarray],
    *,
    mode: str = "panorama",
    projection: str | None = None,
    pipeline: Any = None,
    rectangle: bool = True,
    confidence: float = 1.0,
    compose_megapixels: float | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_work_pixels: int | None = MAX_WORK_PIXELS,
    seed: int = 0,
    **rectify_kwargs: Any,
) -> StitchResult:
    """Stitch overlapping photos with OpenCV, then rectangle the stitch with a SIR model.

    ``images``: two or more paths or uint8 RGB arrays (H, W, 3) (or all grey (H, W)), in any
    order. ``mode`` / ``projection`` / ``confidence`` / ``compose_megapixels``: the stitcher's
    (:func:`stablemotion.core.stitching.stitch_images`). ``pipeline``: a loaded SIR (or
    multi-task) pipeline, a pipeline folder, or ``None``: the bundled SIR mini.
    ``rectangle=False`` stops after the stitch (:func:`rectangle_stitch` does the rest).
    ``max_pixels``: the largest photo read;
    ``max_work_pixels``, ``seed`` and ``rectify_kwargs`` (``correction_gate``, ``always_correct``,
    pipeline options such as ``num_inference_steps``) go to
    :func:`stablemotion.model.service.rectify`, with the stitcher's mask as the given mask.
    A stitch with no empty pixel is its own rectangle (zero flow).

    Raises:
        StitchError: fewer than two photos, unreadable or mismatched photos, or OpenCV could not
            stitch them (one line naming the photos).
        FileNotFoundError: a path that does not exist.

    Example:
        >>> import numpy as np
        >>> from stablemotion.core.stitching import overlapping_views
        >>> from stablemotion.data.synthesis.photos import bundled_photo_paths
        >>> from stablemotion.io.images import load_image
        >>> from stablemotion.model.tiny import tiny_pipeline
        >>> photo = load_image(bundled_photo_paths("bundled-test")[0])
        >>> views = overlapping_views(photo, 3, np.random.default_rng(0))
        >>> res = stitch(views, pipeline=tiny_pipeline("sir"))
        >>> res.stitched.shape == res.image.shape == res.flow.shape[:2] + (3,), res.mask.shape == res.stitched.shape[:2]
        (True, True)
        >>> res.used, res.left_out, bool(res.mask.all())
        ((0, 1, 2), [], False)
    """
    arrays, names = _read(images, max_pixels)
    t0 = time.perf_counter()
    stitched: Stitched = stitch_images(arrays, mode=mode, projection=projection, names=names,
                                       confidence=confidence, compose_megapixels=compose_megapixels)
    stitch_seconds = time.perf_counter() - t0
    result = StitchResult(stitched.image, stitched.mask, None, None, stitched.used, names, stitched.projection,
                          stitched.mode, stitch_seconds)
    if not rectangle:
        return result
    return rectangle_stitch(result, pipeline, max_work_pixels=max_work_pixels, seed=seed, **rectify_kwargs)


def rectangle_stitch(
    result: StitchResult,
    pipeline: Any = None,
    *,
    max_work_pixels: int | None = MAX_WORK_PIXELS,
    seed: int = 0,
    **rectify_kwargs: Any,
) -> StitchResult:
    """Rectangle ``result``'s stitch with ``pipeline`` (see :func:`stitch`), in place -> ``result``
    with ``image``, ``flow``, ``rectified`` and ``rectangle_seconds`` set.

    Example:
        >>> import numpy as np
        >>> from stablemotion.model.tiny import tiny_pipeline
        >>> pano = np.full((48, 96, 3), 120, np.uint8)
        >>> mask = np.ones((48, 96), bool)
        >>> mask[:6, :20] = False                     # the stitch left a corner empty
        >>> res = StitchResult(pano, mask, None, None, (0, 1), ["a", "b"], "spherical", "panorama", 0.0)
        >>> rectangle_stitch(res, tiny_pipeline("sir")).image.shape, res.flow.shape, res.rectified.unchanged
        ((48, 96, 3), (48, 96, 2), False)
    """
    t0 = time.perf_counter()
    request = prepare_request(result.stitched, _mask_image(result.mask), task="sir",
                              source="the stitcher's mask")
    if result.mask.all():
        rectified = unchanged_result(request, "the stitch fills its frame: nothing to rectangle")
    else:
        rectified = rectify(_pipeline(pipeline), request, max_work_pixels=max_work_pixels, seed=seed,
                            **rectify_kwargs)
    result.rectangle_seconds = time.perf_counter() - t0
    result.image, result.flow, result.rectified = rectified.image, rectified.flow, rectified
    return result


def _mask_image(mask: np.ndarray) -> np.ndarray:
    """The stitcher's bool (H, W) mask as a uint8 image, white = a photo landed (uint8 scalars: no
    8-byte-a-pixel temporary for a large stitch)."""
    return np.where(mask, np.uint8(255), np.uint8(0))


def stitched_path(out: PathLike) -> Path:
    """Where :func:`write_stitch` puts the raw stitch of ``out``: ``NAME_stitched.png`` beside it.

    Example:
        >>> stitched_path("results/pano.jpg").as_posix()
        'results/pano_stitched.png'
    """
    out = Path(out)
    return out.with_name(f"{out.stem}_stitched.png")


def write_stitch(
    result: StitchResult,
    out: PathLike,
    *,
    mask: PathLike | None = None,
    flow: PathLike | None = None,
) -> list[Path]:
    """Write ``result``: the rectangle at ``out`` (format from its suffix), the raw stitch at
    :func:`stitched_path` (PNG), and the stitcher's mask (white = a photo landed) and the flow
    (``.npy``/``.flo``/``.png``) when their paths are given. Without a rectangle
    (``rectangle=False``) the stitch itself goes to ``out``. Every file is written atomically.

    Returns:
        The paths written.

    Example:
        >>> import numpy as np, tempfile
        >>> from pathlib import Path
        >>> res = StitchResult(np.zeros((4, 6, 3), np.uint8), np.ones((4, 6), bool), None, None, (0, 1),
        ...                    ["a.jpg", "b.jpg"], "spherical", "panorama", 0.1)
        >>> folder = Path(tempfile.mkdtemp())
        >>> [p.name for p in write_stitch(res, folder / "pano.png", mask=folder / "pano_mask.png")]
        ['pano.png', 'pano_mask.png']
    """
    out = Path(out)
    written = []
    if result.rectified is not None:
        paths = {"image": out, **({"flow": Path(flow)} if flow is not None else {})}
        written += write_results(result.rectified, paths)
        written.append(save_image(result.stitched, stitched_path(out)))
    else:
        written.append(save_image(result.stitched, out))
    if mask is not None:
        written.append(save_image(_mask_image(result.mask), mask))
    return written

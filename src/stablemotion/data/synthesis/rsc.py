"""Rolling-shutter correction (RSC): one rolling-shutter image -> the global-shutter image.

The synthetic-sample generator of :mod:`stablemotion.tasks.rsc`
(:func:`make_rolling_shutter_sample`): the photo is the global-shutter (GS) image.
Row ``r`` of the rolling-shutter (RS) image is exposed at readout time ``t = r / (H - 1)``
while the camera moves (``planar``: translation and in-plane rotation, smooth random
polynomials; ``camera``: a 3-D pose per row over a tilted plane,
:func:`camera_rolling_shutter_map`), so ``RS(q) = GS(A_t(q))``. The label is the correcting
flow ``f`` with ``GS(p) = RS(p + f(p))`` (zeros padding; :func:`stablemotion.core.flow.valid_mask`
of ``f`` is where the GS pixel was seen by the RS camera).

Layout: RS-Real, ``SPLIT/npz/NNNNN.npz`` with ``condition``, ``out_flow``, ``gs`` (the test
split also gets ``jpg/`` and ``jpg_gt/``; :func:`write_rsreal_sample`,
:func:`write_rolling_shutter_dataset`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ...core.constants import RS_MOTION_NAMES
from ...core.flow import resize_flow
from ...io.images import PathLike, atomic_path
from ...tasks.rsc import PROTOCOL, RSC
from .geometry import invert_flow, pixel_grid, remap, rotations
from .photos import random_photo_crop
from .registry import Layout, SynthOption, SynthSpec, declare_task
from .writer import PREFILTER_SIGMA, save_image_file, write_dataset

__all__ = [
    "MAX_TRANSLATION",
    "MAX_ROTATION",
    "MAX_DISPLACEMENT",
    "SYNTH",
    "RollingShutterSample",
    "make_rolling_shutter_sample",
    "rolling_shutter_margin",
    "camera_rolling_shutter_map",
    "write_rsreal_sample",
    "write_rolling_shutter_dataset",
]

#: Default motion amplitudes: ``planar`` model translation over the readout (fraction of the
#: size) and in-plane rotation (degrees); ``camera`` model largest displacement (fraction of the width).
MAX_TRANSLATION = 0.08
MAX_ROTATION = 3.0
MAX_DISPLACEMENT = 0.1


@dataclass
class RollingShutterSample:
    """One synthetic RSC sample (numpy, as written to disk).

    Attributes:
        rs: uint8 (H, W, 3), the rolling-shutter image.
        gs: uint8 (H, W, 3), the global-shutter image (the photo).
        flow: float32 (H, W, 2), pixels, backward correcting flow:
            ``gs(p) = rs(p + flow(p))`` where ``valid`` (zeros padding).
        valid: bool (H, W), where the GS pixel was seen by the rolling-shutter camera.
        motion: float64, per RS row, relative to the reference (GS) time: ``planar`` model
            (H, 3) ``tx, ty`` (pixels) and ``theta`` (radians); ``camera`` model (H, 6) the
            rotation vector (radians) and translation (:func:`camera_rolling_shutter_map`).
    """

    rs: np.ndarray
    gs: np.ndarray
    flow: np.ndarray
    valid: np.ndarray
    motion: np.ndarray


def _random_motion(rng: np.random.Generator, t: np.ndarray, amplitude: float) -> np.ndarray:
    """Smooth random motion ``a1 t + a2 t^2 + a3 t^3``, at most ``amplitude`` over t in [0, 1]."""
    coeffs = rng.normal(0.0, 1.0, size=3) * np.array([1.0, 0.5, 0.25])
    curve = coeffs[0] * t + coeffs[1] * t**2 + coeffs[2] * t**3
    peak = np.abs(curve - curve[0]).max()
    if peak > 0:
        curve = curve * (rng.uniform(0.3, 1.0) * amplitude / peak)
    return curve


def rolling_shutter_margin(
    size: tuple[int, int],
    max_translation: float = MAX_TRANSLATION,
    max_rotation: float = MAX_ROTATION,
    motion_model: str = "planar",
    max_displacement: float = MAX_DISPLACEMENT,
) -> tuple[int, int]:
    """Scene margin (pixels, (y, x)) around a GS frame of ``size`` that a motion of these
    amplitudes can bring into the rolling-shutter frame."""
    h, w = int(size[0]), int(size[1])
    if motion_model == "camera":
        m = int(math.ceil(1.05 * max_displacement * w)) + 2
        return m, m
    rot = math.sin(math.radians(max_rotation)) * math.hypot(h, w) / 2.0
    return int(math.ceil(max_translation * h + rot)) + 2, int(math.ceil(max_translation * w + rot)) + 2


def _planar_rolling_shutter_map(
    rng: np.random.Generator, size: tuple[int, int], max_translation: float, max_rotation: float,
    reference_time: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``planar`` model's RS pixel -> GS pixel map (H, W, 2) and motion (H, 3): ``tx, ty``
    (pixels) and ``theta`` (radians) per row, relative to the GS instant."""
    h, w = size
    t = np.linspace(0.0, 1.0, h)
    motion = np.stack(
        (
            _random_motion(rng, t, max_translation * w),
            _random_motion(rng, t, max_translation * h),
            _random_motion(rng, t, math.radians(max_rotation)),
        ),
        axis=1,
    )
    ref = np.array([np.interp(reference_time * (h - 1), np.arange(h), motion[:, k]) for k in range(3)])
    motion = motion - ref[None, :]
    tx, ty, th = (motion[:, k][:, None] for k in range(3))
    grid = pixel_grid(h, w)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    x, y = grid[..., 0] - cx, grid[..., 1] - cy
    cos, sin = np.cos(th), np.sin(th)
    return np.stack((cx + cos * x - sin * y + tx, cy + sin * x + cos * y + ty), axis=-1), motion


def camera_rolling_shutter_map(
    rng: np.random.Generator,
    size: tuple[int, int],
    max_displacement: float = MAX_DISPLACEMENT,
    reference_time: float = 0.5,
    translation_probability: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Where each rolling-shutter pixel looks in the global-shutter image, for a camera that
    moves in 3-D during the readout and looks at a plane.

    Row ``r`` is exposed at ``t = r / (H - 1) - reference_time`` (readout units). The pose at
    ``t`` relative to the GS instant is a rotation ``exp([w t + a t^2])`` (yaw-dominant, as
    hand-held pans; ``a`` makes the speed change) and a translation ``v t`` (with probability
    ``translation_probability``, sideways-dominant, as vehicle footage). The scene is a plane
    ``n . X = 1`` in GS camera coordinates (random tilt: façades and ground seen obliquely), so
    the translation's parallax varies with depth and each row's map is the exact homography
    ``K (R(t) + T(t) n^T) K^-1``. Focal length from a horizontal field of view of 45-75 degrees.
    The motion is scaled so that the largest displacement is ``U(0.1, 1) * max_displacement * W``.

    Args:
        rng: random generator (all randomness comes from it).
        size: (H, W) pixels.
        max_displacement: largest displacement over the frame, fraction of the width.
        reference_time: readout time of the GS image in [0, 1] (0.5 = the middle row).
        translation_probability: chance that the camera also translates.

    Returns:
        ``src``: float64 (H, W, 2), the GS pixel (x, y) seen by each RS pixel;
        ``motion``: float64 (H, 6), per row the rotation vector (radians) and the translation
        (units of the plane's distance).
    """
    h, w = int(size[0]), int(size[1])
    f = (w / 2.0) / math.tan(math.radians(rng.uniform(45.0, 75.0)) / 2.0)
    K = np.array([[f, 0.0, (w - 1) / 2.0], [0.0, f, (h - 1) / 2.0], [0.0, 0.0, 1.0]])
    K_inv = np.linalg.inv(K)
    t = np.linspace(0.0, 1.0, h) - reference_time
    omega = rng.normal(0.0, 1.0, 3) * np.array([0.6, 1.0, 0.4])  # (pitch, yaw, roll) rates
    accel = rng.normal(0.0, 0.3, 3) * np.abs(omega).max()
    if rng.random() < translation_probability:
        velocity = rng.normal(0.0, 1.0, 3) * np.array([1.0, 0.4, 0.3]) * rng.uniform(0.2, 1.5)
    else:
        velocity = np.zeros(3)
    tilt = np.radians(rng.uniform(-50.0, 50.0, 2))  # plane normal tilted about x and y
    normal = np.array([math.sin(tilt[1]), math.sin(tilt[0]), math.cos(tilt[0]) * math.cos(tilt[1])])
    grid = pixel_grid(h, w)
    rays = np.concatenate((grid, np.ones((h, w, 1))), axis=-1) @ K_inv.T
    normal = normal / max(float((rays @ normal).min() / np.linalg.norm(rays, axis=-1).max()), 0.2)  # in front

    def mapping(scale: float) -> tuple[np.ndarray, np.ndarray]:
        rvec = scale * (omega[None] * t[:, None] + accel[None] * t[:, None] ** 2)
        trans = scale * velocity[None] * t[:, None]
        homog = K[None] @ (rotations(rvec) + trans[:, :, None] * normal[None, None, :]) @ K_inv[None]
        inv = np.linalg.inv(homog)  # camera-t pixel -> GS pixel, one per row
        q = np.concatenate((grid, np.ones((h, w, 1))), axis=-1)
        p = np.einsum("hij,hwj->hwi", inv, q)
        return p[..., :2] / p[..., 2:3], np.concatenate((rvec, trans), axis=1)

    target = rng.uniform(0.1, 1.0) * max_displacement * w
    scale = 1.0
    for _ in range(4):  # the map is nearly linear in the scale: a few secant steps hit the target
        src, motion = mapping(scale)
        peak = float(np.linalg.norm(src - grid, axis=-1).max())
        if peak < 1e-9 or abs(peak - target) < 0.01 * target:
            break
        scale *= target / peak
    return src, motion


def make_rolling_shutter_sample(
    scene: np.ndarray,
    rng: np.random.Generator,
    size: tuple[int, int] | None = None,
    max_translation: float = MAX_TRANSLATION,
    max_rotation: float = MAX_ROTATION,
    reference_time: float = 0.5,
    motion_model: str = "planar",
    max_displacement: float = MAX_DISPLACEMENT,
) -> RollingShutterSample:
    """Make a synthetic rolling-shutter sample from a photo of the scene.

    The global-shutter (GS) image is the central ``size`` crop of ``scene``; the
    rolling-shutter (RS) camera may see beyond it (the rest of ``scene``, edge pixels
    replicated past that), as a real camera would. Row ``r`` is read out at
    ``t = r / (H - 1)``; ``reference_time`` is the GS instant (0.5 = the middle row is
    unchanged). Two motion models:

    * ``planar``: the pose at ``t`` is a rotation ``theta(t)`` about the image centre plus a
      translation ``(tx(t), ty(t))`` (random cubics); the RS pixel ``q`` of row ``r`` sees the
      GS point ``A_t(q) = c + R(theta) (q - c) + (tx, ty)``.
    * ``camera``: a 3-D rotation and translation per row, looking at a tilted plane
      (:func:`camera_rolling_shutter_map`): displacements up to ``max_displacement * W``.

    Args:
        scene: uint8 (Hs, Ws, 3); use :func:`rolling_shutter_margin` to size it.
        rng: random generator for the motion.
        size: GS / RS size (H, W); None uses the whole scene (RS content beyond it is
            then edge-replicated).
        max_translation: largest translation over the readout, fraction of the image size
            (``W`` for x, ``H`` for y).
        max_rotation: largest in-plane rotation over the readout, degrees.
        reference_time: readout time of the GS image in [0, 1].
        motion_model: ``"planar"`` or ``"camera"`` (:data:`~stablemotion.core.constants.RS_MOTION_NAMES`).
        max_displacement: ``camera`` model: largest displacement, fraction of the width.

    Returns:
        :class:`RollingShutterSample` with ``warp(rs, flow, "zeros") ~= gs`` on ``valid``.
    """
    if motion_model not in RS_MOTION_NAMES:
        raise ValueError(f"motion_model must be one of {RS_MOTION_NAMES}, got {motion_model!r}")
    if scene.dtype != np.uint8 or scene.ndim != 3 or scene.shape[2] != 3:
        raise ValueError(f"scene must be uint8 (H, W, 3), got {scene.dtype} {scene.shape}")
    if not 0.0 <= reference_time <= 1.0:
        raise ValueError(f"reference_time must be in [0, 1], got {reference_time}")
    sh, sw = scene.shape[:2]
    h, w = (sh, sw) if size is None else (int(size[0]), int(size[1]))
    if h > sh or w > sw or min(h, w) < 2:
        raise ValueError(f"size {size} must be at least 2x2 and fit in the scene {sh}x{sw}")
    oy, ox = (sh - h) // 2, (sw - w) // 2
    gs = np.ascontiguousarray(scene[oy : oy + h, ox : ox + w])
    grid = pixel_grid(h, w)
    if motion_model == "camera":
        src, motion = camera_rolling_shutter_map(rng, (h, w), max_displacement, reference_time)
    else:
        src, motion = _planar_rolling_shutter_map(rng, (h, w), max_translation, max_rotation, reference_time)
    rendered = remap(scene, src + np.array([ox, oy]), cv2.BORDER_REPLICATE)
    rs = np.clip(np.round(rendered), 0, 255).astype(np.uint8)
    to_gs = torch.from_numpy(src - grid).permute(2, 0, 1)
    flow, residual = invert_flow(to_gs)  # GS pixel -> RS pixel
    flow_hw2 = flow.permute(1, 2, 0).numpy()
    dst = grid + flow_hw2
    valid = (
        (dst[..., 0] >= 0) & (dst[..., 0] <= w - 1) & (dst[..., 1] >= 0) & (dst[..., 1] <= h - 1)
        & (residual[0].numpy() < 0.05)
    )
    return RollingShutterSample(rs=rs, gs=gs, flow=flow_hw2.astype(np.float32), valid=valid, motion=motion)


def generate(
    photo: np.ndarray, rng: np.random.Generator, size: tuple[int, int], prefilter_sigma: float, **options: Any
) -> RollingShutterSample:
    """The generator of :data:`SYNTH`: a crop of ``photo`` with a margin for the motion is the scene."""
    my, mx = rolling_shutter_margin(
        size, options.get("max_translation", MAX_TRANSLATION), options.get("max_rotation", MAX_ROTATION),
        options.get("motion_model", "planar"), options.get("max_displacement", MAX_DISPLACEMENT),
    )
    scene = random_photo_crop(photo, (size[0] + 2 * my, size[1] + 2 * mx), rng, prefilter_sigma=prefilter_sigma)
    return make_rolling_shutter_sample(scene, rng, size=size, **options)


def identity_rolling_shutter_sample(sample: RollingShutterSample) -> RollingShutterSample:
    """The identity version of an RSC sample: the global-shutter image as input (a still
    camera), zero flow, everything valid.

    Example:
        >>> from stablemotion.data.synthesis import make_sample
        >>> s = make_sample("rsc", seed=0, index=0, size=(24, 32), photos=["procedural"])
        >>> i = identity_rolling_shutter_sample(s)
        >>> bool((i.rs == s.gs).all()), float(abs(i.flow).max()), bool(i.valid.all())
        (True, 0.0, True)
    """
    return RollingShutterSample(rs=sample.gs.copy(), gs=sample.gs, flow=np.zeros_like(sample.flow),
                                valid=np.ones_like(sample.valid), motion=np.zeros_like(sample.motion))


def write_rsreal_sample(
    sample: RollingShutterSample, root: Path, name: str, split: str, ext: str, quality: int,
    npz_size: tuple[int, int] | None = None, full_res_jpg: bool | None = None,
) -> None:
    """The RS-Real layout: ``SPLIT/npz/NAME.npz`` (``condition``, ``out_flow``, ``gs`` at
    ``npz_size``) and, with ``full_res_jpg`` (default: for a split named ``test``),
    ``SPLIT/jpg/NAME.EXT`` and ``SPLIT/jpg_gt/NAME.EXT`` at full resolution."""
    rs, gs, flow = sample.rs, sample.gs, sample.flow
    if npz_size is not None and tuple(npz_size) != rs.shape[:2]:
        nh, nw = npz_size
        rs_s = cv2.resize(rs, (nw, nh), interpolation=cv2.INTER_AREA)
        gs_s = cv2.resize(gs, (nw, nh), interpolation=cv2.INTER_AREA)
        flow_s = resize_flow(torch.from_numpy(flow).permute(2, 0, 1), (nh, nw)).permute(1, 2, 0).numpy()
    else:
        rs_s, gs_s, flow_s = rs, gs, flow
    path = root / "npz" / f"{name}.npz"
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, condition=rs_s, out_flow=flow_s.astype(np.float32), gs=gs_s)
    if split == "test" if full_res_jpg is None else full_res_jpg:
        save_image_file(rs, root / "jpg" / f"{name}.{ext}", quality)
        save_image_file(gs, root / "jpg_gt" / f"{name}.{ext}", quality)


SYNTH = SynthSpec(
    name="rolling_shutter",
    stream=2,
    generate=generate,
    layout=Layout(
        "rsreal", ("npz", "jpg", "jpg_gt"), write_rsreal_sample,
        options=(
            SynthOption("npz_size", None, "HxW of the arrays in the npz files (default: --size); flows are rescaled",
                        flag=""),
            SynthOption("full_res_jpg", None, "also write jpg/ and jpg_gt/ full-resolution images "
                        "(default: for split 'test')", flag=""),
        ),
        describe="{out}/{split}/npz",
    ),
    options=(
        SynthOption("max_translation", MAX_TRANSLATION, "translation over the readout, fraction of size"),
        SynthOption("max_rotation", MAX_ROTATION, "rotation over the readout, degrees"),
        SynthOption("motion_model", "planar", "camera motion: planar (in-plane shift and rotation, "
                    "--max-translation/--max-rotation) or camera (3-D rotation and translation per row over a "
                    "tilted plane, --max-displacement)", str, choices=RS_MOTION_NAMES, flag="--motion"),
        SynthOption("max_displacement", MAX_DISPLACEMENT,
                    f"camera motion: largest displacement, fraction of the width (default {MAX_DISPLACEMENT:g})",
                    low=0.0, high=0.5, open_low=True),
    ),
    aliases=("rsc", "rolling-shutter"),
    size=(256, 256),
    split="train",
    identity=identity_rolling_shutter_sample,
    help="rolling-shutter samples in the RS-Real layout (npz with condition, out_flow, gs)",
)

declare_task(RSC, SYNTH, PROTOCOL)


def write_rolling_shutter_dataset(
    out: PathLike,
    num: int,
    size: tuple[int, int] = SYNTH.size,
    split: str = SYNTH.split,
    seed: int = 0,
    photos: PathLike | Sequence[PathLike] | None = None,
    npz_size: tuple[int, int] | None = None,
    full_res_jpg: bool | None = None,
    ext: str = "jpg",
    quality: int = 95,
    prefilter_sigma: float = PREFILTER_SIGMA,
    max_translation: float = MAX_TRANSLATION,
    max_rotation: float = MAX_ROTATION,
    motion_model: str = "planar",
    max_displacement: float = MAX_DISPLACEMENT,
    start: int = 0,
    workers: int = 1,
    overwrite: bool = False,
    progress: Callable[[Iterable[str], int], Iterable[str]] | None = None,
) -> list[str]:
    """Write ``num`` synthetic rolling-shutter samples in the RS-Real layout.

    Files: ``OUT/SPLIT/npz/NNNNN.npz`` with ``condition`` (RS image, uint8 (h, w, 3)),
    ``gs`` (GS image, uint8 (h, w, 3)) and ``out_flow`` (float32 (h, w, 2), pixels of the
    npz resolution, our backward convention: ``gs(p) = condition(p + out_flow(p))``, zeros
    padding). With ``full_res_jpg`` (default: for a split named ``test``) also
    ``OUT/SPLIT/jpg/NNNNN.EXT`` (full-resolution RS image) and ``OUT/SPLIT/jpg_gt/NNNNN.EXT``.

    Args:
        size: full-resolution (H, W) of the generated images.
        npz_size: (h, w) of the arrays in the npz (images area-resized, flow rescaled);
            None keeps ``size``.
        max_translation, max_rotation: ``planar`` motion amplitudes (:func:`make_rolling_shutter_sample`).
        motion_model: ``"planar"`` or ``"camera"`` (a 3-D pose per row; :func:`camera_rolling_shutter_map`).
        max_displacement: ``camera`` model: largest displacement, fraction of the width.
        Other arguments as :func:`stablemotion.data.synthesis.sir.write_rectangling_dataset`.

    Returns:
        The sample names written, sorted.
    """
    return write_dataset(
        SYNTH.name, out, num, size=size, split=split, seed=seed, photos=photos, ext=ext, quality=quality,
        prefilter_sigma=prefilter_sigma, start=start, workers=workers, overwrite=overwrite, progress=progress,
        npz_size=None if npz_size is None else (int(npz_size[0]), int(npz_size[1])), full_res_jpg=full_res_jpg,
        max_translation=max_translation, max_rotation=max_rotation, motion_model=motion_model,
        max_displacement=max_displacement,
    )

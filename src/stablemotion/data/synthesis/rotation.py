"""Rotation correction: a tilted photo -> an upright image that fills the frame.

The synthetic-sample generator of :mod:`stablemotion.tasks.rotation`
(:func:`make_rotation_sample`): the input is a photo rotated by ``angle`` about the frame
centre and cropped to the frame (rendered from a photo region larger than the rotated frame,
so it has no empty corners). Two target styles:

* ``"straighten"`` (default; what a photo editor's "straighten" does): output pixel ``p`` shows
  input pixel ``M(p) = c + s R(-angle) (p - c)``, the rigid rotation back about the centre ``c``
  with the largest scale ``s <= 1`` that keeps the output frame inside the input
  (:func:`stablemotion.core.motion_models.straighten_flow`, :func:`~stablemotion.core.motion_models.fill_scale`):
  everything is upright, the corners that the tilt pushed out are cropped. One parameter, so
  the model's flow can be projected onto it exactly.
* ``"blend"`` (the earlier target, kept for old datasets): ``M(p) = c + R(-angle * w(p)) (p - c)``
  with ``w = 1`` in the centre falling smoothly to 0 at the frame's edge
  (:func:`rotation_correction_map`): nothing is cropped, but the edges stay tilted.

The flow is exact: ``flow(p) = M(p) - p`` and ``gt(p) = input(p + flow(p))``; both images are
resampled from the same photo, so the flow holds to interpolation accuracy.

Layout: task folder, ``SPLIT/{input,gt}/NNNNN.EXT`` and ``SPLIT/flow/NNNNN.npy``
(:class:`stablemotion.data.TaskFolderDataset`).
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from ...core.motion_models import fill_scale, straighten_flow
from ...io.images import PathLike
from ...tasks.rotation import PROTOCOL, ROTATION
from .geometry import pixel_grid, remap
from .photos import random_photo_crop
from .registry import Layout, SynthOption, SynthSpec, declare_task
from .writer import (
    FOLDER_SUBDIRS,
    PREFILTER_SIGMA,
    WarpSample,
    identity_warp_sample,
    write_dataset,
    write_folder_sample,
)

__all__ = [
    "rotation_correction_map",
    "make_rotation_sample",
    "write_rotation_dataset",
    "MAX_ANGLE",
    "MIN_ANGLE_DEFAULT",
    "MAX_ANGLE_DEFAULT",
    "ROTATION_STYLES",
    "SYNTH",
]

#: Target styles of :func:`make_rotation_sample`.
ROTATION_STYLES = ("straighten", "blend")

#: The largest tilt (degrees) the generator accepts.
MAX_ANGLE = 25.0
#: Default range of the tilt's magnitude, degrees.
MIN_ANGLE_DEFAULT = 1.0
MAX_ANGLE_DEFAULT = 12.0


def _band(angle: float, height: int, width: int) -> float:
    """The narrowest blending band (fraction of the half size) that keeps ``M`` in the frame."""
    a, b = (width - 1) / 2.0, (height - 1) / 2.0
    k = min(a, b) / max(a, b)
    return max(0.4, 1.2 * abs(math.radians(angle)) / k)


def rotation_correction_map(size: tuple[int, int], angle: float, band: float | None = None) -> np.ndarray:
    """Where each output pixel of the rotation correction of a frame tilted by ``angle`` looks
    in the input.

    ``M(p) = c + R(-theta w(p)) (p - c)`` with ``theta = radians(angle)``, ``c`` the frame
    centre and ``w = smoothstep((1 - rho) / band)``, ``rho = (|x/a|^8 + |y/b|^8)^(1/8)`` (a
    smooth max-norm: 1 on the frame's edge; ``a, b`` the half sizes). Inside the band the
    rotation angle ``|theta| w`` never exceeds ``(1 - rho) min(a, b) / max(a, b)``, so
    ``M`` maps the frame into itself.

    Args:
        size: (H, W) pixels.
        angle: the input's tilt, degrees; positive = the content appears rotated
            counter-clockwise in the input.
        band: blending band, fraction of the half size; None = the narrowest safe one.

    Returns:
        float64 (H, W, 2), input pixel (x, y) of every output pixel.
    """
    h, w = int(size[0]), int(size[1])
    need = _band(angle, h, w)
    band = need if band is None else float(band)
    if band < need - 1e-9 or band > 1.0:
        if need > 1.0:
            raise ValueError(f"a tilt of {angle} degrees is too large for a {h}x{w} frame")
        raise ValueError(f"band must be in [{need:.3f}, 1] for a tilt of {angle} degrees, got {band}")
    grid = pixel_grid(h, w)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    x, y = grid[..., 0] - cx, grid[..., 1] - cy
    rho = ((np.abs(x) / cx) ** 8 + (np.abs(y) / cy) ** 8) ** 0.125
    t = np.clip((1.0 - rho) / band, 0.0, 1.0)
    alpha = -math.radians(angle) * t * t * (3.0 - 2.0 * t)
    cos, sin = np.cos(alpha), np.sin(alpha)
    return np.stack((cx + cos * x - sin * y, cy + sin * x + cos * y), axis=-1)


def make_rotation_sample(
    photo: np.ndarray,
    rng: np.random.Generator,
    size: tuple[int, int],
    min_angle: float = MIN_ANGLE_DEFAULT,
    max_angle: float = MAX_ANGLE_DEFAULT,
    angle: float | None = None,
    prefilter_sigma: float = PREFILTER_SIGMA,
    style: str = "straighten",
) -> WarpSample:
    """Make a rotation-correction sample from a photo.

    Args:
        photo: uint8 (H0, W0, 3); a random crop of it (large enough for the rotated frame)
            is the scene.
        rng: random generator (all randomness comes from it).
        size: (H, W) of input and gt.
        min_angle, max_angle: the tilt's magnitude is uniform in [min_angle, max_angle]
            degrees, its sign random.
        angle: a fixed tilt (degrees) instead of a random one.
        prefilter_sigma: Gaussian low-pass of the scene, pixels.
        style: ``"straighten"`` (rotate back, scale to fill the frame) or ``"blend"`` (rotate
            the centre back, blend to identity at the edge); see the module docstring.

    Returns:
        :class:`WarpSample` with ``warp(input, flow, "border") ~= gt``; ``params``:
        ``angle`` (degrees, positive = counter-clockwise in the input), ``style`` and ``scale``
        (straighten) or ``band`` (blend).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> photo = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
        >>> s = make_rotation_sample(photo, rng, (24, 32), angle=5.0)
        >>> s.params["style"], round(s.params["scale"], 3), s.flow.shape
        ('straighten', 0.898, (24, 32, 2))
    """
    if style not in ROTATION_STYLES:
        raise ValueError(f"style must be one of {ROTATION_STYLES}, got {style!r}")
    if not 0.0 <= min_angle <= max_angle <= MAX_ANGLE:
        raise ValueError(f"need 0 <= min_angle <= max_angle <= {MAX_ANGLE}, got {min_angle}, {max_angle}")
    h, w = int(size[0]), int(size[1])
    if angle is None:
        angle = float(rng.uniform(min_angle, max_angle)) * (1.0 if rng.random() < 0.5 else -1.0)
    theta = math.radians(angle)
    cos, sin = math.cos(theta), math.sin(theta)
    a, b = (w - 1) / 2.0, (h - 1) / 2.0
    half_w, half_h = a * abs(cos) + b * abs(sin), a * abs(sin) + b * abs(cos)  # the rotated frame's box
    sh, sw = 2 * int(math.ceil(half_h)) + 8, 2 * int(math.ceil(half_w)) + 8
    scene = random_photo_crop(photo, (sh, sw), rng, prefilter_sigma=prefilter_sigma)
    centre = np.array([(sw - 1) / 2.0, (sh - 1) / 2.0])
    rot = np.array([[cos, -sin], [sin, cos]])
    grid = pixel_grid(h, w)
    c = np.array([a, b])
    to_scene = lambda q: centre + (q - c) @ rot.T  # noqa: E731  input pixel -> scene pixel
    image = remap(scene, to_scene(grid), cv2.BORDER_REPLICATE)
    if style == "straighten":
        src = grid + straighten_flow((h, w), angle).astype(np.float64)
        params = {"angle": angle, "style": style, "scale": fill_scale((h, w), angle)}
    else:
        src = rotation_correction_map((h, w), angle)
        params = {"angle": angle, "style": style, "band": _band(angle, h, w)}
    gt = remap(scene, to_scene(src), cv2.BORDER_REPLICATE)
    return WarpSample(
        input=np.clip(np.round(image), 0, 255).astype(np.uint8),
        gt=np.clip(np.round(gt), 0, 255).astype(np.uint8),
        flow=(src - grid).astype(np.float32),
        params=params,
    )


def generate(
    photo: np.ndarray, rng: np.random.Generator, size: tuple[int, int], prefilter_sigma: float, **options: Any
) -> WarpSample:
    """The generator of :data:`SYNTH`."""
    return make_rotation_sample(photo, rng, size, prefilter_sigma=prefilter_sigma, **options)


def write_rotation_dataset(out: PathLike, num: int, **kwargs: Any) -> list[str]:
    """Write rotation-correction samples (:func:`stablemotion.data.synth.write_dataset` with
    ``task="rotation"``; options ``min_angle``, ``max_angle``)."""
    return write_dataset("rotation", out, num, **kwargs)


SYNTH = SynthSpec(
    name="rotation",
    stream=3,
    generate=generate,
    layout=Layout("folder", FOLDER_SUBDIRS, write_folder_sample),
    options=(
        SynthOption("min_angle", MIN_ANGLE_DEFAULT, f"smallest tilt, degrees (default {MIN_ANGLE_DEFAULT:g})",
                    low=0.0, high=MAX_ANGLE),
        SynthOption("max_angle", MAX_ANGLE_DEFAULT,
                    f"largest tilt, degrees (default {MAX_ANGLE_DEFAULT:g}, at most {MAX_ANGLE:g})",
                    low=0.0, high=MAX_ANGLE),
        SynthOption("style", "straighten", "target: straighten (rotate back and scale to fill the frame, as photo "
                    "editors do; default) or blend (rotate the centre back, blend to identity at the edge)",
                    str, choices=ROTATION_STYLES),
    ),
    size=(384, 512),
    split="train",
    identity=identity_warp_sample,
    help="rotation-correction samples (tilted photo -> upright, frame filled, straightened) in the task-folder layout "
         "(input, gt, flow)",
)

declare_task(ROTATION, SYNTH, PROTOCOL)

"""Rotation correction: a tilted photo -> an upright image that fills the frame, its content
preserved (as in the rotation-correction literature; not a rotate-and-crop, which loses the
corners).

The synthetic-sample generator of :mod:`stablemotion.tasks.rotation`
(:func:`make_rotation_sample`): the input is a photo rotated by ``angle`` about the
frame centre and cropped to the frame (rendered from a photo region larger than the rotated
frame, so it has no empty corners). The target maps the whole input frame onto the output
frame (:func:`rotation_correction_map`): output pixel ``p`` shows input pixel
``M(p) = c + R(-angle * w(p)) (p - c)``, where ``w = 1`` in the centre (the content there is
exactly upright: rotated back rigidly) and falls smoothly to 0 at the frame's edge (the output
border shows the input border: nothing is cropped and no corner is empty). The band where
``w`` falls is as narrow as it can be while ``M`` provably stays inside the input frame. The
flow is exact: ``flow(p) = M(p) - p`` and ``gt(p) = input(p + flow(p))``; both images are
resampled from the same photo, so the flow holds to interpolation accuracy.

Layout: task folder, ``SPLIT/{input,gt}/NNNNN.EXT`` and ``SPLIT/flow/NNNNN.npy``
(:class:`stablemotion.data.TaskFolderDataset`).
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from ...io.images import PathLike
from ...tasks.rotation import PROTOCOL, ROTATION
from .geometry import pixel_grid, remap
from .photos import random_photo_crop
from .registry import Layout, SynthOption, SynthSpec, declare_task
from .writer import FOLDER_SUBDIRS, PREFILTER_SIGMA, WarpSample, write_dataset, write_folder_sample

__all__ = [
    "rotation_correction_map",
    "make_rotation_sample",
    "write_rotation_dataset",
    "MAX_ANGLE",
    "MIN_ANGLE_DEFAULT",
    "MAX_ANGLE_DEFAULT",
    "SYNTH",
]

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

    Returns:
        :class:`WarpSample` with ``warp(input, flow, "border") ~= gt``; ``params``:
        ``angle`` (degrees, positive = counter-clockwise in the input), ``band``.
    """
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
    src = rotation_correction_map((h, w), angle)
    gt = remap(scene, to_scene(src), cv2.BORDER_REPLICATE)
    return WarpSample(
        input=np.clip(np.round(image), 0, 255).astype(np.uint8),
        gt=np.clip(np.round(gt), 0, 255).astype(np.uint8),
        flow=(src - grid).astype(np.float32),
        params={"angle": angle, "band": _band(angle, h, w)},
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
    ),
    size=(384, 512),
    split="train",
    help="rotation-correction samples (tilted photo -> upright, frame filled) in the task-folder layout "
         "(input, gt, flow)",
)

declare_task(ROTATION, SYNTH, PROTOCOL)

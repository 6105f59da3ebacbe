"""Radial lens-distortion correction: a barrel / fisheye-like distorted photo -> the
rectilinear image.

The synthetic-sample generator of :mod:`stablemotion.tasks.lens` (:func:`make_lens_sample`),
the one-parameter division model (Fitzgibbon 2001): a
distorted input pixel ``q`` shows the rectilinear (undistorted) point
``U(q) = d + (q - d) / (1 - k r^2)``, ``r = |q - d| / R`` (``d`` the distortion centre,
jittered around the frame centre; ``R`` the half diagonal; ``k > 0`` barrel, uniform in
[min_strength, max_strength]). ``U`` has a closed-form inverse
``D(u) = d + (u - d) * 2 / (1 + sqrt(1 + 4 k r_u^2))``. The input is rendered at ``U(q)`` from
a photo region that covers all of it (no empty regions); the target is the largest
rectilinear frame of the same aspect ratio, centred on ``U(frame centre)``, whose every pixel
the input shows (``u = U(c) + s (p - c)``, ``s`` by bisection), so it has no empty corners
either. The flow is exact: ``flow(p) = D(u(p)) - p`` and ``gt(p) = input(p + flow(p))``.

Layout: task folder, ``SPLIT/{input,gt}/NNNNN.EXT`` and ``SPLIT/flow/NNNNN.npy``
(:class:`stablemotion.data.TaskFolderDataset`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ...io.images import PathLike
from ...tasks.lens import LENS, PROTOCOL
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
    "LensParams",
    "make_lens_sample",
    "write_lens_dataset",
    "MAX_STRENGTH",
    "MIN_STRENGTH_DEFAULT",
    "MAX_STRENGTH_DEFAULT",
    "CENTRE_JITTER_DEFAULT",
    "SYNTH",
]

#: The strongest distortion ``k`` the generator accepts (the input's corners then show points
#: up to 1 / (1 - k) times farther out than an undistorted lens would).
MAX_STRENGTH = 0.6
#: Default range of the division-model ``k`` and of the distortion-centre jitter (fraction of the half size).
MIN_STRENGTH_DEFAULT = 0.05
MAX_STRENGTH_DEFAULT = 0.35
CENTRE_JITTER_DEFAULT = 0.05


@dataclass(frozen=True)
class LensParams:
    """A division-model lens on a frame: ``strength`` k (> 0 barrel), distortion ``centre``
    (x, y) pixels, ``radius`` R (pixels; r = |q - centre| / R)."""

    strength: float
    centre: tuple[float, float]
    radius: float

    def undistort(self, q: np.ndarray) -> np.ndarray:
        """``U``: distorted pixels (..., 2) -> rectilinear pixels."""
        d = np.asarray(self.centre)
        v = q - d
        r2 = (v**2).sum(-1, keepdims=True) / self.radius**2
        return d + v / (1.0 - self.strength * r2)

    def distort(self, u: np.ndarray) -> np.ndarray:
        """``D = U^-1``: rectilinear pixels (..., 2) -> distorted pixels."""
        d = np.asarray(self.centre)
        v = u - d
        x = self.strength * (v**2).sum(-1, keepdims=True) / self.radius**2
        return d + v * (2.0 / (1.0 + np.sqrt(1.0 + 4.0 * x)))


def _frame_boundary(h: int, w: int) -> np.ndarray:
    xs, ys = np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)
    return np.concatenate([
        np.stack([xs, np.zeros(w)], 1), np.stack([xs, np.full(w, h - 1.0)], 1),
        np.stack([np.zeros(h), ys], 1), np.stack([np.full(h, w - 1.0), ys], 1),
    ])


def _fill_scale(lens: LensParams, h: int, w: int) -> float:
    """The largest ``s`` such that ``D(U(c) + s (p - c))`` stays inside the frame for every
    pixel ``p`` of the frame's boundary (and so, ``D`` being one-to-one, of the frame)."""
    c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    u0 = lens.undistort(c)
    edge = _frame_boundary(h, w) - c

    def inside(s: float) -> bool:
        q = lens.distort(u0 + s * edge)
        return bool((q[:, 0] >= 0).all() and (q[:, 0] <= w - 1).all() and (q[:, 1] >= 0).all() and (q[:, 1] <= h - 1).all())

    lo, hi = 0.05, 4.0
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if inside(mid) else (lo, mid)
    return lo


def make_lens_sample(
    photo: np.ndarray,
    rng: np.random.Generator,
    size: tuple[int, int],
    min_strength: float = MIN_STRENGTH_DEFAULT,
    max_strength: float = MAX_STRENGTH_DEFAULT,
    centre_jitter: float = CENTRE_JITTER_DEFAULT,
    strength: float | None = None,
    prefilter_sigma: float = PREFILTER_SIGMA,
) -> WarpSample:
    """Make a lens-distortion sample from a photo.

    Args:
        photo: uint8 (H0, W0, 3); a random crop of it (large enough for the distorted
            frame's field of view) is the scene.
        rng: random generator (all randomness comes from it).
        size: (H, W) of input and gt.
        min_strength, max_strength: the division-model ``k`` is uniform in this range.
        centre_jitter: the distortion centre moves up to this fraction of the half size
            from the frame centre, in x and y.
        strength: a fixed ``k`` instead of a random one.
        prefilter_sigma: Gaussian low-pass of the scene, pixels.

    Returns:
        :class:`WarpSample` with ``warp(input, flow, "border") ~= gt``; ``params``:
        ``strength``, ``centre`` (x, y pixels), ``radius`` and ``scale`` (rectilinear units per
        gt pixel).
    """
    if not 0.0 <= min_strength <= max_strength <= MAX_STRENGTH:
        raise ValueError(f"need 0 <= min_strength <= max_strength <= {MAX_STRENGTH}, got {min_strength}, {max_strength}")
    if not 0.0 <= centre_jitter <= 0.25:
        raise ValueError(f"centre_jitter must be in [0, 0.25], got {centre_jitter}")
    h, w = int(size[0]), int(size[1])
    k = float(rng.uniform(min_strength, max_strength)) if strength is None else float(strength)
    a, b = (w - 1) / 2.0, (h - 1) / 2.0
    jitter = rng.uniform(-centre_jitter, centre_jitter, 2) * np.array([a, b])
    lens = LensParams(k, (a + float(jitter[0]), b + float(jitter[1])), math.hypot(a, b))
    grid = pixel_grid(h, w)
    src = lens.undistort(grid)  # rectilinear point seen by every input pixel
    lo, hi = src.reshape(-1, 2).min(0), src.reshape(-1, 2).max(0)
    sh, sw = int(math.ceil(hi[1] - lo[1])) + 8, int(math.ceil(hi[0] - lo[0])) + 8
    scene = random_photo_crop(photo, (sh, sw), rng, prefilter_sigma=prefilter_sigma)
    offset = 4.0 - lo
    scale = _fill_scale(lens, h, w)
    c = np.array([a, b])
    u = lens.undistort(c) + scale * (grid - c)  # rectilinear point of every gt pixel
    image = remap(scene, src + offset, cv2.BORDER_REPLICATE)
    gt = remap(scene, u + offset, cv2.BORDER_REPLICATE)
    return WarpSample(
        input=np.clip(np.round(image), 0, 255).astype(np.uint8),
        gt=np.clip(np.round(gt), 0, 255).astype(np.uint8),
        flow=(lens.distort(u) - grid).astype(np.float32),
        params={"strength": k, "centre": lens.centre, "radius": lens.radius, "scale": scale},
    )


def generate(
    photo: np.ndarray, rng: np.random.Generator, size: tuple[int, int], prefilter_sigma: float, **options: Any
) -> WarpSample:
    """The generator of :data:`SYNTH`."""
    return make_lens_sample(photo, rng, size, prefilter_sigma=prefilter_sigma, **options)


def write_lens_dataset(out: PathLike, num: int, **kwargs: Any) -> list[str]:
    """Write lens-distortion samples (:func:`stablemotion.data.synth.write_dataset` with
    ``task="lens"``; options ``min_strength``, ``max_strength``, ``centre_jitter``)."""
    return write_dataset("lens", out, num, **kwargs)


SYNTH = SynthSpec(
    name="lens",
    stream=4,
    generate=generate,
    layout=Layout("folder", FOLDER_SUBDIRS, write_folder_sample),
    options=(
        SynthOption("min_strength", MIN_STRENGTH_DEFAULT,
                    f"weakest division-model k (barrel; default {MIN_STRENGTH_DEFAULT:g})", low=0.0, high=MAX_STRENGTH),
        SynthOption("max_strength", MAX_STRENGTH_DEFAULT,
                    f"strongest division-model k (default {MAX_STRENGTH_DEFAULT:g}, at most {MAX_STRENGTH:g})",
                    low=0.0, high=MAX_STRENGTH),
        SynthOption("centre_jitter", CENTRE_JITTER_DEFAULT,
                    f"distortion-centre offset, fraction of the half size (default {CENTRE_JITTER_DEFAULT:g})",
                    low=0.0, high=0.25),
    ),
    size=(384, 512),
    split="train",
    identity=identity_warp_sample,
    help="lens-distortion samples (barrel / fisheye-like -> rectilinear) in the task-folder layout (input, gt, flow)",
)

declare_task(LENS, SYNTH, PROTOCOL)

"""Synthetic task generators: ordinary photos -> training/evaluation samples with exact flow.

Two generators turn any photo into a sample of a rectification task whose ground-truth
flow is known exactly (up to interpolation), deterministically given a seed:

* **Stitched-image rectangling (SIR)** -- :func:`make_rectangling_sample`. The photo is the
  rectangular ground truth ``gt``. A random smooth mesh (:func:`random_rectangling_mesh`)
  says where every vertex of the rigid output grid lies in the *input*; its boundary is
  pulled inwards irregularly, so the photo content fills an irregular region of a black
  canvas, as stitched panoramas look. The label is the backward flow
  ``f = mesh_to_flow(mesh)`` with ``gt(p) = input(p + f(p))``; the input is rendered with
  the inverse map (:func:`invert_flow`): ``input(q) = gt(q + g(q))`` where ``g`` inverts ``f``.
* **Rolling-shutter correction (RSC)** -- :func:`make_rolling_shutter_sample`. The photo is
  the global-shutter (GS) image. Row ``r`` of the rolling-shutter (RS) image is exposed at
  readout time ``t = r / (H - 1)`` (in units of the readout time) while the camera moves
  (translation ``tx(t), ty(t)`` and in-plane rotation ``theta(t)`` about the image centre,
  smooth random polynomials), so ``RS(q) = GS(A_t(q))``. The label is the correcting flow
  ``f`` with ``GS(p) = RS(p + f(p))`` (zeros padding; :func:`stablemotion.flow.valid_mask`
  of ``f`` is where the GS pixel was seen by the RS camera).

Both flows follow the project convention (``stablemotion.flow``): backward, pixels,
``(H, W, 2)`` float32 in numpy / on disk. Photos are lightly low-pass filtered
(``prefilter_sigma``) so that the bilinear re-warp reproduces the target to > 35 dB.

Writers put samples on disk in the layouts the datasets of :mod:`stablemotion.data` read:
DIR-D (``SPLIT/{input,mask,gt}/NNNNN.jpg`` + ``SPLIT/flow/NNNNN.npy``) and RS-Real
(``SPLIT/npz/NNNNN.npz`` with ``condition``, ``out_flow``, ``gs``; the test split also gets
``jpg/`` and ``jpg_gt/``). Photos come from a folder or, by default, from the natural
photos bundled inside scikit-image (:func:`bundled_photo_paths`): nothing is downloaded.
"""

from __future__ import annotations

import functools
import math
import multiprocessing as mp
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ._io import PathLike, atomic_path, list_images, load_image, save_image
from .constants import RECTANGLING_STYLE_NAMES, RS_MOTION_NAMES
from .flow import mesh_to_flow, resize_flow, rigid_mesh, warp, write_flow
from .photos import POOLS, resolve_pool

__all__ = [
    "BUNDLED_PHOTOS",
    "HELD_OUT_PHOTOS",
    "TRAINING_PHOTOS",
    "PROCEDURAL",
    "URBAN",
    "procedural_scene",
    "urban_scene",
    "camera_rolling_shutter_map",
    "bundled_photo_paths",
    "list_photos",
    "resolve_photos",
    "procedural_scene",
    "random_photo_crop",
    "invert_flow",
    "random_rectangling_mesh",
    "RectanglingSample",
    "RollingShutterSample",
    "make_rectangling_sample",
    "stitched_region",
    "stitched_outline_mesh",
    "panorama_region",
    "RECTANGLING_STYLES",
    "make_rolling_shutter_sample",
    "rolling_shutter_margin",
    "sample_rng",
    "make_sample",
    "write_rectangling_dataset",
    "write_rolling_shutter_dataset",
]

#: Natural photos shipped inside scikit-image's package data (``skimage/data``); no download.
BUNDLED_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "camera.png",
)

_TASK_IDS = {"rectangling": 1, "rolling_shutter": 2}


# --------------------------------------------------------------------------- photos
#: Bundled photos never used to train the ``stablemotion-mini`` models: held out for their
#: test sets and for ``stablemotion demo``.
HELD_OUT_PHOTOS = ("chelsea.png", "coffee.png", "camera.png")
#: Bundled images the mini models train on (photos and textures; see ``configs/mini_*.yaml``).
TRAINING_PHOTOS = (
    "astronaut.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png", "brick.png", "grass.png",
    "gravel.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg",
)
#: The photo-source token for procedurally generated scenes (:func:`procedural_scene`).
PROCEDURAL = "procedural"
#: The photo-source token for procedural street scenes with strong straight structures
#: (:func:`urban_scene`: façades, window grids, poles, kerbs), whose skew reveals rolling shutter.
URBAN = "urban"
_GENERATED = {PROCEDURAL, URBAN}
_PHOTO_SETS = {"bundled": BUNDLED_PHOTOS, "bundled-train": TRAINING_PHOTOS, "bundled-test": HELD_OUT_PHOTOS}


def _skimage_data(names: Sequence[str]) -> list[Path]:
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    paths = [folder / name for name in names if (folder / name).is_file()]
    if not paths:
        raise FileNotFoundError(f"no bundled photos found in {folder}; pass a photo folder instead")
    return paths


def bundled_photo_paths(which: str = "bundled") -> list[Path]:
    """Paths of images bundled with scikit-image (offline).

    ``which``: ``"bundled"`` (:data:`BUNDLED_PHOTOS`), ``"bundled-train"``
    (:data:`TRAINING_PHOTOS`) or ``"bundled-test"`` (:data:`HELD_OUT_PHOTOS`).
    """
    if which not in _PHOTO_SETS:
        raise ValueError(f"unknown bundled photo set {which!r}; choose from {sorted(_PHOTO_SETS)}")
    return _skimage_data(_PHOTO_SETS[which])


def list_photos(folder: PathLike | None = None) -> list[Path]:
    """Photo files of ``folder`` sorted by name, or the bundled photos when ``folder`` is None."""
    if folder is None:
        return bundled_photo_paths()
    paths = sorted(list_images(folder).values())
    if not paths:
        raise ValueError(f"no images (.png, .jpg, ...) found in photo folder {folder}")
    return paths


def resolve_photos(spec: PathLike | None) -> list[str]:
    """Photo sources from a command-line spec.

    ``spec`` is a photo folder, or a ``+``-joined list of named sources: ``bundled``,
    ``bundled-train``, ``bundled-test`` (:func:`bundled_photo_paths`), ``procedural``
    (a new :func:`procedural_scene` per sample), ``urban`` (a new :func:`urban_scene`
    per sample) and the installed photo pools of :mod:`stablemotion.photos` (``debian``,
    ``debian-train``, ``debian-test``, ...; fixed train/test split). A name may carry a repeat count, ``procedural*10``, to weight the draw.
    None = ``bundled``.

    Returns:
        Photo file paths and :data:`PROCEDURAL` / :data:`URBAN` tokens, one entry per draw slot.
    """
    if spec is None:
        return [str(p) for p in bundled_photo_paths()]
    text = str(spec)
    if Path(text).is_dir():
        return [str(p) for p in list_photos(text)]
    out: list[str] = []
    for part in text.split("+"):
        name, _, times = part.strip().partition("*")
        try:
            n = int(times) if times else 1
        except ValueError:
            raise ValueError(f"photo source {part!r}: the repeat count must be an integer, as 'procedural*10'") from None
        if name in _GENERATED:
            out += [name] * n
        elif name in _PHOTO_SETS:
            out += [str(p) for p in bundled_photo_paths(name)] * n
        elif (pool := resolve_pool(name)) is not None:
            out += pool * n
        else:
            raise ValueError(
                f"photo source {name!r} is neither a folder nor one of {sorted([*_PHOTO_SETS, *_GENERATED, *POOLS])}"
            )
    return out


def procedural_scene(rng: np.random.Generator, size: tuple[int, int] = (384, 512)) -> np.ndarray:
    """A random synthetic scene: a colour gradient, blurred noise texture, and random
    filled/outlined shapes and lines with sharp edges (structure for the flow to follow).

    Returns:
        uint8 (H, W, 3).
    """
    h, w = int(size[0]), int(size[1])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx / w + np.sin(angle) * yy / h + 1.0) / 2.0
    img = (c0 * (1 - ramp[..., None]) + c1 * ramp[..., None]).astype(np.float32)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (h, w, 3)).astype(np.float32), (0, 0), rng.uniform(1, 8))
    img += noise / (noise.std() + 1e-6) * rng.uniform(5, 25)
    for _ in range(int(rng.integers(8, 30))):
        color = tuple(float(v) for v in rng.uniform(0, 255, 3))
        kind = rng.integers(4)
        thick = -1 if rng.random() < 0.6 else int(rng.integers(1, 5))
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(max(2, min(h, w) // 40), max(3, min(h, w) // 4)))
        if kind == 0:
            cv2.ellipse(img, (cx, cy), (r, int(rng.integers(2, r + 2))), float(rng.uniform(0, 180)), 0, 360, color, thick,
                        cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(img, (cx - r, cy - r // 2), (cx + r, cy + r // 2), color, thick, cv2.LINE_AA)
        elif kind == 2:
            pts = (np.array([cx, cy]) + rng.normal(0, r, (int(rng.integers(3, 7)), 2))).astype(np.int32)
            if thick < 0:
                cv2.fillPoly(img, [pts], color, cv2.LINE_AA)
            else:
                cv2.polylines(img, [pts], True, color, thick, cv2.LINE_AA)
        else:
            x2, y2 = int(rng.integers(0, w)), int(rng.integers(0, h))
            cv2.line(img, (cx, cy), (x2, y2), color, int(rng.integers(1, 6)), cv2.LINE_AA)
    return np.clip(img, 0, 255).astype(np.uint8)


def urban_scene(rng: np.random.Generator, size: tuple[int, int] = (384, 512)) -> np.ndarray:
    """A random street scene with strong straight structures: sky, ground with kerbs and lane
    lines, building façades with window grids, poles and wires. Verticals are vertical and the
    horizon is level, as in an upright photo, so a rolling-shutter skew of them is readable.

    Returns:
        uint8 (H, W, 3).
    """
    h, w = int(size[0]), int(size[1])
    yy = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    horizon = int(h * rng.uniform(0.45, 0.85))
    sky0, sky1 = rng.uniform(120, 255, 3), rng.uniform(150, 255, 3)
    img = np.broadcast_to(sky0 * (1 - yy) + sky1 * yy, (h, w, 3)).astype(np.float32).copy()
    ground = rng.uniform(40, 160, 3)
    img[horizon:] = ground
    unit = max(2, min(h, w) // 48)

    def colour(low: float = 20, high: float = 235) -> tuple[float, float, float]:
        return tuple(float(v) for v in rng.uniform(low, high, 3))  # type: ignore[return-value]

    x = int(rng.integers(-w // 8, w // 8))
    while x < w:  # a row of façades along the street
        bw = int(rng.uniform(0.12, 0.45) * w)
        top = int(rng.uniform(0.0, 0.8) * horizon)
        facade = colour()
        cv2.rectangle(img, (x, top), (x + bw, horizon), facade, -1)
        cols, rows = int(rng.integers(2, 9)), int(rng.integers(2, 12))
        win = colour(0, 120) if rng.random() < 0.7 else colour(150, 255)
        gx, gy = bw / cols, max(horizon - top, 1) / rows
        fill = rng.uniform(0.35, 0.7)
        for r in range(rows):
            for c in range(cols):
                x0, y0 = int(x + c * gx + gx * (1 - fill) / 2), int(top + r * gy + gy * (1 - fill) / 2)
                cv2.rectangle(img, (x0, y0), (int(x0 + gx * fill), int(y0 + gy * fill)), win, -1)
                if rng.random() < 0.5:  # window frame and mullion
                    frame = colour(0, 255)
                    cv2.rectangle(img, (x0, y0), (int(x0 + gx * fill), int(y0 + gy * fill)), frame, 1)
                    cv2.line(img, (int(x0 + gx * fill / 2), y0), (int(x0 + gx * fill / 2), int(y0 + gy * fill)), frame, 1)
        if rng.random() < 0.7:  # cornice and edge pilasters
            edge = colour()
            cv2.rectangle(img, (x, top), (x + bw, top + unit), edge, -1)
            cv2.rectangle(img, (x, top), (x + unit, horizon), edge, -1)
        x += bw + int(rng.integers(0, max(2, w // 12)))
    kerb = colour(150, 255)
    cv2.rectangle(img, (0, horizon), (w, horizon + unit), kerb, -1)
    for _ in range(int(rng.integers(1, 4))):  # lane lines (converging towards the horizon)
        y0 = int(rng.uniform(horizon + 2 * unit, h))
        cv2.line(img, (0, y0), (w, int(y0 + rng.uniform(-0.1, 0.1) * h)), (235, 235, 235), unit, cv2.LINE_AA)
    for _ in range(int(rng.integers(2, 8))):  # poles, some with a crossbar, and wires
        px, pw = int(rng.integers(0, w)), int(rng.integers(1, 2 * unit + 1))
        ptop = int(rng.uniform(0.0, 0.6) * horizon)
        bottom = int(horizon + rng.uniform(0, 0.15) * h)
        dark = colour(0, 90)
        cv2.rectangle(img, (px, ptop), (px + pw, bottom), dark, -1)
        if rng.random() < 0.5:
            arm = int(rng.integers(w // 20, w // 6))
            cv2.rectangle(img, (px - arm, ptop), (px + arm, ptop + pw), dark, -1)
        if rng.random() < 0.4:
            cv2.line(img, (0, ptop + pw), (w, int(ptop + rng.uniform(-0.05, 0.05) * h)), dark, 1, cv2.LINE_AA)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (h, w, 3)).astype(np.float32), (0, 0), rng.uniform(0.7, 3))
    img += noise / (noise.std() + 1e-6) * rng.uniform(2, 10)
    return np.clip(img, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=16)
def _load_photo(path: str) -> np.ndarray:
    return load_image(path, mode="RGB")


def random_photo_crop(
    photo: np.ndarray,
    size: tuple[int, int],
    rng: np.random.Generator,
    min_scale: float = 0.5,
    flip: bool = True,
    prefilter_sigma: float = 0.0,
) -> np.ndarray:
    """A random crop of ``photo`` with the aspect ratio of ``size``, resized to ``size``.

    Args:
        photo: uint8 (H0, W0, 3).
        size: output (H, W) in pixels.
        rng: random generator (all randomness comes from it).
        min_scale: smallest crop, as a fraction of the largest crop of that aspect ratio.
        flip: flip horizontally with probability 1/2.
        prefilter_sigma: Gaussian low-pass (pixels of the output) applied after resizing.

    Returns:
        uint8 (H, W, 3).
    """
    h, w = int(size[0]), int(size[1])
    if h < 2 or w < 2:
        raise ValueError(f"size must be at least 2x2, got {size}")
    ph, pw = photo.shape[:2]
    full = min(ph / h, pw / w)  # the largest crop of aspect w/h has size (h*full, w*full)
    scale = full * rng.uniform(min(max(min_scale, 0.05), 1.0), 1.0)
    ch, cw = max(2, int(round(h * scale))), max(2, int(round(w * scale)))
    ch, cw = min(ch, ph), min(cw, pw)
    y0 = int(rng.integers(0, ph - ch + 1))
    x0 = int(rng.integers(0, pw - cw + 1))
    crop = photo[y0 : y0 + ch, x0 : x0 + cw]
    if flip and rng.random() < 0.5:
        crop = crop[:, ::-1]
    interp = cv2.INTER_AREA if ch >= h else cv2.INTER_CUBIC
    out = cv2.resize(np.ascontiguousarray(crop), (w, h), interpolation=interp)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    if prefilter_sigma > 0:
        out = cv2.GaussianBlur(out, (0, 0), prefilter_sigma)
    return out


# --------------------------------------------------------------------------- flow inversion
def invert_flow(
    flow: torch.Tensor,
    iterations: int = 200,
    tolerance: float = 1e-4,
    damping: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert a smooth backward flow by damped fixed-point iteration.

    ``flow`` maps output pixels to input pixels, ``p -> p + f(p)``. The inverse ``g``
    maps input pixels back, ``q -> q + g(q)``, so that ``g(q) = -f(q + g(q))``; it
    exists where the map is one-to-one (``|grad f| < 1`` guarantees convergence).
    Outside the image ``f`` is extended with border values.

    Args:
        flow: (2, H, W) or (B, 2, H, W), pixels; computed in float64.
        iterations: maximum number of iterations.
        tolerance: stop when no pixel moves more than this (pixels).
        damping: step size in (0, 1]; 1 is the plain fixed point, smaller is more robust.

    Returns:
        ``(g, residual)``: g like ``flow`` (float64), pixels; residual (..., 1, H, W) =
        ``|g(q) + f(q + g(q))|`` in pixels (near 0 where the inverse is exact).
    """
    if not 0 < damping <= 1:
        raise ValueError(f"damping must be in (0, 1], got {damping}")
    f = flow.double()
    g = -f.clone()
    for _ in range(iterations):
        target = -warp(f, g, padding="border")
        step = target - g
        g = g + damping * step
        if float(step.abs().max()) * damping < tolerance:
            break
    residual = (g + warp(f, g, padding="border")).norm(dim=-3, keepdim=True)
    return g, residual


# --------------------------------------------------------------------------- rectangling
def _smooth_profile(rng: np.random.Generator, n: int, knots: int, low: float, high: float) -> np.ndarray:
    """Piecewise-linear random profile at ``n`` evenly spaced points, values in [low, high]."""
    xs = np.linspace(0.0, 1.0, knots)
    vals = rng.uniform(low, high, size=knots)
    return np.interp(np.linspace(0.0, 1.0, n), xs, vals)


def random_rectangling_mesh(
    rng: np.random.Generator,
    height: int,
    width: int,
    rows: int = 6,
    cols: int = 8,
    max_inset: float = 0.12,
    touch: float = 0.35,
    jitter: float = 0.01,
) -> np.ndarray:
    """A random smooth mesh that maps the rectangle into an irregular region of the canvas.

    Every edge of the rectangle is pulled inwards by a random piecewise-linear profile
    (between 0 -- touching the canvas edge -- and ``max_inset`` of the image size); the
    interior follows by Coons (transfinite) interpolation of the boundary, plus a small
    smooth jitter. All vertices stay inside ``[0, W-1] x [0, H-1]``.

    Args:
        rng: random generator.
        height, width: image size (H, W), pixels.
        rows, cols: mesh cells.
        max_inset: largest inset, as a fraction of the image height (top/bottom edges)
            or width (left/right edges).
        touch: probability mass of an inset of exactly 0 (profiles are drawn from
            ``[-touch/(1-touch) * max, max]`` and clipped at 0).
        jitter: standard deviation of the interior vertex noise, fraction of the cell size.

    Returns:
        mesh (rows+1, cols+1, 2) float64, (x, y) input pixels for :func:`stablemotion.flow.mesh_to_flow`.
    """
    mesh = rigid_mesh(rows, cols, height, width)
    low = -touch / max(1e-6, 1.0 - touch)

    def inset(n: int, extent: float) -> np.ndarray:
        knots = int(rng.integers(2, 5))
        return np.clip(_smooth_profile(rng, n, knots, low * max_inset, max_inset), 0.0, None) * extent

    top = inset(cols + 1, height - 1)  # + y
    bottom = -inset(cols + 1, height - 1)  # - y
    left = inset(rows + 1, width - 1)  # + x
    right = -inset(rows + 1, width - 1)  # - x
    u = np.linspace(0.0, 1.0, cols + 1)[None, :]
    v = np.linspace(0.0, 1.0, rows + 1)[:, None]
    dy = (1 - v) * top[None, :] + v * bottom[None, :]
    dx = (1 - u) * left[:, None] + u * right[:, None]
    # Tangential slide along the edges: small, smooth, zero at the corners.
    slide = 0.25 * max_inset
    sx = _smooth_profile(rng, cols + 1, 3, -slide, slide) * (width - 1) * np.sin(np.pi * u[0])
    sy = _smooth_profile(rng, rows + 1, 3, -slide, slide) * (height - 1) * np.sin(np.pi * v[:, 0])
    dx = dx + 0.5 * sx[None, :]
    dy = dy + 0.5 * sy[:, None]
    mesh[..., 0] += dx
    mesh[..., 1] += dy
    if jitter > 0 and rows > 1 and cols > 1:
        cell = np.array([(width - 1) / cols, (height - 1) / rows])
        noise = rng.normal(0.0, jitter, size=(rows - 1, cols - 1, 2)) * cell
        mesh[1:-1, 1:-1] += noise
    mesh[..., 0] = np.clip(mesh[..., 0], 0.0, width - 1.0)
    mesh[..., 1] = np.clip(mesh[..., 1], 0.0, height - 1.0)
    return mesh


def _coons(top: np.ndarray, bottom: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Transfinite (Coons) interpolation of a grid from its four boundary curves.

    top/bottom: (cols+1, 2), left/right: (rows+1, 2); corners shared. Returns (rows+1, cols+1, 2).
    """
    rows, cols = len(left) - 1, len(top) - 1
    u = np.linspace(0.0, 1.0, cols + 1)[None, :, None]
    v = np.linspace(0.0, 1.0, rows + 1)[:, None, None]
    ruled = (1 - v) * top[None] + v * bottom[None] + (1 - u) * left[:, None] + u * right[:, None]
    corners = ((1 - u) * (1 - v) * top[0] + u * (1 - v) * top[-1] + (1 - u) * v * bottom[0] + u * v * bottom[-1])
    return ruled - corners


def stitched_region(rng: np.random.Generator, height: int, width: int, max_tilt: float = 0.14) -> np.ndarray:
    """The content region of a random stitched panorama: a uint8 (H, W) mask, 255 = content.

    Real stitched images (DIR-D, panorama tools) are the union of 2-4 views, each a
    rectangle seen under a homography: their outline is made of straight, slanted edges --
    wedges along the borders, concave corners where two views meet, sometimes a long thin
    band along a whole edge. The views are laid side by side with 15-40% overlap, every
    corner moved by up to ``max_tilt`` of the size, and the union scaled so that it touches
    all four sides of the canvas (the stitched image's bounding box).
    """
    n = int(rng.integers(2, 5))
    overlap = rng.uniform(0.15, 0.4)
    span = 1.0 / (n - (n - 1) * overlap)  # view width, fraction of the panorama
    quads = []
    band = rng.random() < 0.25  # a thin band along the whole top or bottom edge
    band_side = int(rng.integers(2))
    band_depth = rng.uniform(0.03, 0.08)
    for i in range(n):
        x0 = i * span * (1 - overlap)
        x1 = x0 + span
        # corners: top-left, top-right, bottom-right, bottom-left in (x, y), unit square coordinates
        dy = rng.uniform(0.0, max_tilt, size=4)
        dx = rng.uniform(0.0, max_tilt, size=4) * span
        if band:
            k = (0, 1) if band_side == 0 else (2, 3)
            dy[list(k)] = np.maximum(dy[list(k)], band_depth)
        quads.append(np.array([
            [x0 + dx[0] * (i == 0), dy[0]],
            [x1 - dx[1] * (i == n - 1), dy[1]],
            [x1 - dx[2] * (i == n - 1), 1.0 - dy[2]],
            [x0 + dx[3] * (i == 0), 1.0 - dy[3]],
        ]))
    pts = np.concatenate(quads)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    mask = np.zeros((height, width), np.uint8)
    for q in quads:
        q = (q - lo) / (hi - lo) * np.array([width - 1, height - 1])
        cv2.fillPoly(mask, [np.round(q).astype(np.int32)], 255)
    return mask


def _outline_edges(region: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, ...]:
    """The region's outline split at the points nearest the canvas corners into four edges,
    each resampled uniformly by arc length: top/bottom (cols+1, 2), left/right (rows+1, 2), (x, y)."""
    h, w = region.shape
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    outline = max(contours, key=cv2.contourArea)[:, 0, :].astype(np.float64)  # (N, 2), a closed loop
    canvas = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    tl, tr, br, bl = (int(np.argmin(((outline - c) ** 2).sum(axis=1))) for c in canvas)

    def path(a: int, b: int, side: int, sign: float) -> np.ndarray:
        """The outline from index a to b, the way round that lies on the given side of the canvas."""
        n = len(outline)
        fwd = outline[[(a + k) % n for k in range((b - a) % n + 1)]]
        bwd = outline[[(a - k) % n for k in range((a - b) % n + 1)]]
        return fwd if sign * fwd[:, side].mean() < sign * bwd[:, side].mean() else bwd

    def resample(curve: np.ndarray, count: int) -> np.ndarray:
        seg = np.linalg.norm(np.diff(curve, axis=0), axis=1)
        arc = np.concatenate([[0.0], np.cumsum(seg)])
        at = np.linspace(0.0, arc[-1], count)
        return np.stack([np.interp(at, arc, curve[:, 0]), np.interp(at, arc, curve[:, 1])], axis=1)

    top = resample(path(tl, tr, 1, 1.0), cols + 1)  # the way round with the smaller y
    bottom = resample(path(bl, br, 1, -1.0), cols + 1)
    left = resample(path(tl, bl, 0, 1.0), rows + 1)
    right = resample(path(tr, br, 0, -1.0), rows + 1)
    return top, bottom, left, right


def panorama_region(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """The content region of a random panorama as stitching software makes it: a uint8 (H, W)
    mask, 255 = content.

    Like OpenCV's ``Stitcher`` (spherical warper): 2-4 views (field of view 40-70 degrees,
    landscape or portrait) taken while the camera turns (20-50% overlap, pitch and roll
    jitter of a hand-held camera), each view's rectangle mapped onto the sphere; the union's
    bounding box is the panorama, scaled to the canvas (as the network sees any panorama).
    Its outline has slanted and slightly curved edges, deep notches where views meet, and
    wedges at the corners.
    """
    n = int(rng.integers(2, 5))
    fov = math.radians(rng.uniform(40.0, 70.0))
    aspect = 0.75 if rng.random() < 0.75 else 4.0 / 3.0  # view height / width
    f = 0.5 / math.tan(fov / 2.0)  # view width = 1
    overlap = rng.uniform(0.2, 0.5)
    t = np.linspace(0.0, 1.0, 24)
    side = np.concatenate([
        np.stack([t, 0 * t], 1), np.stack([0 * t + 1, t], 1), np.stack([1 - t, 0 * t + 1], 1), np.stack([0 * t, 1 - t], 1),
    ])  # the unit square's boundary, (x, y)
    pitch = 0.0
    outlines = []
    for i in range(n):
        yaw = i * fov * (1.0 - overlap)
        pitch += math.radians(rng.normal(0.0, 3.0))
        roll = math.radians(rng.normal(0.0, 3.0))
        rays = np.stack([(side[:, 0] - 0.5), (side[:, 1] - 0.5) * aspect, np.full(len(side), f)], 1)
        rot = _rotations(np.array([[0.0, 0.0, roll]]))[0]
        rot = _rotations(np.array([[pitch, 0.0, 0.0]]))[0] @ rot
        rot = _rotations(np.array([[0.0, yaw, 0.0]]))[0] @ rot
        d = rays @ rot.T
        theta = np.arctan2(d[:, 0], d[:, 2])
        phi = np.arctan2(d[:, 1], np.hypot(d[:, 0], d[:, 2]))
        outlines.append(np.stack([theta, phi], 1))
    pts = np.concatenate(outlines)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    mask = np.zeros((height, width), np.uint8)
    for o in outlines:
        q = (o - lo) / (hi - lo) * np.array([width - 1, height - 1])
        cv2.fillPoly(mask, [np.round(q).astype(np.int32)], 255)
    return mask


def stitched_outline_mesh(
    rng: np.random.Generator,
    height: int,
    width: int,
    rows: int = 12,
    cols: int = 16,
    max_tilt: float = 0.14,
    region: np.ndarray | None = None,
) -> np.ndarray:
    """A mesh that maps the rectangle onto a stitched-panorama-shaped region (:func:`stitched_region`,
    or ``region``: a uint8 (H, W) mask, 255 = content, e.g. :func:`panorama_region`).

    The region's outline is split into four edges at the points nearest the canvas corners
    and the rectangle's boundary vertices are spread evenly along them, so its border follows
    the region's straight edges, wedges and concave corners (to the resolution of the mesh);
    the interior follows by Coons interpolation. Use a fine mesh (cells of ~32 px).

    Returns:
        mesh (rows+1, cols+1, 2) float64, (x, y) input pixels for :func:`stablemotion.flow.mesh_to_flow`.
    """
    if region is None:
        region = stitched_region(rng, height, width, max_tilt)
    top, bottom, left, right = _outline_edges(region, rows, cols)
    mesh = _coons(top, bottom, left, right)
    mesh[..., 0] = np.clip(mesh[..., 0], 0.0, width - 1.0)
    mesh[..., 1] = np.clip(mesh[..., 1], 0.0, height - 1.0)
    return mesh


#: Border styles of :func:`make_rectangling_sample`.
RECTANGLING_STYLES = RECTANGLING_STYLE_NAMES


@dataclass
class RectanglingSample:
    """One synthetic SIR sample (numpy, as written to disk).

    Attributes:
        input: uint8 (H, W, 3), the stitched-looking image; black (or white) outside the content.
        mask: uint8 (H, W), 255 where ``input`` has content, else 0.
        gt: uint8 (H, W, 3), the rectangular image.
        flow: float32 (H, W, 2), pixels, backward: ``gt(p) = input(p + flow(p))`` (border padding).
        mesh: float64 (rows+1, cols+1, 2), the input-pixel positions of the rigid gt mesh.
    """

    input: np.ndarray
    mask: np.ndarray
    gt: np.ndarray
    flow: np.ndarray
    mesh: np.ndarray


def _remap(image: np.ndarray, coords: np.ndarray, border: int) -> np.ndarray:
    """Sample ``image`` (uint8 (H, W, C)) at ``coords`` (H', W', 2) pixels, bicubic, float32 out."""
    mx = np.ascontiguousarray(coords[..., 0], dtype=np.float32)
    my = np.ascontiguousarray(coords[..., 1], dtype=np.float32)
    out = cv2.remap(image.astype(np.float32), mx, my, interpolation=cv2.INTER_CUBIC, borderMode=border)
    return out.reshape(*coords.shape[:2], -1)


def _pixel_grid(height: int, width: int) -> np.ndarray:
    gx, gy = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    return np.stack((gx, gy), axis=-1)


def make_rectangling_sample(
    photo: np.ndarray,
    rng: np.random.Generator,
    rows: int = 6,
    cols: int = 8,
    max_inset: float = 0.12,
    margin: float = 1.0,
    style: str = "inset",
    white_fraction: float = 0.0,
) -> RectanglingSample:
    """Make a synthetic rectangling sample whose gt is ``photo``.

    Args:
        photo: uint8 (H, W, 3), the rectangular ground truth (already cropped/filtered).
        rng: random generator for the mesh.
        rows, cols, max_inset: see :func:`random_rectangling_mesh` (``"inset"``); for
            ``"stitched"`` ``max_inset`` is the largest corner move (:func:`stitched_region`)
            and the mesh should be fine (e.g. 12 x 16 at 384 x 512).
        margin: the content region extends this many pixels (of gt coordinates) beyond
            the photo, filled with its edge pixels, so that bilinear re-warping at the
            region's edge never reads black.
        style: ``"inset"`` (smooth irregular insets), ``"stitched"`` (the outline of 2-4
            projectively warped views: straight-edged wedges, concave corners, thin bands) or
            ``"panorama"`` (the outline of 2-4 views of a turning camera on the sphere, as
            stitching software makes it: :func:`panorama_region`).
        white_fraction: probability that the empty area is white instead of black (some
            stitching tools fill with white).

    Returns:
        :class:`RectanglingSample` with ``warp(input, flow, "border") ~= gt``.
    """
    if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
        raise ValueError(f"photo must be uint8 (H, W, 3), got {photo.dtype} {photo.shape}")
    if style not in RECTANGLING_STYLES:
        raise ValueError(f"style must be one of {RECTANGLING_STYLES}, got {style!r}")
    h, w = photo.shape[:2]
    if style == "stitched":
        mesh = stitched_outline_mesh(rng, h, w, rows=rows, cols=cols, max_tilt=max_inset)
    elif style == "panorama":
        mesh = stitched_outline_mesh(rng, h, w, rows=rows, cols=cols, region=panorama_region(rng, h, w))
    else:
        mesh = random_rectangling_mesh(rng, h, w, rows=rows, cols=cols, max_inset=max_inset)
    fill = 255 if white_fraction > 0 and rng.random() < white_fraction else 0
    flow = mesh_to_flow(mesh, h, w)  # (2, H, W) float32: gt pixel -> input pixel
    inv, residual = invert_flow(flow)
    src = _pixel_grid(h, w) + inv.permute(1, 2, 0).numpy()  # input pixel -> gt pixel
    inside = (
        (src[..., 0] >= -margin) & (src[..., 0] <= w - 1 + margin)
        & (src[..., 1] >= -margin) & (src[..., 1] <= h - 1 + margin)
        & (residual[0].numpy() < 0.05)
    )
    rendered = _remap(photo, src, cv2.BORDER_REPLICATE)
    mask = inside.astype(np.uint8) * 255
    image = np.where(inside[..., None], np.clip(np.round(rendered), 0, 255), fill).astype(np.uint8)
    flow_hw2 = flow.permute(1, 2, 0).numpy().astype(np.float32)
    return RectanglingSample(input=image, mask=mask, gt=photo.copy(), flow=flow_hw2, mesh=mesh)


# --------------------------------------------------------------------------- rolling shutter
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
    max_translation: float = 0.08,
    max_rotation: float = 3.0,
    motion_model: str = "planar",
    max_displacement: float = 0.1,
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
    grid = _pixel_grid(h, w)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    x, y = grid[..., 0] - cx, grid[..., 1] - cy
    cos, sin = np.cos(th), np.sin(th)
    return np.stack((cx + cos * x - sin * y + tx, cy + sin * x + cos * y + ty), axis=-1), motion


def _rotations(rvec: np.ndarray) -> np.ndarray:
    """Rotation matrices (N, 3, 3) of rotation vectors (N, 3), radians (Rodrigues)."""
    theta = np.linalg.norm(rvec, axis=1)[:, None, None]
    k = rvec / np.maximum(theta[:, :, 0], 1e-12)
    cross = np.zeros((len(rvec), 3, 3))
    cross[:, 0, 1], cross[:, 0, 2], cross[:, 1, 2] = -k[:, 2], k[:, 1], -k[:, 0]
    cross = cross - cross.transpose(0, 2, 1)
    return np.eye(3)[None] + np.sin(theta) * cross + (1 - np.cos(theta)) * (cross @ cross)


def camera_rolling_shutter_map(
    rng: np.random.Generator,
    size: tuple[int, int],
    max_displacement: float = 0.1,
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
    grid = _pixel_grid(h, w)
    rays = np.concatenate((grid, np.ones((h, w, 1))), axis=-1) @ K_inv.T
    normal = normal / max(float((rays @ normal).min() / np.linalg.norm(rays, axis=-1).max()), 0.2)  # in front

    def mapping(scale: float) -> tuple[np.ndarray, np.ndarray]:
        rvec = scale * (omega[None] * t[:, None] + accel[None] * t[:, None] ** 2)
        trans = scale * velocity[None] * t[:, None]
        homog = K[None] @ (_rotations(rvec) + trans[:, :, None] * normal[None, None, :]) @ K_inv[None]
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
    max_translation: float = 0.08,
    max_rotation: float = 3.0,
    reference_time: float = 0.5,
    motion_model: str = "planar",
    max_displacement: float = 0.1,
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
        motion_model: ``"planar"`` or ``"camera"`` (:data:`~stablemotion.constants.RS_MOTION_NAMES`).
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
    grid = _pixel_grid(h, w)
    if motion_model == "camera":
        src, motion = camera_rolling_shutter_map(rng, (h, w), max_displacement, reference_time)
    else:
        src, motion = _planar_rolling_shutter_map(rng, (h, w), max_translation, max_rotation, reference_time)
    rendered = _remap(scene, src + np.array([ox, oy]), cv2.BORDER_REPLICATE)
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


# --------------------------------------------------------------------------- datasets on disk
def sample_rng(seed: int, index: int, task: str) -> np.random.Generator:
    """The generator of sample ``index``: independent of order, workers and resumption."""
    return np.random.default_rng([int(seed), int(index), _TASK_IDS[task]])


def make_sample(
    task: str,
    seed: int,
    index: int,
    size: tuple[int, int],
    photos: Sequence[PathLike] | None = None,
    prefilter_sigma: float = 0.7,
    **options: Any,
) -> RectanglingSample | RollingShutterSample:
    """Synthetic sample ``index`` of a dataset, in memory; what the dataset writers write.

    Args:
        task: ``"rectangling"`` or ``"rolling_shutter"``.
        seed, index: the sample depends on these only (:func:`sample_rng`).
        size: (H, W) of the sample in pixels.
        photos: photo files (or :data:`PROCEDURAL` / :data:`URBAN` tokens) to draw from (default:
            :func:`bundled_photo_paths`).
        prefilter_sigma: Gaussian low-pass of the photo crop, pixels.
        options: generator parameters (``rows``, ``cols``, ``max_inset``, ``style``,
            ``white_fraction`` for rectangling;
            ``max_translation``, ``max_rotation``, ``motion_model``, ``max_displacement`` for
            rolling shutter).
    """
    if task not in _TASK_IDS:
        raise ValueError(f"task must be one of {sorted(_TASK_IDS)}, got {task!r}")
    rng = sample_rng(seed, index, task)
    paths = [str(p) for p in (photos if photos is not None else bundled_photo_paths())]
    source = paths[int(rng.integers(len(paths)))]
    if source in _GENERATED:  # a scene larger than the sample, so crops vary in scale
        make_scene = procedural_scene if source == PROCEDURAL else urban_scene
        photo = make_scene(rng, (int(size[0] * 1.5) + 16, int(size[1] * 1.5) + 16))
    else:
        photo = _load_photo(source)
    if task == "rectangling":
        crop = random_photo_crop(photo, size, rng, prefilter_sigma=prefilter_sigma)
        return make_rectangling_sample(crop, rng, **options)  # type: ignore[arg-type]
    my, mx = rolling_shutter_margin(
        size, options.get("max_translation", 0.08), options.get("max_rotation", 3.0),
        options.get("motion_model", "planar"), options.get("max_displacement", 0.1),
    )
    scene = random_photo_crop(photo, (size[0] + 2 * my, size[1] + 2 * mx), rng, prefilter_sigma=prefilter_sigma)
    return make_rolling_shutter_sample(scene, rng, size=size, **options)


@dataclass(frozen=True)
class _Job:
    task: str
    index: int
    seed: int
    size: tuple[int, int]
    photos: tuple[str, ...]
    out: str
    split: str
    ext: str
    quality: int
    prefilter_sigma: float
    options: tuple[tuple[str, Any], ...]
    npz_size: tuple[int, int] | None
    full_res_jpg: bool


def _save(image: np.ndarray, path: Path, quality: int) -> None:
    if path.suffix.lower() in (".jpg", ".jpeg"):
        with atomic_path(path) as tmp:
            bgr = image[..., ::-1] if image.ndim == 3 else image
            if not cv2.imwrite(str(tmp), np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]):
                raise OSError(f"OpenCV could not write {path}")
    else:
        save_image(image, path)


def _run_job(job: _Job) -> str:
    cv2.setNumThreads(1)
    name = f"{job.index:05d}"
    root = Path(job.out) / job.split
    sample = make_sample(job.task, job.seed, job.index, job.size, job.photos, job.prefilter_sigma, **dict(job.options))
    if isinstance(sample, RectanglingSample):
        _save(sample.input, root / "input" / f"{name}.{job.ext}", job.quality)
        _save(np.repeat(sample.mask[..., None], 3, axis=2), root / "mask" / f"{name}.{job.ext}", job.quality)
        _save(sample.gt, root / "gt" / f"{name}.{job.ext}", job.quality)
        write_flow(root / "flow" / f"{name}.npy", sample.flow)
        return name
    r = sample
    rs, gs, flow = r.rs, r.gs, r.flow
    if job.npz_size is not None and tuple(job.npz_size) != rs.shape[:2]:
        nh, nw = job.npz_size
        rs_s = cv2.resize(rs, (nw, nh), interpolation=cv2.INTER_AREA)
        gs_s = cv2.resize(gs, (nw, nh), interpolation=cv2.INTER_AREA)
        flow_s = resize_flow(torch.from_numpy(flow).permute(2, 0, 1), (nh, nw)).permute(1, 2, 0).numpy()
    else:
        rs_s, gs_s, flow_s = rs, gs, flow
    path = root / "npz" / f"{name}.npz"
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, condition=rs_s, out_flow=flow_s.astype(np.float32), gs=gs_s)
    if job.full_res_jpg:
        _save(rs, root / "jpg" / f"{name}.{job.ext}", job.quality)
        _save(gs, root / "jpg_gt" / f"{name}.{job.ext}", job.quality)
    return name


def _run_jobs(
    jobs: Sequence[_Job],
    workers: int,
    progress: Callable[[Iterable[str], int], Iterable[str]] | None,
) -> list[str]:
    if workers <= 1 or len(jobs) <= 1:
        results: Iterable[str] = map(_run_job, jobs)
        if progress is not None:
            results = progress(results, len(jobs))
        return list(results)
    with pool_context().Pool(min(workers, len(jobs)), initializer=_worker_init) as pool:
        results = pool.imap_unordered(_run_job, jobs, chunksize=1)
        if progress is not None:
            results = progress(results, len(jobs))
        return sorted(results)


def pool_context() -> mp.context.BaseContext:
    """Process start method for worker pools: ``fork`` where available (no ``__main__``
    guard needed, as torch's DataLoader), else ``spawn``. Workers use one thread each."""
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def _worker_init() -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def _check_out(out: Path, split: str, subdirs: Sequence[str], overwrite: bool) -> None:
    for sub in subdirs:
        d = out / split / sub
        if d.is_dir() and any(d.iterdir()) and not overwrite:
            raise FileExistsError(f"{d} already holds files; pass overwrite=True (--force) to write into it")


def _parse_ext(ext: str) -> str:
    ext = ext.lower().lstrip(".")
    if ext not in ("jpg", "png"):
        raise ValueError(f"image format must be 'jpg' (as DIR-D / RS-Real) or 'png' (lossless), got {ext!r}")
    return ext


def write_rectangling_dataset(
    out: PathLike,
    num: int,
    size: tuple[int, int] = (384, 512),
    split: str = "training",
    seed: int = 0,
    photos: PathLike | Sequence[PathLike] | None = None,
    ext: str = "jpg",
    quality: int = 95,
    prefilter_sigma: float = 0.7,
    rows: int = 6,
    cols: int = 8,
    max_inset: float = 0.12,
    start: int = 0,
    workers: int = 1,
    overwrite: bool = False,
    progress: Callable[[Iterable[str], int], Iterable[str]] | None = None,
    style: str = "inset",
    white_fraction: float = 0.0,
) -> list[str]:
    """Write ``num`` synthetic rectangling samples in the DIR-D layout.

    Files: ``OUT/SPLIT/{input,mask,gt}/NNNNN.EXT`` (masks are 3-channel, white = content,
    as DIR-D) and ``OUT/SPLIT/flow/NNNNN.npy`` ((H, W, 2) float32, pixels, backward:
    ``gt(p) = input(p + flow(p))``). Sample ``i`` depends only on ``(seed, i)``.

    Args:
        out: dataset root (created).
        num: number of samples; names are ``start .. start+num-1``, zero-padded to 5 digits.
        size: (H, W) in pixels (DIR-D: 384 x 512).
        photos: a folder of photos, a list of photo files, or None for the bundled photos.
        ext: "jpg" (DIR-D's format; lossy, ``quality``) or "png" (lossless).
        prefilter_sigma: Gaussian low-pass of the photo crops, pixels.
        rows, cols, max_inset: mesh parameters (:func:`random_rectangling_mesh`).
        style, white_fraction: border style and share of white empty areas
            (:func:`make_rectangling_sample`; ``"stitched"``: outlines of real stitched panoramas).
        workers: processes (spawned); 1 runs in this process.
        overwrite: allow writing into non-empty folders.
        progress: called as ``progress(iterator, total)`` on the finished sample names;
            e.g. ``lambda it, n: tqdm(it, total=n)``.

    Returns:
        The sample names written, sorted.
    """
    out_p = Path(out)
    ext = _parse_ext(ext)
    _check_out(out_p, split, ("input", "mask", "gt", "flow"), overwrite)
    jobs = _make_jobs(
        "rectangling", out_p, num, size, split, seed, photos, ext, quality, prefilter_sigma, start,
        {"rows": rows, "cols": cols, "max_inset": max_inset, "style": style, "white_fraction": white_fraction},
        None, False,
    )
    return _run_jobs(jobs, workers, progress)


def write_rolling_shutter_dataset(
    out: PathLike,
    num: int,
    size: tuple[int, int] = (256, 256),
    split: str = "train",
    seed: int = 0,
    photos: PathLike | Sequence[PathLike] | None = None,
    npz_size: tuple[int, int] | None = None,
    full_res_jpg: bool | None = None,
    ext: str = "jpg",
    quality: int = 95,
    prefilter_sigma: float = 0.7,
    max_translation: float = 0.08,
    max_rotation: float = 3.0,
    motion_model: str = "planar",
    max_displacement: float = 0.1,
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
        Other arguments as :func:`write_rectangling_dataset`.

    Returns:
        The sample names written, sorted.
    """
    out_p = Path(out)
    ext = _parse_ext(ext)
    if full_res_jpg is None:
        full_res_jpg = split == "test"
    _check_out(out_p, split, ("npz", "jpg", "jpg_gt"), overwrite)
    jobs = _make_jobs(
        "rolling_shutter", out_p, num, size, split, seed, photos, ext, quality, prefilter_sigma, start,
        {"max_translation": max_translation, "max_rotation": max_rotation, "motion_model": motion_model,
         "max_displacement": max_displacement},
        None if npz_size is None else (int(npz_size[0]), int(npz_size[1])), bool(full_res_jpg),
    )
    return _run_jobs(jobs, workers, progress)


def _make_jobs(
    task: str,
    out: Path,
    num: int,
    size: tuple[int, int],
    split: str,
    seed: int,
    photos: PathLike | Sequence[PathLike] | None,
    ext: str,
    quality: int,
    prefilter_sigma: float,
    start: int,
    options: dict[str, Any],
    npz_size: tuple[int, int] | None,
    full_res_jpg: bool,
) -> list[_Job]:
    if num < 1:
        raise ValueError(f"num must be at least 1, got {num}")
    if options.get("style", "inset") not in RECTANGLING_STYLES:
        raise ValueError(f"style must be one of {RECTANGLING_STYLES}, got {options['style']!r}")
    if options.get("motion_model", "planar") not in RS_MOTION_NAMES:
        raise ValueError(f"motion_model must be one of {RS_MOTION_NAMES}, got {options['motion_model']!r}")
    if not 0.0 < float(options.get("max_displacement", 0.1)) <= 0.5:
        raise ValueError(f"max_displacement must be in (0, 0.5] (a fraction of the width), got {options['max_displacement']}")
    if not 0.0 <= float(options.get("white_fraction", 0.0)) <= 1.0:
        raise ValueError(f"white_fraction must be in [0, 1], got {options['white_fraction']}")
    if len(size) != 2 or min(size) < 8:
        raise ValueError(f"size must be (H, W) with both at least 8 pixels, got {size}")
    if not split or "/" in split or "\\" in split:
        raise ValueError(f"split must be a folder name such as 'training' or 'test', got {split!r}")
    if photos is None or isinstance(photos, (str, Path)):
        photo_paths = resolve_photos(photos)
    else:
        photo_paths = [str(p) for p in photos]
        missing = [p for p in photo_paths if p not in _GENERATED and not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"photo files not found: {', '.join(missing[:5])}")
    base = {
        "task": task, "seed": int(seed), "size": (int(size[0]), int(size[1])),
        "photos": tuple(str(p) for p in photo_paths), "out": str(out), "split": split, "ext": ext,
        "quality": int(quality), "prefilter_sigma": float(prefilter_sigma),
        "options": tuple(sorted(options.items())), "npz_size": npz_size, "full_res_jpg": full_res_jpg,
    }
    return [_Job(index=i, **base) for i in range(start, start + num)]  # type: ignore[arg-type]

"""Photo sources shared by the synthetic-sample generators: photos bundled with scikit-image,
folders, installed photo pools, procedural scenes, and random crops of them."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ...io.images import list_images, load_image
from ..photos import POOLS, resolve_pool

__all__ = [
    "BUNDLED_PHOTOS",
    "HELD_OUT_PHOTOS",
    "TRAINING_PHOTOS",
    "PROCEDURAL",
    "URBAN",
    "bundled_photo_paths",
    "list_photos",
    "resolve_photos",
    "procedural_scene",
    "urban_scene",
    "random_photo_crop",
    "draw_photo",
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


def list_photos(folder: Any | None = None) -> list[Path]:
    """Photo files of ``folder`` sorted by name, or the bundled photos when ``folder`` is None."""
    if folder is None:
        return bundled_photo_paths()
    paths = sorted(list_images(folder).values())
    if not paths:
        raise ValueError(f"no images (.png, .jpg, ...) found in photo folder {folder}")
    return paths


def resolve_photos(spec: Any | None) -> list[str]:
    """Photo sources from a command-line spec.

    ``spec`` is a photo folder, or a ``+``-joined list of named sources: ``bundled``,
    ``bundled-train``, ``bundled-test`` (:func:`bundled_photo_paths`), ``procedural``
    (a new :func:`procedural_scene` per sample), ``urban`` (a new :func:`urban_scene`
    per sample) and the installed photo pools of :mod:`stablemotion.data.photos` (``debian``,
    ``debian-train``, ``debian-test``, ...; fixed train/test split) or a folder. A name may carry
    a repeat count, ``procedural*10``, to weight the draw.
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
        elif Path(name).is_dir():
            out += [str(p) for p in list_photos(name)] * n
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


def draw_photo(rng: Any, photos: Sequence[str], size: tuple[int, int]) -> Any:
    """Draw one photo source with ``rng`` and load it: a photo file, or a new generated scene
    (:data:`PROCEDURAL`, :data:`URBAN`) larger than ``size`` so that crops vary in scale.

    Returns:
        uint8 (H0, W0, 3).
    """
    source = photos[int(rng.integers(len(photos)))]
    if source in _GENERATED:
        make_scene = procedural_scene if source == PROCEDURAL else urban_scene
        return make_scene(rng, (int(size[0] * 1.5) + 16, int(size[1] * 1.5) + 16))
    return _load_photo(source)

"""A strict detector of the empty border of a stitched image (the area no view covers).

Stitching software (OpenCV's ``Stitcher``, Hugin, phone panoramas) fills the part of the output
rectangle that no warped view covers with one exact colour, usually black, sometimes white. The SIR
task rectangles such an image; any other image must be left alone. :func:`detect_empty_border`
is the one rule that tells them apart, used by ``--task auto``, by the SIR mask derivation
(:func:`stablemotion.core.image_processing.derive_mask`, so ``rectify`` and the app) and by
``evaluate``.

An **empty area** is a connected region touching the image frame that

1. lies within a small tolerance of ONE fill value (black, white or a given colour) and is
   *exactly flat* away from its outline: its interior (the region eroded past the reach of JPEG
   ringing, 16 px at full resolution) keeps within 2 levels of one value. Stitchers write
   constant pixels and a JPEG codec keeps constant 8x8 blocks constant; dark or bright scene
   regions (shadows, night skies, backdrops) carry sensor and compression noise;
2. meets the content along the outlines of warped views: straight or gently curved segments
   meeting at corners. The outline is simplified (``cv2.approxPolyDP``, 1.5 px at the decision
   scale); its mean segment must be long and the simplified polyline must follow the raw
   outline closely. The texture edge of an object or a cloud needs many short segments;
3. has content along its outline that is not itself close to the fill: just outside the region
   (3-6 px at the decision scale) at most a third of the pixels may be within twice the
   tolerance of the fill. A black helmet, a night sky or a clipped sky fade into dark or bright
   surroundings; a stitched border cuts the picture off;
4. is a wedge or band at the frame: its length along the image frame is at least 0.4 of its outline
   against content (a clipped sky or a bright object seen through a gap in the scene touches the
   frame along little of its outline);
5. is met by a step, not a ramp: the content's median distance from the fill 2 px outside the region
   is at least 0.6 of that 5-8 px outside. A clipped highlight's surroundings fade into it (bloom).

Rules 4 and 5 (and their thresholds) were chosen on the tuning half of the photos of
``benchmarks/border_detector.py``; its held-out half is the reported figure.

When in doubt the answer is no: an image without an empty border is left unchanged by SIR.
The decision runs on a strided (not averaged, so noise survives) copy of at most about one
megapixel; the mask is full resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["EmptyBorder", "detect_empty_border", "FILLS", "DECISION_PIXELS"]

#: Named fill colours (RGB, uint8).
FILLS: dict[str, tuple[int, int, int]] = {"black": (0, 0, 0), "white": (255, 255, 255)}
#: The decision runs on a strided copy of at most about this many pixels.
DECISION_PIXELS = 1_000_000
#: Reach of JPEG ringing (4:2:0 chroma blocks are 16 px) at full resolution, px.
_RING_PX = 16
#: Interior pixels must lie within this many levels of the interior's median (uint8 units).
_FLAT_LEVELS = 2
#: Share of interior pixels that must be that flat.
_FLAT_SHARE = 0.99
#: Required share when the region is too thin to erode past the ringing (some ringing left).
_FLAT_SHARE_NEAR_RINGING = 0.9
#: The interior's median may sit at most this many levels from the fill (JPEG's DC rounding), or
#: ``core_tolerance - 6`` when that is more (a user's wider tolerance).
_MAX_FILL_OFFSET = 2
#: Once one region passed, another flat region of the same fill needs only this outline coverage.
_MIN_COVERAGE_MORE = 0.5
#: Outline simplification tolerance at the decision scale, px.
_POLY_EPS = 2.0
#: A segment of the simplified outline from this length (px, decision scale) is long.
_LONG_SEGMENT = 30.0
#: Least share of the outline covered by long segments.
_MIN_COVERAGE = 0.8
#: Content 2-3 px outside the region within this many tolerances of the fill is fill-like.
_CONTENT_FACTOR = 1
#: Most share of fill-like content along the outline.
_MAX_FILL_LIKE_CONTENT = 0.2
#: Least ratio of the region's length along the image frame to its outline against content: an
#: empty area is a wedge or band at the frame's edges; a clipped sky or a bright object seen
#: through a gap touches the frame along little of its outline.
_MIN_FRAME_CONTACT = 0.4
#: Least ratio of the content's median distance from the fill 2 px outside the region to that 5-8 px
#: outside (decision scale): a stitched view is cut off (a step, ratio near 1 past the ringing); a
#: clipped highlight's surroundings fade into it (bloom, a ramp).
_MIN_STEP = 0.6


@dataclass(frozen=True)
class EmptyBorder:
    """The result of :func:`detect_empty_border`.

    Attributes:
        found: whether the image has an empty border.
        mask: bool (H, W) at the image's resolution, True = empty pixel (all False if not found).
        fill: the fill colour (RGB uint8) of the empty border, or None.
        fraction: empty pixels / all pixels (0 if not found).
        reason: one line saying why yes or why no.
    """

    found: bool
    mask: np.ndarray
    fill: tuple[int, int, int] | None
    fraction: float
    reason: str


@dataclass(frozen=True)
class _Verdict:
    ok: bool
    why: str
    area: int


def _check_image(image: object) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        what = f"{type(image).__name__} {getattr(image, 'shape', '')} {getattr(image, 'dtype', '')}".strip()
        raise ValueError(f"detect_empty_border expects a uint8 (H, W, 3) RGB image, got {what}")
    if min(image.shape[:2]) < 4:
        raise ValueError(f"detect_empty_border needs an image of at least 4x4 px, got {image.shape[1]}x{image.shape[0]}")
    return image


def _fills(fill: tuple[int, int, int] | str | None) -> list[tuple[str, tuple[int, int, int]]]:
    if fill is None or fill == "auto":
        return list(FILLS.items())
    if isinstance(fill, str):
        if fill not in FILLS:
            raise ValueError(f"fill must be 'auto', 'black', 'white' or an (R, G, B) tuple, got {fill!r}")
        return [(fill, FILLS[fill])]
    values = tuple(int(v) for v in fill)
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise ValueError(f"fill must be three integers in [0, 255] (R, G, B), got {fill!r}")
    name = next((k for k, v in FILLS.items() if v == values), f"rgb{values}")
    return [(name, values)]  # type: ignore[list-item]


def _distance(image: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """Max over channels of |pixel - colour|, uint8 (H, W); a band of rows at a time, so a
    100-megapixel image needs no three full-size channel copies."""
    out = np.empty(image.shape[:2], np.uint8)
    step = max(1, (1 << 22) // max(1, image.shape[1]))
    for r0 in range(0, image.shape[0], step):
        r, g, b = cv2.split(image[r0:r0 + step])
        if colour == (255, 255, 255):
            out[r0:r0 + step] = 255 - cv2.min(cv2.min(r, g), b)
            continue
        if colour != (0, 0, 0):
            r, g, b = (cv2.absdiff(c, np.full_like(c, v)) for c, v in zip((r, g, b), colour, strict=True))
        out[r0:r0 + step] = cv2.max(cv2.max(r, g), b)
    return out


def _frame_labels(labels: np.ndarray) -> np.ndarray:
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return edge[edge > 0]


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _outline_coverage(region: np.ndarray) -> tuple[float, int]:
    """Share of the length of ``region``'s outline (the part not on the image frame) that long
    straight segments of its simplified polyline cover, and that length (decision scale, px).

    The outline (median-filtered, 5 px) is simplified with ``cv2.approxPolyDP`` (:data:`_POLY_EPS` px); a segment is long
    from :data:`_LONG_SEGMENT` px (less in a small image: 15% of its shorter side). A gently curved
    outline is a few long chords; the texture edge of an object is many short ones.
    """
    h, w = region.shape
    long_from = min(_LONG_SEGMENT, 0.15 * min(h, w))
    # a 5-px median first: JPEG ringing frays a straight outline by a few px
    smooth = cv2.medianBlur(region.astype(np.uint8) * 255, 5) if min(h, w) >= 16 else region.astype(np.uint8)
    contours, _ = cv2.findContours((smooth > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    total = covered = 0.0
    for contour in contours:
        a = cv2.approxPolyDP(contour, _POLY_EPS, True)[:, 0, :]
        b = np.roll(a, -1, axis=0)
        length = np.linalg.norm(b - a, axis=1)
        along_frame = (((a[:, 0] <= 0) & (b[:, 0] <= 0)) | ((a[:, 1] <= 0) & (b[:, 1] <= 0))
                       | ((a[:, 0] >= w - 1) & (b[:, 0] >= w - 1)) | ((a[:, 1] >= h - 1) & (b[:, 1] >= h - 1)))
        total += float(length[~along_frame].sum())
        covered += float(length[~along_frame & (length >= long_from)].sum())
    return covered / max(total, 1e-9), int(round(total))


def _step_ratio(region_u8: np.ndarray, dist: np.ndarray) -> float:
    """Median distance from the fill of the content 1.5-2.5 px outside the region over that 4.5-8.5 px
    outside (decision scale), computed in the region's bounding box grown by 9 px; 1 if undefined."""
    ys, xs = np.nonzero(cv2.dilate(region_u8, _disk(9)))
    box = np.s_[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    d = cv2.distanceTransform(1 - region_u8[box], cv2.DIST_L2, 3)
    near, far = dist[box][(d > 1.5) & (d <= 2.5)], dist[box][(d > 4.5) & (d <= 8.5)]
    if near.size == 0 or far.size == 0:
        return 1.0
    return float(np.median(near)) / max(float(np.median(far)), 1.0)


def _judge(region: np.ndarray, dist: np.ndarray, tolerance: int, core_tolerance: int, ring: int,
           more: bool = False) -> _Verdict:
    """Is ``region`` (bool, decision scale) an empty area? ``dist`` is each pixel's distance from the fill.
    ``more``: another region of an image already found stitched (less evidence needed: a looser
    outline coverage and flatness within the ringing's reach, no content test)."""
    area = int(region.sum())
    h, w = region.shape
    if area >= 0.98 * h * w:
        return _Verdict(False, "the whole image is one flat colour (no content)", area)
    # 1. an exactly flat interior, at the fill
    region_u8 = region.astype(np.uint8)
    radius = ring
    while True:
        interior = cv2.erode(region_u8, _disk(radius)) > 0
        if interior.sum() >= 24 or radius == 1:
            break
        radius = max(1, radius // 2)
    if interior.sum() < 8:
        return _Verdict(False, "it is too thin to tell a stitched fill from the scene", area)
    inside = dist[interior].astype(np.int16)
    median = int(np.median(inside))
    flat = float((np.abs(inside - median) <= _FLAT_LEVELS).mean())
    need = _FLAT_SHARE if radius >= ring else _FLAT_SHARE_NEAR_RINGING - (0.15 if more else 0.0)
    if flat < need:
        return _Verdict(False, f"its interior is not flat ({1 - flat:.0%} of it varies by more than "
                               f"{_FLAT_LEVELS} levels: scene, not a stitched fill)", area)
    if median > max(_MAX_FILL_OFFSET, core_tolerance - 6):
        return _Verdict(False, f"its interior sits {median} levels from the fill (a stitcher writes the fill "
                               "itself: a dark or bright scene region)", area)
    # 2. an outline of straight or gently curved segments
    coverage, length = _outline_coverage(region)
    if length <= 0:
        return _Verdict(False, "it has no outline against content", area)
    if coverage < (_MIN_COVERAGE_MORE if more else _MIN_COVERAGE):
        return _Verdict(False, f"its outline is textured (long straight segments cover {coverage:.0%} of it: "
                               "an object, not a stitched view)", area)
    # 3. content along the outline that is not itself close to the fill
    band = (cv2.dilate(region_u8, _disk(3)) > 0) & ~(cv2.dilate(region_u8, _disk(1)) > 0)
    if not more and band.any():
        fill_like = float((dist[band] <= _CONTENT_FACTOR * tolerance).mean())
        if fill_like > _MAX_FILL_LIKE_CONTENT:
            return _Verdict(False, f"the content along its outline is itself close to the fill ({fill_like:.0%}): "
                                   "a dark or bright scene region, not a stitched view", area)
    # 4. a wedge or band at the frame, not a patch seen through a gap in the scene
    on_frame = int(region[0].sum() + region[-1].sum() + region[1:-1, 0].sum() + region[1:-1, -1].sum())
    contact = on_frame / length
    if not more and contact < _MIN_FRAME_CONTACT:
        return _Verdict(False, f"it touches the frame along little of its length ({contact:.2f} of its outline): "
                               "a bright or dark scene region, not an empty wedge", area)
    # 5. a step, not a ramp: the content next to a stitched fill is as far from it as the content further in
    if not more:
        step = _step_ratio(region_u8, dist)
        if step < _MIN_STEP:
            return _Verdict(False, f"the content fades into it (2 px out it is {step:.0%} as far from the fill as "
                                   "5-8 px out: a clipped highlight or a shadow, not a cut-off view)", area)
    return _Verdict(True, f"flat, outlined by straight or gently curved segments ({coverage:.0%})", area)


def _where(region: np.ndarray) -> str:
    h, w = region.shape
    sides = [name for name, line in (("top", region[0]), ("bottom", region[-1]), ("left", region[:, 0]),
                                     ("right", region[:, -1])) if line.any()]
    return "/".join(sides) or "frame"


def detect_empty_border(
    image: np.ndarray,
    fill: tuple[int, int, int] | str | None = None,
    tolerance: int = 24,
    min_fraction: float = 0.002,
    core_tolerance: int | None = None,
    open_size: int = 3,
) -> EmptyBorder:
    """Find the empty border of a stitched image, strictly (see the module doc for the rule).

    Args:
        image: uint8 (H, W, 3) RGB.
        fill: ``None``/``"auto"`` (try black and white), ``"black"``, ``"white"`` or an (R, G, B)
            uint8 colour.
        tolerance: how far (max abs difference over channels, uint8 units) a pixel of the empty
            area's JPEG-ringing fringe may be from the fill (default 24: JPEG quality >= ~75).
        min_fraction: the least share of the pixels an empty border must cover.
        core_tolerance: how far the empty area's pixels away from the fringe may be from the
            fill (uint8 units; default ``tolerance // 3``, 8).
        open_size: the mask's valid region is opened with this square (px) to drop JPEG specks.

    Returns:
        :class:`EmptyBorder`; its ``mask`` is bool (H, W), True = empty.

    Raises:
        ValueError: not a uint8 (H, W, 3) array, or a bad option.

    Example:
        >>> image = np.full((60, 80, 3), 140, np.uint8)
        >>> image[::2, ::3] = 170  # some texture
        >>> image[:, :20] = 0  # a black empty band on the left
        >>> result = detect_empty_border(image)
        >>> result.found, result.fill, round(result.fraction, 2), int(result.mask[0, :22].sum())
        (True, (0, 0, 0), 0.25, 20)
        >>> detect_empty_border(np.full((60, 80, 3), 140, np.uint8)).found
        False
    """
    image = _check_image(image)
    if not 0 <= tolerance <= 255:
        raise ValueError(f"tolerance must be in [0, 255] (uint8 levels), got {tolerance}")
    if not 0.0 <= min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}")
    core_tolerance = int(tolerance) // 3 if core_tolerance is None else min(int(core_tolerance), int(tolerance))
    h, w = image.shape[:2]
    step = max(1, math.ceil(math.sqrt(h * w / DECISION_PIXELS)))
    small = image[::step, ::step]
    ring = max(1, math.ceil(_RING_PX / step))
    min_area = max(4, min_fraction * small.shape[0] * small.shape[1])
    nothing = np.zeros((h, w), bool)
    best: tuple[str, tuple[int, int, int], np.ndarray] | None = None
    why_not: list[tuple[int, str]] = []
    for name, colour in _fills(fill):
        dist = _distance(small, colour)
        core = (dist <= core_tolerance).astype(np.uint8)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(core, connectivity=8)
        accepted = np.zeros(small.shape[:2], bool)
        rejected = []
        for label in _frame_labels(labels):
            if stats[label, cv2.CC_STAT_AREA] < min_area:
                continue
            region = labels == label
            verdict = _judge(region, dist, tolerance, core_tolerance, ring)
            if verdict.ok:
                accepted |= region
            else:
                rejected.append(region)
                why_not.append((verdict.area, f"the {name} region at the {_where(region)} edge: {verdict.why}"))
        if accepted.any():  # a stitched image: its other flat regions of the fill need less evidence
            for region in rejected:
                if _judge(region, dist, tolerance, core_tolerance, ring, more=True).ok:
                    accepted |= region
        if accepted.sum() >= min_area and (best is None or accepted.sum() > best[2].sum()):
            best = (name, colour, accepted)
    if best is None:
        if not why_not:
            return EmptyBorder(False, nothing, None, 0.0, "no empty border: no flat region of the fill colour "
                                                          "touches the image frame")
        area, why = max(why_not)
        return EmptyBorder(False, nothing, None, 0.0, f"no empty border: {why}")
    name, colour, accepted = best
    mask = _full_mask(image, colour, accepted, step, tolerance, core_tolerance, open_size)
    fraction = float(mask.mean())
    if fraction < min_fraction:
        return EmptyBorder(False, nothing, None, 0.0, f"no empty border: the {name} border covers only "
                                                      f"{fraction:.2%} of the pixels")
    return EmptyBorder(True, mask, colour, fraction,
                       f"empty {name} border ({fraction:.1%} of the pixels): flat, with an outline of straight "
                       "or gently curved segments")


def _full_mask(image: np.ndarray, colour: tuple[int, int, int], accepted: np.ndarray, step: int,
               tolerance: int, core_tolerance: int, open_size: int) -> np.ndarray:
    """The full-resolution empty mask (bool (H, W)) of the regions ``accepted`` at the decision scale."""
    dist = _distance(image, colour)
    core = (dist <= core_tolerance).astype(np.uint8)
    _, labels = cv2.connectedComponents(core, connectivity=8)
    keep = np.unique(labels[::step, ::step][accepted])
    keep = keep[keep > 0]
    lut = np.zeros(int(labels.max()) + 1, bool)
    lut[keep] = True
    empty = lut[labels]
    del labels, core  # int32 labels are 4 bytes a pixel: freed before the next labelling (100-megapixel images)
    # The JPEG fringe: pixels within ``tolerance`` of the fill at most 3 px from the flat core.
    fringe = cv2.dilate(empty.view(np.uint8), _disk(3))
    fringe &= dist <= tolerance
    del dist
    empty |= fringe.view(bool)
    del fringe
    valid = (~empty).view(np.uint8)
    del empty
    if open_size > 1:
        valid = cv2.morphologyEx(valid, cv2.MORPH_OPEN, np.ones((open_size, open_size), np.uint8))
    # empty pixels not connected to the frame through empty pixels are content
    _, labels = cv2.connectedComponents(1 - valid, connectivity=8)
    edge = _frame_labels(labels)
    lut = np.zeros(int(labels.max()) + 1, bool)
    lut[edge] = True
    return lut[labels]

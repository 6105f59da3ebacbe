"""The strict empty-border detector: stitched borders found, dark or bright scene regions not."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from stablemotion.core.borders import EmptyBorder, detect_empty_border


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])


@pytest.fixture(scope="module")
def cat() -> np.ndarray:
    """A real photo without an empty border, 300x400 uint8 RGB."""
    return cv2.resize(data.chelsea(), (400, 300), interpolation=cv2.INTER_AREA)


def _stitched(photo: np.ndarray, fill: int | tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``photo`` seen through the outline of two warped views (straight segments meeting at corners),
    the rest filled with ``fill``; returns the image and the true empty mask (bool, True = empty)."""
    h, w = photo.shape[:2]
    content = np.zeros((h, w), np.uint8)
    left = np.array([[10, 18], [int(w * 0.6), 4], [int(w * 0.62), h - 10], [16, h - 30]], np.int32)
    right = np.array([[int(w * 0.5), 0], [w - 1, 25], [w - 14, h - 1], [int(w * 0.52), h - 6]], np.int32)
    for view in (left, right):  # one call each: fillPoly fills overlaps even-odd
        cv2.fillPoly(content, [view], 1)
    empty = content == 0
    image = photo.copy()
    image[empty] = fill
    return image, empty


def _near_outline(empty: np.ndarray, wrong: np.ndarray, px: float = 3.5) -> bool:
    edges = cv2.Canny(empty.astype(np.uint8) * 255, 50, 150) == 0
    dist = cv2.distanceTransform(edges.astype(np.uint8), cv2.DIST_L2, 3)
    return bool(dist[wrong].max(initial=0) <= px)


def test_astronaut_has_no_empty_border() -> None:
    result = detect_empty_border(data.astronaut())  # its black helmet and backdrop touch the frame
    assert isinstance(result, EmptyBorder)
    assert not result.found and not result.mask.any() and result.fraction == 0.0 and result.fill is None
    assert result.reason.startswith("no empty border")


@pytest.mark.parametrize("fill", [0, 255])
def test_flat_stitched_border_is_found_with_its_mask(cat: np.ndarray, fill: int) -> None:
    image, truth = _stitched(cat, fill)
    result = detect_empty_border(image)
    assert result.found, result.reason
    assert result.fill == (fill,) * 3
    assert result.mask.shape == truth.shape and result.mask.dtype == bool
    assert (result.mask != truth).mean() < 0.005
    assert result.fraction == pytest.approx(truth.mean(), abs=0.005)
    assert result.reason.startswith(f"empty {'black' if fill == 0 else 'white'} border")


@pytest.mark.parametrize("fill, quality", [(0, 75), (255, 85), (0, 95)])
def test_jpeg_compressed_stitched_border_is_found(cat: np.ndarray, fill: int, quality: int) -> None:
    image, truth = _stitched(cat, fill)
    result = detect_empty_border(_jpeg(image, quality))
    assert result.found, result.reason
    wrong = result.mask != truth
    assert wrong.mean() < 0.01
    assert _near_outline(truth, wrong)  # every disagreement sits on the outline (JPEG ringing)


def test_a_thin_inset_border_of_a_small_image_is_found() -> None:
    image = np.full((40, 56, 3), 150, np.uint8)
    image[::2, ::3] = 110
    image[:, :4] = 0  # a 4-px black band on the left, straight outline
    result = detect_empty_border(image)
    assert result.found, result.reason
    assert result.mask[:, :4].all() and not result.mask[:, 4:].any()


def test_dark_object_touching_the_edge_is_not_a_border(cat: np.ndarray) -> None:
    image = cat.copy()
    h, w = image.shape[:2]
    # a crushed-black object with a round, textured outline at the bottom edge (exactly 0 inside)
    yy, xx = np.mgrid[:h, :w]
    angle = np.arctan2(yy - h, xx - w / 2)
    radius = 90 + 12 * np.sin(9 * angle) + 6 * np.sin(23 * angle + 1)
    blob = np.hypot(yy - h, xx - w / 2) < radius
    image[blob] = 0
    result = detect_empty_border(_jpeg(image, 90))
    assert not result.found, result.reason
    assert not result.mask.any()


def test_night_like_photo_is_not_a_border(cat: np.ndarray) -> None:
    night = np.clip(255 * 0.5 * (cat / 255.0) ** 2.6, 0, 255).astype(np.uint8)
    assert (night.max(axis=2) <= 24).mean() > 0.3  # much of it is as dark as a JPEG black border
    result = detect_empty_border(_jpeg(night, 85))
    assert not result.found, result.reason


@pytest.mark.parametrize("width", [6, 10])
def test_clipped_sky_with_a_soft_transition_is_not_a_border(cat: np.ndarray, width: int) -> None:
    """The top third clipped to exactly 255 (a flat, gently curved white region on three sides of the
    frame), the photo fading into it over ``width`` px (sensor bloom) rather than cut off by a step."""
    h, w = cat.shape[:2]
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    edge = 0.3 * h + 8 * np.sin(xx / w * 3)  # the clipped sky's lower edge, px
    t = np.clip((yy - edge) / width, 0, 1)[..., None]  # 0 in the sky, 1 from `width` px below its edge
    noise = np.random.default_rng(0).normal(0, 2, cat.shape) * (yy > edge)[..., None]
    image = _jpeg(np.clip(255 * (1 - t) + cat * t + noise, 0, 255).astype(np.uint8), 90)
    assert (image.min(axis=2) == 255).mean() > 0.25  # a third of it is as white as a stitched fill
    result = detect_empty_border(image)
    assert not result.found, result.reason
    assert "fades into it" in result.reason
    # the same sky cut off by a hard step (a stitched white fill) is found
    stitched = cat.copy()
    stitched[yy < edge] = 255
    assert detect_empty_border(_jpeg(stitched, 90)).found


def test_fill_and_tolerance_options(cat: np.ndarray) -> None:
    colour = (40, 90, 200)
    image, truth = _stitched(cat, colour)
    assert not detect_empty_border(image).found  # neither black nor white
    assert not detect_empty_border(image, fill="black").found
    result = detect_empty_border(image, fill=colour)
    assert result.found and result.fill == colour and (result.mask != truth).mean() < 0.005
    grey, truth = _stitched(cat, 14)  # a dark grey fill: 14 levels from black
    assert not detect_empty_border(grey, fill="black").found  # over tolerance / 3 = 8 from the fill
    assert detect_empty_border(grey, fill=(14, 14, 14)).found
    found = detect_empty_border(grey, fill="black", tolerance=60)  # core 20 levels, fill offset up to 14
    assert found.found and (found.mask != truth).mean() < 0.005


def test_bad_input_is_refused_with_a_clear_message(cat: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\) RGB image"):
        detect_empty_border(cat.astype(np.float32))
    with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\) RGB image"):
        detect_empty_border(cat[..., 0])
    with pytest.raises(ValueError, match="fill must be"):
        detect_empty_border(cat, fill="green")
    with pytest.raises(ValueError, match="tolerance"):
        detect_empty_border(cat, tolerance=300)

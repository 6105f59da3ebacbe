"""Input conversion/validation and the empty-border mask rule."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from stablemotion.core.image_processing import (
    background_color,
    derive_mask,
    processing_size,
    resize_mask,
    to_image_batch,
    to_mask_batch,
    to_vae_range,
)


def test_image_inputs_agree(photo: np.ndarray) -> None:
    ref = torch.from_numpy(photo).permute(2, 0, 1).float().unsqueeze(0) / 255.0
    for x in (photo, Image.fromarray(photo), photo.astype(np.float32) / 255.0, ref[0], ref, [photo]):
        out = to_image_batch(x)
        assert out.shape == (1, 3, 96, 128) and out.dtype == torch.float32
        assert torch.allclose(out, ref, atol=1e-6)
    batch = to_image_batch(np.stack([photo, photo[::-1]]))
    assert batch.shape == (2, 3, 96, 128)
    assert torch.allclose(batch[1], torch.from_numpy(photo[::-1].copy()).permute(2, 0, 1).float() / 255.0)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((8, 8), np.uint8), "grey"),
        (np.zeros((8, 8, 1), np.uint8), "grey"),
        (Image.new("L", (8, 8)), "grey"),
        (torch.zeros(1, 8, 8), "grey"),
        (np.zeros((8, 8, 4), np.uint8), "RGBA"),
        (Image.new("RGBA", (8, 8)), "RGBA"),
        (torch.zeros(4, 8, 8), "RGBA"),
        (np.full((8, 8, 3), 2.0, np.float32), r"\[0, 1\]"),
        (np.zeros((8, 8, 3), np.int32), "uint8"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8)], "same size"),
        ([], "empty"),
    ],
)
def test_bad_images_raise_clearly(bad: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        to_image_batch(bad)


def test_mask_inputs_are_binarised() -> None:
    rng = np.random.default_rng(0)
    truth = np.zeros((20, 24), bool)
    truth[3:17, 4:20] = True
    noisy = np.where(truth, 255, 0).astype(np.int16) + rng.integers(-40, 40, truth.shape)
    noisy3 = np.repeat(np.clip(noisy, 0, 255).astype(np.uint8)[..., None], 3, axis=2)  # like a DIR-D JPEG mask
    expected = torch.from_numpy(truth).float()[None, None]
    for x in (noisy3, Image.fromarray(noisy3), truth, truth.astype(np.float32), torch.from_numpy(truth)[None]):
        out = to_mask_batch(x)
        assert out.shape == (1, 1, 20, 24)
        assert torch.equal(out, expected)
    assert to_mask_batch(torch.from_numpy(np.stack([truth, ~truth]))[:, None].float()).shape == (2, 1, 20, 24)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_mask_batch(np.full((4, 4), 3.0))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        to_mask_batch(np.zeros((4, 4, 2), np.uint8))


def test_vae_range_and_mask_resize() -> None:
    m = torch.zeros(1, 1, 8, 8)
    m[..., 2:6, 2:6] = 1
    v = to_vae_range(m)
    assert v.shape == (1, 3, 8, 8) and set(v.unique().tolist()) == {-1.0, 1.0}
    small = resize_mask(m, (4, 4))
    assert set(small.unique().tolist()) <= {0.0, 1.0} and small[0, 0, 1:3, 1:3].eq(1).all()


def test_processing_size() -> None:
    assert processing_size((100, 130), (32, 48), 8) == (32, 48)
    assert processing_size((100, 130), 64, 8) == (64, 64)
    assert processing_size((100, 130), 0, 8) == (96, 128)
    with pytest.raises(ValueError, match="multiples of 8"):
        processing_size((100, 130), (30, 48), 8)


# --------------------------------------------------------------------------- derived masks
@pytest.fixture(scope="module")
def big_photo() -> np.ndarray:
    """astronaut() at 288x384: in a tiny image the slivers of a stitched border are all JPEG
    ringing, and the strict border rule (rightly) cannot tell them from scenery."""
    from skimage import data

    return cv2.resize(data.astronaut(), (384, 288), interpolation=cv2.INTER_AREA)


def _stitched(photo: np.ndarray, fill: int, quality: int = 75) -> tuple[np.ndarray, np.ndarray]:
    """A photo cut to an irregular quadrilateral on a constant background, JPEG-compressed."""
    h, w = photo.shape[:2]
    poly = np.array([[0.05 * w, 0.04 * h], [0.9 * w, 0], [w - 1, 0.9 * h], [0.03 * w, 0.85 * h]]).astype(np.int32)
    truth = np.zeros((h, w), np.uint8)
    cv2.fillPoly(truth, [poly], 255)
    img = np.where(truth[..., None] > 0, photo, np.uint8(fill)).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy(), truth


def _boundary_distance(truth: np.ndarray) -> np.ndarray:
    edges = cv2.Canny(truth, 50, 150) == 0
    return cv2.distanceTransform(edges.astype(np.uint8), cv2.DIST_L2, 3)


@pytest.mark.parametrize("fill, colour", [(0, "black"), (255, "white")])
def test_derived_mask_matches_truth_under_jpeg_noise(big_photo: np.ndarray, fill: int, colour: str) -> None:
    # Keep the photo's own pixels away from the background colour so that only the rule
    # (not the photo) decides; the next test covers dark content.
    photo = np.clip(big_photo, 40, 215).astype(np.uint8)
    img, truth = _stitched(photo, fill)
    assert background_color(img)[0] == colour
    mask = derive_mask(img)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    wrong = mask != truth
    assert wrong.mean() < 0.01
    # every disagreement sits on the content boundary (JPEG ringing, anti-aliasing)
    assert _boundary_distance(truth)[wrong].max(initial=0) <= 2.5


def test_dark_content_inside_stays_valid(big_photo: np.ndarray) -> None:
    photo = np.clip(big_photo, 40, 215).astype(np.uint8)
    photo[120:180, 150:240] = 0  # a black object in the middle of the picture
    img, truth = _stitched(photo, 0, quality=95)
    mask = derive_mask(img)
    assert (mask[122:178, 152:238] == 255).all()
    assert (mask != truth).mean() < 0.01


def test_textured_dark_content_at_the_frame_stays_valid(photo: np.ndarray) -> None:
    img = np.clip(photo, 40, 215).astype(np.uint8)
    truth = np.full(img.shape[:2], 255, np.uint8)
    truth[-15:] = 0
    img[-15:] = 0  # empty band at the bottom
    rng = np.random.default_rng(0)
    img[0:30, 0:25] = rng.integers(4, 25, (30, 25, 1), dtype=np.uint8)  # dark texture at the top-left frame
    mask = derive_mask(img)
    assert (mask[0:30, 0:25] == 255).all()
    assert (mask != truth).mean() < 0.01
    flat = img.copy()
    flat[0:30, 0:25] = 2  # the same region, but flat black: indistinguishable from a border
    assert (derive_mask(flat)[2:28, 2:23] == 0).all()


def test_no_border_means_all_valid(photo: np.ndarray) -> None:
    img = np.clip(photo, 40, 215).astype(np.uint8)
    assert (derive_mask(img) == 255).all()


def test_explicit_background_and_errors(big_photo: np.ndarray) -> None:
    img, truth = _stitched(np.clip(big_photo, 40, 215).astype(np.uint8), 255)
    assert (derive_mask(img, background="black") == 255).all()  # no black border here
    assert (derive_mask(img, background="white") != truth).mean() < 0.01
    with pytest.raises(ValueError, match="background"):
        derive_mask(img, background="green")
    with pytest.raises(ValueError, match="uint8"):
        derive_mask(img.astype(np.float32))


def test_prepare_mask_keeps_a_given_mask_as_read_and_refuses_bad_ones() -> None:
    from stablemotion.core.image_processing import prepare_mask

    image = np.full((8, 10, 3), 120, np.uint8)
    given = np.full((8, 10, 3), 250, np.uint8)
    given[:2] = 3  # JPEG-like grey levels: not binarised here (the pipeline's mask_encoding decides)
    mask, note = prepare_mask(image, given, source="mask m.jpg")
    assert mask is given and note == "mask m.jpg (25.0% empty)"
    with pytest.raises(ValueError, match=r"mask m.jpg is 10x7 px but the image is 10x8 px"):
        prepare_mask(image, given[:7], source="mask m.jpg")
    with pytest.raises(ValueError, match="no valid pixel"):
        prepare_mask(image, np.zeros((8, 10), np.uint8))
    bordered = np.full((8, 10, 3), 120, np.uint8)
    bordered[:, :2] = 0
    mask, note = prepare_mask(bordered, None)
    assert mask.shape == (8, 10) and (mask[:, :2] == 0).all() and note.startswith("derived mask from the black border")
    mask, note = prepare_mask(image, None)
    assert (mask == 255).all() and note.startswith("no empty border")


def test_derive_mask_says_no_when_the_border_merges_with_dark_texture() -> None:
    """A black notch that touches dark textured content (a shadow, a dark fruit) forms one dark region
    that is not flat: the strict rule cannot tell fill from scene there and leaves the image whole
    (the old rule kept the region's flat core, and so also cut flat dark scenery out)."""
    from stablemotion.core.image_processing import derive_mask, find_border

    rng = np.random.default_rng(0)
    image = rng.integers(120, 220, (60, 80, 3)).astype(np.uint8)
    image[:10, 50:] = 0  # the empty notch at the top right
    image[10:40, 45:80] = rng.integers(3, 25, (30, 35, 3))  # dark texture right below it, as dark as JPEG black
    border = find_border(image)
    assert not border.found and border.reason.startswith("no empty border")
    assert (derive_mask(image) == 255).all()
    clean = image.copy()
    clean[10:40, 45:80] = rng.integers(60, 120, (30, 35, 3))  # the same notch next to ordinary content
    mask = derive_mask(clean)
    assert (mask[:10, 50:] == 0).all() and (mask[10:] == 255).all() and (mask[:, :50] == 255).all()

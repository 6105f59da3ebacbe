"""Issue 15, part A: one input contract for training, evaluation, pipeline, command line and app.

One image reader (EXIF, palette, CMYK, 16-bit, alpha), one mask rule, one size parser,
and an all-black mask refused everywhere with the same message.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stablemotion.core.image_processing import mask_valid, prepare_mask, to_mask_batch
from stablemotion.core.sizes import parse_size
from stablemotion.data import mask_to_tensor
from stablemotion.io.images import image_to_rgb, load_image, read_rgb
from stablemotion.model.tiny import tiny_pipeline


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)


def test_exif_orientation_is_applied_by_every_reader(rgb: np.ndarray, tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    path = tmp_path / "turned.jpg"
    Image.fromarray(rgb).save(path, exif=exif, quality=100)
    assert read_rgb(path)[0].shape == (20, 12, 3)
    assert load_image(path).shape == (20, 12, 3)
    assert load_image(path, mode="mask").shape == (20, 12, 3)


def test_modes_are_converted_by_one_rule(rgb: np.ndarray, tmp_path: Path) -> None:
    cmyk = Image.fromarray(rgb).convert("CMYK")
    out, mask, note = image_to_rgb(cmyk, "cmyk")
    assert out.shape == (12, 20, 3) and mask is None and "CMYK converted" in note
    assert np.abs(out.astype(int) - rgb.astype(int)).max() <= 2
    pal = Image.fromarray(rgb).convert("P")
    assert image_to_rgb(pal)[0].shape == (12, 20, 3)
    deep = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)  # a 16-bit grey image
    assert deep.mode.startswith("I")
    grey, _, note = image_to_rgb(deep, grey="convert")
    assert np.array_equal(grey[..., 0], rgb[..., 0]) and "grey" in note  # scaled by bit depth, not clipped
    with pytest.raises(ValueError, match="grey image .*--grey convert"):
        image_to_rgb(deep, "deep.png")


def test_alpha_opaque_dropped_real_alpha_refused_dropped_or_used_as_mask(rgb: np.ndarray) -> None:
    opaque = Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]))
    out, mask, note = image_to_rgb(opaque)
    assert np.array_equal(out, rgb) and mask is None and "opaque" in note
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, :5] = 0
    cut = Image.fromarray(np.dstack([rgb, alpha]))
    with pytest.raises(ValueError, match="--mask alpha"):
        image_to_rgb(cut, "cut.png")
    assert image_to_rgb(cut, alpha="drop")[1] is None
    _, mask, _ = image_to_rgb(cut, alpha="mask")
    assert np.array_equal(mask > 0, alpha > 0)


def test_one_mask_rule_everywhere() -> None:
    """An RGB mask pixel means the same for training data, the pipeline and the command line."""
    m = np.zeros((4, 4, 3), np.uint8)
    m[0, 0] = (200, 10, 10)  # mean 73: empty
    m[1, 1] = (250, 250, 10)  # mean 170: valid
    m[2:] = 255
    want = mask_valid(m)
    assert not want[0, 0] and want[1, 1] and want[2:].all()
    assert torch.equal(mask_to_tensor(m)[0] > 0, torch.from_numpy(want))  # the training data loader
    assert torch.equal(to_mask_batch(m)[0, 0] > 0, torch.from_numpy(want))  # the pipeline (binary models)
    kept, _ = prepare_mask(np.zeros((4, 4, 3), np.uint8), m)  # the CLI and the app keep it as read
    assert kept is m


def test_all_black_mask_refused_everywhere_with_one_message(rgb: np.ndarray) -> None:
    black = np.zeros(rgb.shape[:2], np.uint8)
    with pytest.raises(ValueError, match="no valid pixel"):
        prepare_mask(rgb, black)
    pipe = tiny_pipeline("sir")
    with pytest.raises(ValueError, match="no valid pixel"):
        pipe(np.zeros((32, 32, 3), np.uint8), mask=np.zeros((32, 32), np.uint8), show_progress_bar=False)


@pytest.mark.parametrize(
    ("value", "zero", "want"),
    [("384x512", False, (384, 512)), ("384,512", False, (384, 512)), (["384", "512"], False, (384, 512)),
     ("64", False, (64, 64)), ([64], False, (64, 64)), ("0", True, 0), (["0"], True, 0)],
)
def test_one_size_parser(value: object, zero: bool, want: object) -> None:
    assert parse_size(value, "--size", allow_zero=zero) == want


@pytest.mark.parametrize("bad", ["0", "12x", "axb", "1x2x3", "-4"])
def test_size_parser_errors_name_the_option(bad: str) -> None:
    with pytest.raises(ValueError, match="--size"):
        parse_size(bad, "--size")

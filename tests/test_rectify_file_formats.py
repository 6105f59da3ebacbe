"""``stablemotion rectify`` keeps what a photographer's file carries: 16-bit depth, EXIF, ICC, XMP, JPEG quality."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms

from stablemotion.cli import main
from stablemotion.io.metadata import ImageMetadata, read_image_with_metadata, save_image_with_metadata

XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><GPano:ProjectionType>cylindrical</GPano:ProjectionType></x:xmpmeta>'


@pytest.fixture
def rsc_model(tiny_model_folder) -> Path:
    return tiny_model_folder("rsc")


def _photo16(h: int = 96, w: int = 128) -> np.ndarray:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 65536, (h // 8, w // 8, 3)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 65535).astype(np.uint16)


def _metadata() -> ImageMetadata:
    exif = Image.Exif()
    exif[0x010F] = "StableCam"  # Make
    exif[0x0112] = 1
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return ImageMetadata(exif=exif.tobytes(), icc_profile=icc, xmp=XMP)


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_a_16_bit_input_gives_a_16_bit_output_with_its_metadata(rsc_model: Path, tmp_path: Path, ext: str) -> None:
    given = _metadata()  # one profile: ImageCms stamps each new one with its creation time
    src = save_image_with_metadata(_photo16(), tmp_path / "in" / "pano.png", given)
    args = ["rectify", str(src), "--model", str(rsc_model), "--out", str(tmp_path / "o"), "--image-ext", ext,
            "--always-correct", "--max-work-pixels", "4096"]
    assert main(args) == 0
    out, _, _, meta = read_image_with_metadata(tmp_path / "o" / f"pano.{ext}")
    assert out.dtype == np.uint16 and out.shape == (96, 128, 3) and len(np.unique(out)) > 256
    assert meta.has_panorama_tags and meta.icc_profile == given.icc_profile
    with Image.open(tmp_path / "o" / f"pano.{ext}") as im:
        assert im.getexif().get(0x010F) == "StableCam"


def test_jpeg_outputs_take_a_quality_and_refuse_16_bit(rsc_model: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    photo = (_photo16() // 257).astype(np.uint8)
    src = save_image_with_metadata(photo, tmp_path / "in" / "a.png", _metadata())
    sizes = {}
    for q in (30, 98):
        out = tmp_path / f"q{q}"
        assert main(["rectify", str(src), "--model", str(rsc_model), "--out", str(out), "--image-ext", "jpg",
                     "--jpeg-quality", str(q), "--always-correct"]) == 0
        sizes[q] = (out / "a.jpg").stat().st_size
        assert read_image_with_metadata(out / "a.jpg")[3].has_panorama_tags
    assert sizes[30] < sizes[98]
    src16 = save_image_with_metadata(_photo16(), tmp_path / "in16" / "b.png")
    code = main(["rectify", str(src16), "--model", str(rsc_model), "--out", str(tmp_path / "j16"), "--image-ext",
                 "jpg", "--always-correct"])
    captured = capsys.readouterr()
    err = captured.err + captured.out
    assert code == 1 and "16-bit" in err and "--image-ext png or tif" in err
    with pytest.raises(SystemExit):
        main(["rectify", str(src), "--model", str(rsc_model), "--out", str(tmp_path / "bad"), "--jpeg-quality", "0"])

"""16-bit PNG/TIFF stay 16-bit; EXIF (orientation reset), ICC and XMP travel to the output (issue 24 item 2)."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms, ImageOps

from stablemotion.io.metadata import (
    ImageMetadata,
    encode_png16,
    exif_of,
    orient,
    read_image_with_metadata,
    save_image_with_metadata,
    to_model_input,
)

GPANO = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
         b'<rdf:Description xmlns:GPano="http://ns.google.com/photos/1.0/panorama/" '
         b'GPano:ProjectionType="cylindrical" GPano:FullPanoWidthPixels="8000"/></rdf:RDF></x:xmpmeta>')
MAKE, MODEL, DATETIME, DATETIME_ORIGINAL, GPS_LATITUDE_REF = 0x010F, 0x0110, 0x0132, 0x9003, 0x0001
OUTPUTS = [("png", np.uint8), ("jpg", np.uint8), ("tif", np.uint8), ("png", np.uint16), ("tif", np.uint16)]


def _srgb() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _camera_exif(orientation: int = 6) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112], exif[MAKE], exif[MODEL], exif[DATETIME] = orientation, "Acme", "Pano 1", "2024:05:06 07:08:09"
    exif[0x8769] = {DATETIME_ORIGINAL: "2024:05:06 07:08:00"}
    exif[0x8825] = {GPS_LATITUDE_REF: "N"}
    return exif


def _pixels(dtype: type, shape: tuple[int, ...] = (5, 7, 3), seed: int = 0) -> np.ndarray:
    top = 65535 if dtype == np.uint16 else 255
    return np.random.default_rng(seed).integers(0, top + 1, shape).astype(dtype)


@pytest.mark.parametrize("suffix", ["png", "tif"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_round_trip_keeps_values_and_bit_depth(tmp_path, suffix, dtype):
    image = _pixels(dtype)
    path = save_image_with_metadata(image, tmp_path / f"a.{suffix}")
    rgb, mask, note, meta = read_image_with_metadata(path)
    assert rgb.dtype == dtype and np.array_equal(rgb, image)
    assert meta.bit_depth == (16 if dtype == np.uint16 else 8) and mask is None and note == ""
    assert meta.format == {"png": "PNG", "tif": "TIFF"}[suffix]
    assert np.array_equal(to_model_input(rgb), to_model_input(image))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"a.{suffix}"]  # atomic: no temporary left


def test_16bit_files_from_other_writers_are_read_at_16_bits(tmp_path):
    image = _pixels(np.uint16)
    cv2.imwrite(str(tmp_path / "cv.png"), image[..., ::-1])
    tifffile.imwrite(tmp_path / "tf.tif", image, photometric="rgb")
    for name in ("cv.png", "tf.tif"):
        rgb, _, _, meta = read_image_with_metadata(tmp_path / name)
        assert rgb.dtype == np.uint16 and np.array_equal(rgb, image) and meta.bit_depth == 16


def test_16bit_grey_and_alpha_follow_the_policies(tmp_path):
    grey = _pixels(np.uint16, (4, 6))
    path = save_image_with_metadata(grey, tmp_path / "grey.png")
    with pytest.raises(ValueError, match=r"grey\.png is a grey image"):
        read_image_with_metadata(path)
    rgb, _, note, meta = read_image_with_metadata(path, grey="convert")
    assert rgb.dtype == np.uint16 and np.array_equal(rgb, np.repeat(grey[..., None], 3, axis=2))
    assert "grey" in note and meta.bit_depth == 16

    rgba = _pixels(np.uint16, (4, 6, 4))
    rgba[..., 3] = 65535
    rgba[0, 0, 3] = 0
    for suffix in ("png", "tif"):
        path = save_image_with_metadata(rgba, tmp_path / f"rgba.{suffix}")
        with pytest.raises(ValueError, match=rf"rgba\.{suffix} has an alpha channel"):
            read_image_with_metadata(path)
        rgb, mask, note, _ = read_image_with_metadata(path, alpha="mask")
        assert rgb.dtype == np.uint16 and np.array_equal(rgb, rgba[..., :3])
        assert mask is not None and mask[0, 0] == 0 and (mask.ravel()[1:] == 255).all()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_pillow(orientation):
    stored = np.arange(3 * 5, dtype=np.uint8).reshape(3, 5)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.info["exif"] = exif.tobytes()
    assert np.array_equal(orient(stored, orientation), np.array(ImageOps.exif_transpose(image)))


def test_exif_orientation_applied_on_read_and_reset_on_write(tmp_path):
    stored = np.kron(_pixels(np.uint8, (2, 3, 3)), np.ones((8, 8, 1), np.uint8))  # flat 8x8 JPEG blocks
    Image.fromarray(stored).save(tmp_path / "cam.jpg", exif=_camera_exif(6), quality=100, subsampling=0)
    rgb, _, _, meta = read_image_with_metadata(tmp_path / "cam.jpg")
    assert rgb.shape == (24, 16, 3)  # turned upright (90 degrees clockwise)
    assert np.abs(rgb.astype(int) - np.rot90(stored, -1)).max() <= 2  # JPEG rounding only
    for suffix, dtype in OUTPUTS:
        out = save_image_with_metadata(rgb.astype(dtype) * (257 if dtype == np.uint16 else 1),
                                       tmp_path / f"out{np.dtype(dtype).itemsize}.{suffix}", meta)
        back, _, _, meta2 = read_image_with_metadata(out)
        assert back.shape == (24, 16, 3), out  # not turned a second time
        exif = exif_of(meta2)
        assert exif[0x0112] == 1 and exif[MAKE] == "Acme" and exif[DATETIME] == "2024:05:06 07:08:09", out
        assert exif.get_ifd(0x8769).get(DATETIME_ORIGINAL) == "2024:05:06 07:08:00", out
        assert exif.get_ifd(0x8825).get(GPS_LATITUDE_REF) == "N", out
        with Image.open(out) as im:  # what any other reader sees
            assert im.getexif()[0x0112] == 1, out


@pytest.mark.parametrize("suffix", ["png", "tif"])
def test_16bit_source_orientation_is_applied(tmp_path, suffix):
    stored = _pixels(np.uint16, (4, 6, 3))
    meta = ImageMetadata(exif=_camera_exif(6).tobytes())
    if suffix == "png":
        (tmp_path / "s.png").write_bytes(encode_png16(stored, meta))
    else:
        tifffile.imwrite(tmp_path / "s.tif", stored, photometric="rgb", extratags=[(274, "H", 1, 6, True)])
    rgb, _, _, read_meta = read_image_with_metadata(tmp_path / f"s.{suffix}")
    assert rgb.dtype == np.uint16 and np.array_equal(rgb, np.rot90(stored, -1))
    assert exif_of(read_meta)[0x0112] == 1


@pytest.mark.parametrize(("suffix", "dtype"), OUTPUTS)
def test_icc_and_panorama_xmp_survive(tmp_path, suffix, dtype):
    icc = _srgb()
    meta = ImageMetadata(icc_profile=icc, xmp=GPANO)
    path = save_image_with_metadata(_pixels(dtype), tmp_path / f"p.{suffix}", meta)
    _, _, _, back = read_image_with_metadata(path)
    assert back.icc_profile == icc
    assert back.xmp is not None and back.xmp.strip(b"\0 \n") == GPANO and back.has_panorama_tags
    with Image.open(path) as im:
        assert im.info.get("icc_profile") == icc


def test_metadata_carried_from_16bit_tiff_to_16bit_png_and_back(tmp_path):
    image = _pixels(np.uint16, (6, 9, 3))
    meta = ImageMetadata(exif=_camera_exif(1).tobytes(), icc_profile=_srgb(), xmp=GPANO)
    first = save_image_with_metadata(image, tmp_path / "a.tif", meta)
    rgb, _, _, meta1 = read_image_with_metadata(first)
    second = save_image_with_metadata(rgb, tmp_path / "b.png", meta1)
    rgb2, _, _, meta2 = read_image_with_metadata(second)
    assert np.array_equal(rgb2, image) and meta2.bit_depth == 16
    assert (meta2.icc_profile, meta2.xmp) == (meta.icc_profile, meta.xmp)
    assert exif_of(meta2)[MODEL] == "Pano 1"
    assert tifffile.TiffFile(first).pages[0].tags["ExifTag"].value["DateTimeOriginal"] == "2024:05:06 07:08:00"


def test_png16_chunks_are_well_formed(tmp_path):
    data = encode_png16(_pixels(np.uint16), ImageMetadata(exif=_camera_exif(1).tobytes(), icc_profile=_srgb(),
                                                        xmp=GPANO))
    pos, kinds = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + body), kind
        kinds.append(kind.decode())
        pos += 12 + length
    assert kinds[:4] == ["IHDR", "iCCP", "eXIf", "iTXt"] and kinds[-1] == "IEND"
    assert kinds.index("IDAT") > 3


def test_jpeg_quality_changes_the_file(tmp_path):
    image = _pixels(np.uint8, (64, 64, 3))
    low = save_image_with_metadata(image, tmp_path / "low.jpg", jpeg_quality=20)
    high = save_image_with_metadata(image, tmp_path / "high.jpg", jpeg_quality=95)
    assert low.stat().st_size < high.stat().st_size * 0.7


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_image_with_metadata(tmp_path / "missing.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match=r"cannot decode image .*broken\.png"):
        read_image_with_metadata(tmp_path / "broken.png")
    deep = _pixels(np.uint16)
    with pytest.raises(ValueError, match=r"deep\.jpg: JPEG holds 8 bits.*\.png or \.tif"):
        save_image_with_metadata(deep, tmp_path / "deep.jpg")
    for quality in (0, 101, 9.5, True):
        with pytest.raises(ValueError, match=r"q\.jpg: jpeg_quality must be a whole number from 1 to 100"):
            save_image_with_metadata(_pixels(np.uint8), tmp_path / "q.jpg", jpeg_quality=quality)
    with pytest.raises(ValueError, match=r"a\.gif: cannot write"):
        save_image_with_metadata(_pixels(np.uint8), tmp_path / "a.gif")
    with pytest.raises(ValueError, match=r"f\.png: expected a uint8 or uint16"):
        save_image_with_metadata(deep.astype(np.float32), tmp_path / "f.png")
    with pytest.raises(ValueError, match=r"rgba\.jpg: JPEG has no alpha"):
        save_image_with_metadata(_pixels(np.uint8, (2, 2, 4)), tmp_path / "rgba.jpg")
    save_image_with_metadata(deep, tmp_path / "kept.png")
    with pytest.raises(FileExistsError, match="kept.png"):
        save_image_with_metadata(deep, tmp_path / "kept.png", overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.png", "kept.png"]


def test_model_input_scales_by_bit_depth():
    assert to_model_input(np.array([[[0, 257, 65535]]], np.uint16)).tolist() == [[[0, 1, 255]]]
    dark = np.full((1, 1, 3), 200, np.uint16)  # a dark 16-bit image is not taken for an 8-bit one
    assert to_model_input(dark).tolist() == [[[1, 1, 1]]]
    image = _pixels(np.uint8)
    assert to_model_input(image) is image

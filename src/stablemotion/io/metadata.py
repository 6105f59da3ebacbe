"""Images with their bit depth and metadata: 16-bit PNG/TIFF stay 16-bit, EXIF/ICC/XMP carried over.

:func:`read_image_with_metadata` reads a file as :func:`~stablemotion.io.images.read_rgb` does
(same size guard, grey/alpha policies and messages, EXIF orientation applied) but keeps 16-bit
PNG/TIFF data as uint16 and returns what the file says about itself (:class:`ImageMetadata`).
:func:`save_image_with_metadata` writes an array back with that metadata: EXIF (Orientation
reset to 1: the pixels are stored upright), the ICC profile and the XMP packet (GPano panorama
tags included). :func:`to_model_input` is the 8-bit copy a model takes.

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> deep = np.full((2, 3, 3), 40000, np.uint16)
    >>> path = save_image_with_metadata(deep, folder / "deep.png")
    >>> rgb, mask, note, meta = read_image_with_metadata(path)
    >>> rgb.dtype, int(rgb.max()), meta.bit_depth, meta.format
    (dtype('uint16'), 40000, 16, 'PNG')
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from .images import DEFAULT_MAX_PIXELS, PathLike, _to_uint8, atomic_path, image_to_rgb, open_image

ORIENTATION = 0x0112
EXIF_IFD, GPS_IFD = 0x8769, 0x8825
XMP_TAG = 700
#: Output formats by suffix.
SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}
#: TIFF tags that describe a file's layout, not the photo: never carried to another file
#: (a TIFF source's "EXIF" is its whole first IFD). ICC (34675) and XMP (700) travel on their own.
_LAYOUT_TAGS = frozenset({
    254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 277, 278, 279, 280, 281, 284, 290, 291, 317,
    318, 319, 320, 322, 323, 324, 325, 330, 338, 339, 340, 341, 347, 512, 513, 514, 515, 517, 518,
    519, 520, 521, 529, 530, 531, 532, XMP_TAG, 33723, 34377, 34675, 37724, 50838, 50839,
})
#: First-IFD text tags a 16-bit TIFF output keeps (tifffile writes them as plain tags).
_TIFF_TEXT_TAGS = (270, 271, 272, 305, 306, 315, 33432)  # description, make, model, software, date, artist, (c)
_GREY16 = ("I;16", "I;16B", "I;16L", "I")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_XMP_ORIENTATION = re.compile(rb'(tiff:Orientation(?:="|>))[0-9]')


@dataclass
class ImageMetadata:
    """What an image file says about itself, ready to write into another file.

    Attributes:
        exif: EXIF as Pillow writes it (``b"Exif\\0\\0"`` + TIFF structure: first IFD, Exif and
            GPS sub-IFDs) with Orientation set to 1, since the pixels are kept upright; file
            layout tags of TIFF sources removed. ``None`` when the file has none.
        icc_profile: the embedded ICC colour profile, or ``None``.
        xmp: the XMP packet (UTF-8 XML; panorama viewers read its ``GPano:`` tags), with any
            ``tiff:Orientation`` set to 1, or ``None``.
        bit_depth: bits per channel of the pixels read: 16 for 16-bit PNG/TIFF, else 8.
        format: Pillow's name of the source format ("PNG", "JPEG", "TIFF", ...).

    Example:
        >>> ImageMetadata(xmp=b'<x:xmpmeta GPano:ProjectionType="equirectangular"/>').has_panorama_tags
        True
    """

    exif: bytes | None = None
    icc_profile: bytes | None = None
    xmp: bytes | None = None
    bit_depth: int = 8
    format: str = ""

    @property
    def has_panorama_tags(self) -> bool:
        """Whether the XMP packet holds Google's photo-sphere (``GPano``) tags."""
        return self.xmp is not None and b"GPano" in self.xmp


def read_image_with_metadata(
    path: PathLike,
    grey: str = "refuse",
    alpha: str = "refuse",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> tuple[np.ndarray, np.ndarray | None, str, ImageMetadata]:
    """Read an image file keeping its bit depth and metadata.

    The file goes through :func:`~stablemotion.io.images.open_image` (size guard before
    decoding, one frame, EXIF orientation applied) and
    :func:`~stablemotion.io.images.image_to_rgb` (grey/alpha policies, errors naming the file).
    16-bit grey PNG/TIFF comes from that decoding (Pillow keeps 16-bit grey); 16-bit colour
    (RGB, RGBA, grey+alpha) is decoded a second time by OpenCV, which keeps all 16 bits, turned
    upright and checked against Pillow's 8-bit reading (when the two disagree the 8-bit reading
    stands and the note says so). Metadata comes from the file's header; for PNG from the
    chunks before the image data (where writers put them).

    Returns:
        ``(rgb, mask, note, metadata)``: ``rgb`` (H, W, 3) upright, uint16 (0-65535) when
        ``metadata.bit_depth == 16``, else uint8; ``mask`` uint8 (H, W) (255 = content) or
        ``None``, and ``note`` as :func:`~stablemotion.io.images.image_to_rgb` gives them.

    Raises:
        FileNotFoundError: no such file. ValueError: undecodable, too large, grey/alpha
        refused (the message names the file).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "a.jpg"
        >>> exif = Image.Exif()
        >>> exif[0x0112], exif[0x010F] = 6, "Acme"  # rotate 90 degrees clockwise when shown
        >>> Image.new("RGB", (4, 2)).save(path, exif=exif)
        >>> rgb, mask, note, meta = read_image_with_metadata(path)
        >>> rgb.shape, rgb.dtype, meta.bit_depth, meta.format
        ((4, 2, 3), dtype('uint8'), 8, 'JPEG')
        >>> exif_of(meta)[0x0112], exif_of(meta)[0x010F]
        (1, 'Acme')
    """
    path = Path(path)
    with open_image(path, max_pixels=max_pixels) as im:
        rgb, mask, note = image_to_rgb(im, name=str(path), grey=grey, alpha=alpha)
        grey16 = np.array(im) if im.mode in _GREY16 else None  # Pillow holds 16-bit grey exactly
    with Image.open(path) as raw:  # the header again (decoded fine above): metadata, bit depth
        deep = raw.format in ("PNG", "TIFF") and raw.mode in ("RGB", "RGBA", "LA", *_GREY16) \
            and any(";16" in _rawmode(tile) for tile in raw.tile[:1])
        exif = _header_exif(raw)
        xmp = raw.info.get("xmp") or raw.info.get("XML:com.adobe.xmp")
        metadata = ImageMetadata(exif=_clean_exif(exif), icc_profile=raw.info.get("icc_profile") or None,
                                 xmp=_clean_xmp(xmp), format=raw.format or "")
        orientation = int(exif.get(ORIENTATION, 1) or 1)
    if deep:
        if grey16 is not None:
            rgb16 = np.repeat(grey16.astype(np.uint16)[..., None], 3, axis=2)
        else:
            rgb16 = _upright_16bit(_decode_16bit(path), orientation, rgb)
        if rgb16 is None:
            note = "; ".join(filter(None, [note, "16-bit colour read at 8 bits (OpenCV could not read it as Pillow did)"]))
        else:
            rgb, metadata.bit_depth = rgb16, 16
    return rgb, mask, note, metadata


def _upright_16bit(rgb16: np.ndarray | None, orientation: int, rgb8: np.ndarray) -> np.ndarray | None:
    """OpenCV's 16-bit pixels upright: with the EXIF orientation applied, or as OpenCV gave them
    (some versions turn TIFFs themselves), whichever agrees with Pillow's 8-bit reading
    ``rgb8`` (Pillow keeps each value's high byte; checked on a grid of at most ~65k pixels).
    ``None`` when neither does."""
    if rgb16 is None:
        return None
    step = max(1, int(np.sqrt(rgb8.shape[0] * rgb8.shape[1] / 65536)))
    for candidate in (orient(rgb16, orientation), rgb16):
        if candidate.shape == rgb8.shape:
            high = (candidate[::step, ::step] >> 8).astype(np.int16)
            if (np.abs(high - rgb8[::step, ::step]) <= 1).all():
                return np.ascontiguousarray(candidate)
    return None


def _header_exif(raw: Image.Image) -> Image.Exif:
    """The EXIF of a lazily opened file without decoding pixels. PNG: the eXIf chunk before the
    image data, where writers put it (Pillow's ``getexif()`` would decode the image to look
    past it, so a chunk after the data is not read)."""
    if raw.format != "PNG":
        return raw.getexif()
    exif = Image.Exif()
    if raw.info.get("exif"):
        exif.load(raw.info["exif"])
    return exif


def _rawmode(tile: Any) -> str:
    args = tile.args if hasattr(tile, "args") else tile[3]
    return str(args[0] if isinstance(args, tuple) else args)


def _decode_16bit(path: Path) -> np.ndarray | None:
    """uint16 RGB (H, W, 3) as OpenCV decodes it (orientation applied or not, depending on the
    format and version); ``None`` when OpenCV does not read the file as unsigned 16-bit."""
    import cv2

    data = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)  # ignores EXIF orientation
    if data is None or data.dtype != np.uint16:
        return None
    if data.ndim == 2:
        return np.repeat(data[..., None], 3, axis=2)
    if data.shape[2] == 1:
        return np.repeat(data, 3, axis=2)
    return np.ascontiguousarray(data[..., 2::-1])  # BGR(A) -> RGB, alpha dealt with by image_to_rgb


def orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an array (H, W[, C]) stored with EXIF ``orientation`` (1-8) upright, as
    ``PIL.ImageOps.exif_transpose`` does for images. Any dtype; a view when possible.

    Example:
        >>> orient(np.array([[1, 2], [3, 4]]), 6).tolist()  # stored turned left: turn it right
        [[3, 1], [4, 2]]
    """
    if orientation in (5, 6, 7, 8):
        array = array.swapaxes(0, 1)  # transpose, then flip as 2, 1, 4, 3 would
        orientation = {5: 1, 6: 2, 7: 3, 8: 4}[orientation]
    if orientation in (2, 3):
        array = array[:, ::-1]
    if orientation in (3, 4):
        array = array[::-1]
    return array


def _clean_exif(exif: Image.Exif) -> bytes | None:
    """EXIF to carry: first-IFD tags that describe the photo, the Exif and GPS sub-IFDs,
    Orientation 1; ``None`` when nothing is left."""
    clean = Image.Exif()
    for tag, value in exif.items():
        if tag not in _LAYOUT_TAGS and tag not in (EXIF_IFD, GPS_IFD):
            clean[tag] = value
    for tag in (EXIF_IFD, GPS_IFD):
        sub = exif.get_ifd(tag)
        if sub:
            clean[tag] = dict(sub)
    if not len(clean):
        return None
    clean[ORIENTATION] = 1
    return clean.tobytes()


def _clean_xmp(xmp: bytes | str | None) -> bytes | None:
    if not xmp:
        return None
    data = xmp.encode("utf-8") if isinstance(xmp, str) else bytes(xmp)
    return _XMP_ORIENTATION.sub(rb"\g<1>1", data)


def exif_of(metadata: ImageMetadata) -> Image.Exif:
    """The metadata's EXIF as a Pillow ``Exif`` mapping (tag -> value; empty when none), for
    reading or changing tags before saving (``metadata.exif = exif.tobytes()``).

    Example:
        >>> len(exif_of(ImageMetadata()))
        0
    """
    exif = Image.Exif()
    if metadata.exif:
        exif.load(metadata.exif)
    return exif


def to_model_input(rgb: np.ndarray) -> np.ndarray:
    """The uint8 (H, W, 3) copy of an image a model takes: uint8 as is, 16-bit scaled by bit
    depth (value / 65535 * 255, rounded) like every reader of the package.

    Example:
        >>> to_model_input(np.array([[[0, 32768, 65535]]], np.uint16)).tolist()
        [[[0, 128, 255]]]
    """
    if rgb.dtype == np.uint16:  # by the dtype: a dark 16-bit image stays dark
        return (rgb.astype(np.float32) * np.float32(255 / 65535)).round().astype(np.uint8)
    return _to_uint8(rgb)


def save_image_with_metadata(
    array: np.ndarray,
    path: PathLike,
    metadata: ImageMetadata | None = None,
    jpeg_quality: int = 95,
    overwrite: bool = True,
) -> Path:
    """Write an image with its metadata, atomically; the format comes from the suffix.

    ``array``: uint8 or uint16, (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA. uint8 goes
    PNG and JPEG (at ``jpeg_quality``) go through Pillow; uint16 PNG through OpenCV, with the
    metadata chunks iCCP / eXIf / iTXt added (:func:`encode_png16`). TIFF (8 or 16 bits) goes
    through tifffile (deflate level 1 with the horizontal predictor), with the ICC profile, XMP, the Exif and GPS sub-IFDs,
    Orientation 1 and the first IFD's text tags (description, make, model, software, date,
    artist, copyright); other first-IFD EXIF tags (a rating, Windows XP tags) are not written
    to TIFF. uint16 to JPEG is refused (JPEG holds 8 bits): save as .png/.tif or pass
    :func:`to_model_input`'s copy. ``metadata`` (see :class:`ImageMetadata`;
    ``bit_depth`` and ``format`` are not used here) may be ``None``: no metadata.

    Raises:
        ValueError: unknown suffix, wrong dtype/shape, uint16 to JPEG, RGBA to JPEG, or
        ``jpeg_quality`` outside 1-100 (the message names the file). FileExistsError: the
        file exists and ``overwrite`` is False.

    Example:
        >>> import tempfile
        >>> meta = ImageMetadata(xmp=b'<x:xmpmeta GPano:ProjectionType="equirectangular"/>')
        >>> path = save_image_with_metadata(np.zeros((2, 4, 3), np.uint8),
        ...                                 Path(tempfile.mkdtemp()) / "pano.jpg", meta, jpeg_quality=90)
        >>> read_image_with_metadata(path)[3].has_panorama_tags
        True
        >>> save_image_with_metadata(np.zeros((2, 4, 3), np.uint16), path)
        Traceback (most recent call last):
        ...
        ValueError: .../pano.jpg: JPEG holds 8 bits per channel, the image is 16-bit; ...
    """
    path = Path(path)
    fmt = SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: cannot write {path.suffix or 'a file without suffix'!r} with metadata; "
                         f"use one of {sorted(SAVE_FORMATS)}")
    if isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, (int, np.integer)) \
            or not 1 <= jpeg_quality <= 100:
        raise ValueError(f"{path}: jpeg_quality must be a whole number from 1 to 100, got {jpeg_quality!r}")
    array = np.asarray(array)
    if array.dtype not in (np.uint8, np.uint16) or not (
            array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"{path}: expected a uint8 or uint16 (H, W), (H, W, 3) or (H, W, 4) image, "
                         f"got {array.dtype} {array.shape}")
    if fmt == "JPEG" and array.dtype == np.uint16:
        raise ValueError(f"{path}: JPEG holds 8 bits per channel, the image is 16-bit; save it as .png or .tif "
                         "to keep 16 bits, or write to_model_input(image) for an 8-bit JPEG")
    if fmt == "JPEG" and array.ndim == 3 and array.shape[2] == 4:
        raise ValueError(f"{path}: JPEG has no alpha channel; save the RGBA image as .png or .tif")
    meta = metadata or ImageMetadata()
    with atomic_path(path, overwrite=overwrite) as tmp:
        if fmt == "TIFF":
            _save_tiff(array, tmp, meta)
        elif array.dtype == np.uint8:
            _save_8bit(array, tmp, fmt, meta, jpeg_quality)
        else:
            tmp.write_bytes(encode_png16(array, meta))
    return path


def _save_8bit(array: np.ndarray, tmp: Path, fmt: str, meta: ImageMetadata, quality: int) -> None:
    """uint8 PNG or JPEG through Pillow, metadata as its writers take it."""
    options: dict[str, Any] = {}
    if meta.icc_profile:
        options["icc_profile"] = meta.icc_profile
    if meta.exif:
        options["exif"] = meta.exif
    if fmt == "JPEG":
        options["quality"] = int(quality)
        if meta.xmp:
            options["xmp"] = meta.xmp  # Pillow >= 11
    elif meta.xmp:
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", meta.xmp.decode("utf-8", "replace"))
        options["pnginfo"] = info
    Image.fromarray(np.ascontiguousarray(array)).save(tmp, format=fmt, **options)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, 4-letter type, data, CRC-32 of type + data.

    Example:
        >>> png_chunk(b"IEND", b"").hex()
        '0000000049454e44ae426082'
    """
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png16(array: np.ndarray, metadata: ImageMetadata | None = None) -> bytes:
    """A 16-bit PNG file's bytes for a uint16 (H, W), (H, W, 3) RGB or (H, W, 4) RGBA array,
    with the metadata's ICC profile (iCCP), EXIF (eXIf) and XMP (iTXt ``XML:com.adobe.xmp``)
    chunks placed right after the header, where every reader looks for them.

    Example:
        >>> data = encode_png16(np.full((1, 2, 3), 513, np.uint16), ImageMetadata(xmp=b"<x/>"))
        >>> import io
        >>> Image.open(io.BytesIO(data)).info["xmp"]
        b'<x/>'
    """
    import cv2

    if array.dtype != np.uint16:
        raise ValueError(f"encode_png16 expects a uint16 array, got {array.dtype}")
    pixels = array if array.ndim == 2 else array[..., [2, 1, 0, 3][: array.shape[2]]]  # RGB(A) -> BGR(A)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(pixels))
    data = buf.tobytes()
    if not ok or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError(f"OpenCV could not encode a {array.shape} 16-bit PNG")
    meta = metadata or ImageMetadata()
    chunks = []
    if meta.icc_profile:  # profile name, NUL, compression method 0 (zlib)
        chunks.append(png_chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(meta.icc_profile)))
    if meta.exif:
        exif = meta.exif[6:] if meta.exif.startswith(b"Exif\0\0") else meta.exif
        chunks.append(png_chunk(b"eXIf", exif))
    if meta.xmp:  # keyword NUL, not compressed, method 0, no language NUL, no translation NUL
        chunks.append(png_chunk(b"iTXt", b"XML:com.adobe.xmp" + b"\0" * 5 + meta.xmp))
    header_end = 8 + 8 + 13 + 4  # signature, IHDR length+type, IHDR data, CRC
    return data[:header_end] + b"".join(chunks) + data[header_end:]


def _save_tiff(array: np.ndarray, tmp: Path, meta: ImageMetadata) -> None:
    """8- or 16-bit TIFF by tifffile; EXIF sub-IFDs appended afterwards (tifffile cannot write them)."""
    import tifffile

    exif = exif_of(meta)
    extratags: list[tuple[int, str, int, Any, bool]] = []
    for tag in _TIFF_TEXT_TAGS:
        value = exif.get(tag)
        if isinstance(value, str) and value.isascii() and value:
            extratags.append((tag, "s", 0, value, True))
    if meta.exif:
        extratags.append((ORIENTATION, "H", 1, 1, True))
    subs = {tag: dict(exif.get_ifd(tag)) for tag in (EXIF_IFD, GPS_IFD) if exif.get_ifd(tag)}
    # tifffile refuses to write the sub-IFD pointer tags: placeholders one code below (same
    # place in the sorted IFD; no tag lies between), turned into the real tags afterwards
    extratags += [(tag - 1, "I", 1, 0, True) for tag in subs]
    if meta.xmp:
        extratags.append((XMP_TAG, "B", len(meta.xmp), meta.xmp, True))
    colour = array.ndim == 3
    tifffile.imwrite(
        tmp, array, photometric="rgb" if colour else "minisblack", planarconfig="contig" if colour else None,
        extrasamples=[2] if colour and array.shape[2] == 4 else None,  # 2: unassociated alpha
        iccprofile=meta.icc_profile or None, metadata=None,
        software=False, compression="zlib", predictor=True,
        compressionargs={"level": 1},  # fast, like OpenCV's PNG default
        byteorder="<", bigtiff=False, extratags=extratags,
    )
    if subs:
        _append_sub_ifds(tmp, subs)


def _append_sub_ifds(path: Path, subs: dict[int, dict[int, Any]]) -> None:
    """Append the EXIF/GPS sub-IFDs (serialised by Pillow at the file's end) to a little-endian
    classic TIFF and point the first IFD's placeholder entries at them."""
    with open(path, "r+b") as f:
        head = f.read(8)
        if head[:4] != b"II*\0":
            raise ValueError(f"{path}: expected a little-endian classic TIFF from tifffile")
        ifd0 = struct.unpack("<I", head[4:])[0]
        f.seek(ifd0)
        count = struct.unpack("<H", f.read(2))[0]
        entries = f.read(12 * count)
        start = f.seek(0, 2)
        start += start % 2  # IFDs start on a word boundary
        holder = Image.Exif()
        holder.endian = "<"  # the file's byte order (a new Exif writes big-endian)
        for tag, sub in subs.items():
            holder[tag] = sub
        blob = holder.tobytes(start)[6 + 8:]  # drop "Exif\0\0" and the TIFF header: one IFD at `start`
        pointers = _ifd_values(blob)
        f.seek(start)
        f.write(blob)
        for i in range(count):
            tag = struct.unpack("<H", entries[12 * i: 12 * i + 2])[0] + 1
            if tag in pointers:  # placeholder (tag - 1, LONG, 1, 0) -> (tag, LONG, 1, offset)
                f.seek(ifd0 + 2 + 12 * i)
                f.write(struct.pack("<HHII", tag, 4, 1, pointers[tag]))


def _ifd_values(ifd: bytes) -> dict[int, int]:
    """tag -> 4-byte value field (as little-endian unsigned) of each entry of a classic IFD."""
    count = struct.unpack("<H", ifd[:2])[0]
    out = {}
    for i in range(count):
        tag, _typ, _n, value = struct.unpack("<HHII", ifd[2 + 12 * i: 14 + 12 * i])
        out[tag] = value
    return out


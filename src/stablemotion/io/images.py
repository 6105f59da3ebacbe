"""Small file helpers shared by every module: atomic writes and image reading."""

from __future__ import annotations

import contextlib
import contextvars
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
#: Image files the readers cannot take, with what to do instead (folder listings name them
#: when they skip them, instead of passing over them in silence).
UNSUPPORTED_IMAGE_TYPES = {
    **dict.fromkeys((".heic", ".heif"), "HEIC is not supported: convert to JPEG/PNG"),
    ".jxl": "JPEG XL is not supported: convert to JPEG/PNG",
    ".svg": "a vector image: render it to PNG",
    **dict.fromkeys((".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf", ".raw"),
                    "camera RAW is not supported: develop it to JPEG/PNG/TIFF"),
}
#: Side files ``stablemotion rectify`` writes next to ``NAME.png`` (``NAME_flow.png``, ...);
#: ``stablemotion score`` ignores them.
SIDE_FILE_SUFFIXES = ("_flow", "_mask", "_uncertainty")

PathLike = str | os.PathLike


@contextlib.contextmanager
def atomic_path(path: PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    A crash or exception while writing leaves any existing ``path`` untouched and
    removes the partial temporary file. The temporary name keeps ``path``'s suffix so
    libraries that pick a format from the extension (PIL, OpenCV, numpy) still work.

    Example:
        >>> folder = Path(tempfile.mkdtemp())
        >>> with atomic_path(folder / "a.txt") as tmp:
        ...     _ = tmp.write_text("done")
        >>> (folder / "a.txt").read_text(), sorted(p.name for p in folder.iterdir())
        ('done', ['a.txt'])
    """
    path = Path(path)
    if not overwrite and (path.exists() or path.is_symlink()):  # a dangling link counts as existing
        raise FileExistsError(f"{path} already exists; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600 files: give the result the usual umask-based mode
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_atomic(path: PathLike, data: bytes | str, overwrite: bool = True) -> Path:
    """Write ``data`` (``str`` as UTF-8) to ``path`` atomically (see :func:`atomic_path`).

    The data goes into a new temporary file created exclusively (never through a link) and
    is renamed onto ``path``: a symbolic link at ``path`` is replaced by the file, never
    written through, so the file a link points to is left as it was.

    Example:
        >>> path = write_atomic(Path(tempfile.mkdtemp()) / "notes.txt", "hello")
        >>> path.read_text()
        'hello'
    """
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def umask_modes(folder: PathLike) -> Iterator[Path]:
    """Write into ``folder`` inside the block; on success every file the block created or
    rewrote under it gets the mode a plain ``open()`` gives: ``0o666 & ~umask`` (0644 under
    umask 022). Files that were there before and were not touched keep their mode.

    For folders written by libraries that save through private temporary files:
    safetensors (used by diffusers' ``save_pretrained`` and accelerate's ``save_state``)
    leaves its files 0600, so without this the group, a web server or a second user could
    not read a trained model. Folders and links are left as they are.
    """
    folder = Path(folder)

    def snapshot() -> dict[Path, tuple[int, int, int]]:
        if not folder.is_dir():
            return {}
        out = {}
        for p in folder.rglob("*"):
            if p.is_file() and not p.is_symlink():
                st = p.stat()
                out[p] = (st.st_ino, st.st_mtime_ns, st.st_size)
        return out

    before = snapshot()
    yield folder
    mode = 0o666 & ~_umask()
    for p, key in snapshot().items():
        if before.get(p) != key:
            os.chmod(p, mode)


def save_image(image: np.ndarray | Image.Image, path: PathLike, overwrite: bool = True) -> Path:
    """Write an image (PIL or uint8 array (H, W[, C])) atomically; format from the extension.

    Example:
        >>> path = save_image(np.zeros((2, 3, 3), np.uint8), Path(tempfile.mkdtemp()) / "black.png")
        >>> load_image(path).shape
        (2, 3, 3)
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"save_image expects a uint8 array, got {image.dtype} for {path}")
        image = Image.fromarray(image)
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        fmt = Image.registered_extensions().get(path.suffix.lower())
        if fmt is None:
            raise ValueError(f"cannot tell the image format of {path}: use one of {IMAGE_EXTENSIONS}")
        image.save(tmp, format=fmt)
    return path


#: Largest image the readers decode by default, in pixels (checked from the file header
#: before decoding; PIL's own bomb guard stops far later, after allocating).
DEFAULT_MAX_PIXELS = 100_000_000
GREY_POLICIES = ("refuse", "convert")
ALPHA_POLICIES = ("refuse", "drop", "mask")


#: What the too-large message suggests; the command line sets it per command (a command
#: with ``--max-pixels`` names the option, one without names none): :func:`size_limit_hint`.
_SIZE_HINT: contextvars.ContextVar[str] = contextvars.ContextVar(
    "size_hint", default="pass a larger max_pixels (None: no limit) if the file is genuine")


@contextlib.contextmanager
def size_limit_hint(hint: str) -> Iterator[None]:
    """Inside the block, :func:`open_image`'s too-large message ends with ``hint`` (what the
    caller can do: ``"raise it with --max-pixels if the file is genuine"``)."""
    token = _SIZE_HINT.set(hint)
    try:
        yield
    finally:
        _SIZE_HINT.reset(token)


def open_image(path: PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS, name: str | None = None) -> Image.Image:
    """Open and decode an image file, EXIF orientation applied (as viewers show it).

    The size is checked from the header before any pixel is decoded: a file declaring more
    than ``max_pixels`` pixels (``None``: no limit) is refused, so a 69-byte PNG that
    declares 20000x20000 costs nothing. The message ends with what to do about it
    (:func:`size_limit_hint`). A file holding several frames is refused
    (:func:`check_single_frame`).

    Raises:
        FileNotFoundError: no such file. ValueError: undecodable, truncated or too large
        (the message names the file).

    Example:
        >>> path = save_image(np.zeros((30, 40, 3), np.uint8), Path(tempfile.mkdtemp()) / "a.png")
        >>> open_image(path).size  # (W, H)
        (40, 30)
        >>> open_image(path, max_pixels=1000)
        Traceback (most recent call last):
        ...
        ValueError: ... is 40x30 px (0 megapixels), more than the limit of 0 megapixels; ...
    """
    path = Path(path)
    label = name or str(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with warnings_as_errors():
            im = Image.open(path)
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:
                im.close()
                raise ValueError(
                    f"{label} is {w}x{h} px ({w * h / 1e6:.0f} megapixels), more than the limit of "
                    f"{max_pixels / 1e6:.0f} megapixels; {_SIZE_HINT.get()}"
                )
            check_single_frame(im, label)
            im.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, Image.DecompressionBombWarning,
            SyntaxError) as exc:
        raise ValueError(f"cannot decode image {label}: {exc}") from None
    return ImageOps.exif_transpose(im) or im


def check_single_frame(image: Image.Image, label: str) -> None:
    """Refuse a file holding several images (an animated GIF/WebP, a multi-page TIFF).

    The CLI and the web app apply the same rule: rectifying "the first frame" of an
    animation silently is never what was meant. Raises ``ValueError`` naming ``label`` and
    the frame count; one-frame GIFs and TIFFs pass.

    Example:
        >>> from PIL import Image
        >>> check_single_frame(Image.new("RGB", (4, 4)), "a.png")
    """
    frames = int(getattr(image, "n_frames", 1) or 1)
    if frames > 1:
        raise ValueError(f"{label} holds {frames} frames ({image.format} animation or multi-page file); "
                         "save the frame to rectify as its own image (PNG or JPEG)")


@contextlib.contextmanager
def warnings_as_errors() -> Iterator[None]:
    """PIL's decompression-bomb warning becomes an error (we check sizes ourselves first)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # our own limit applies; PIL's would raise mid-decode
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Integer/float PIL data (16-bit, 32-bit int, float) -> uint8 by its bit depth, not by clipping."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        top = 1.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else 255.0
        return (np.clip(np.nan_to_num(arr), 0, top) / top * 255.0).round().astype(np.uint8)
    top = 65535 if arr.max(initial=0) > 255 else 255
    return (arr.astype(np.float64) / top * 255.0).round().clip(0, 255).astype(np.uint8)


def image_to_rgb(
    image: Image.Image, name: str = "image", grey: str = "refuse", alpha: str = "refuse"
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The one rule that turns a decoded image into the RGB array the models take.

    * RGB: as is. Palette: expanded (to RGBA when it has a transparent colour). CMYK and
      YCbCr: converted to RGB. 16-bit and float data: scaled by bit depth to 8 bits.
    * Grey (L, I;16, 1, ...): ``grey="refuse"`` raises a ``ValueError`` saying how to convert
      (``--grey convert`` on the command line); ``"convert"`` replicates the channel.
    * An alpha channel that is fully opaque is dropped. A real one (some transparent pixel):
      ``alpha="refuse"`` raises; ``"drop"`` ignores it; ``"mask"`` returns it as the mask
      (uint8, 255 = valid content: stitched panoramas often mark their empty area this way).

    Returns:
        ``(rgb uint8 (H, W, 3), mask uint8 (H, W) or None, note)``; the note says what was
        converted ("" when nothing was).

    Example:
        >>> rgb, mask, note = image_to_rgb(Image.new("L", (3, 2)), grey="convert")
        >>> rgb.shape, mask, note
        ((2, 3, 3), None, 'grey (L) converted to RGB')
    """
    if grey not in GREY_POLICIES:
        raise ValueError(f"grey must be one of {GREY_POLICIES}, got {grey!r}")
    if alpha not in ALPHA_POLICIES:
        raise ValueError(f"alpha must be one of {ALPHA_POLICIES}, got {alpha!r}")
    notes = []
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    elif mode == "PA":
        image = image.convert("RGBA")
        mode = "RGBA"
    mask = None
    a = None
    if mode in ("RGBA", "LA", "RGBa", "La"):
        a = _to_uint8(np.array(image.getchannel("A")))
        image = image.convert("RGB" if mode.startswith("RGB") else "L")
        mode = image.mode
    if mode in ("L", "1", "I", "I;16", "I;16B", "I;16L", "F"):
        if grey == "refuse":
            raise ValueError(
                f"{name} is a grey image ({mode}); the models take RGB: convert it (command line: --grey convert; "
                "Python: image.convert('RGB'))"
            )
        rgb = np.repeat(_to_uint8(np.array(image))[..., None], 3, axis=2)
        notes.append(f"grey ({mode}) converted to RGB")
    elif mode == "RGB":
        rgb = np.array(image, dtype=np.uint8)
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        rgb = np.array(image.convert("RGB"), dtype=np.uint8)
        notes.append(f"{mode} converted to RGB")
    else:  # I;16 RGB variants and other rare modes: scale each band by bit depth
        bands = [_to_uint8(np.array(image.getchannel(i))) for i in range(min(3, len(image.getbands())))]
        if len(bands) != 3:
            raise ValueError(f"{name} has the unsupported image mode {mode}; convert it to RGB first")
        rgb = np.stack(bands, axis=-1)
        notes.append(f"{mode} converted to 8-bit RGB")
    if a is not None:
        if (a == 255).all():
            notes.append("fully opaque alpha channel dropped")
        elif alpha == "mask":
            mask = np.where(a >= 128, np.uint8(255), np.uint8(0))
            notes.append("alpha channel used as the mask")
        elif alpha == "drop":
            notes.append("alpha channel dropped")
        else:
            raise ValueError(
                f"{name} has an alpha channel with transparent pixels: use it as the SIR mask (command line: "
                "--mask alpha) or drop it (--alpha drop; Python: image.convert('RGB'))"
            )
    return rgb, mask, "; ".join(notes)


def read_rgb(
    path: PathLike,
    grey: str = "refuse",
    alpha: str = "refuse",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Read an image file for a model: :func:`open_image` then :func:`image_to_rgb`
    (errors name the file). Returns ``(rgb uint8 (H, W, 3), alpha mask or None, note)``.

    Example:
        >>> path = save_image(np.full((2, 2, 3), 9, np.uint8), Path(tempfile.mkdtemp()) / "a.png")
        >>> rgb, mask, note = read_rgb(path)
        >>> rgb[0, 0].tolist(), mask, note
        ([9, 9, 9], None, '')
    """
    with open_image(path, max_pixels=max_pixels) as im:
        return image_to_rgb(im, name=str(path), grey=grey, alpha=alpha)


def load_image(path: PathLike, mode: str = "RGB", max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as a uint8 array in ``mode``: "RGB" (H, W, 3), "L" (H, W), or
    "mask": a mask as read -- grey files stay (H, W), others become RGB (H, W, 3).

    Lenient (datasets, ground truth, results): any mode is converted, grey replicated, alpha
    dropped, 16-bit scaled; EXIF orientation applied. Models' inputs go through
    :func:`read_rgb`, which refuses what it cannot convert without a decision.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file when it is missing, cannot
    be decoded or is larger than ``max_pixels``.

    Example:
        >>> path = save_image(np.full((2, 3, 3), 60, np.uint8), Path(tempfile.mkdtemp()) / "a.png")
        >>> load_image(path, "L").shape, load_image(path, "mask").shape
        ((2, 3), (2, 3, 3))
    """
    with open_image(path, max_pixels=max_pixels) as im:
        if mode == "mask":
            return mask_array(im)
        if mode == "L":
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                return _to_uint8(np.array(im))
            return np.array(im.convert("L"))
        if mode == "RGB":
            return image_to_rgb(im, name=str(path), grey="convert", alpha="drop")[0]
        return np.array(im.convert(mode))


def mask_array(image: Image.Image) -> np.ndarray:
    """A decoded mask image as read: grey (L, 1, 16-bit) stays uint8 (H, W), anything else uint8 RGB (H, W, 3).

    Example:
        >>> mask_array(Image.new("1", (3, 2), 1)).tolist()
        [[255, 255, 255], [255, 255, 255]]
    """
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        return _to_uint8(np.array(image))
    if image.mode in ("L", "1", "LA", "La"):
        return np.array(image.convert("L"))
    return np.array(image.convert("RGB"))


def list_images(folder: PathLike) -> dict[str, Path]:
    """Map file stem -> path for the image files directly inside ``folder``.

    Raises ``ValueError`` when two files share a stem (e.g. ``a.png`` and ``a.jpg``),
    since matching by stem would then be ambiguous. :func:`scan_images` also says what
    was passed over.

    Example:
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = save_image(np.zeros((2, 2, 3), np.uint8), folder / "a.png")
        >>> _ = write_atomic(folder / "notes.txt", "not an image")
        >>> {stem: p.name for stem, p in list_images(folder).items()}
        {'a': 'a.png'}
        >>> scan_images(folder)[1]
        [('notes.txt', 'not an image file')]
    """
    return scan_images(folder)[0]


def scan_images(folder: PathLike) -> tuple[dict[str, Path], list[tuple[str, str]]]:
    """:func:`list_images` and what it passed over: ``(stem -> path, [(name, reason)])``.

    Skipped are hidden files (``.name``: also the temporary files of an interrupted write),
    image types the readers cannot take (:data:`UNSUPPORTED_IMAGE_TYPES`, with what to do),
    sub-folders (not searched) and other files (``"not an image file"``). Sorted by name.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    found: dict[str, Path] = {}
    skipped: list[tuple[str, str]] = []
    for p in sorted(folder.iterdir()):
        suffix = p.suffix.lower()
        if p.name.startswith("."):
            skipped.append((p.name, "hidden file" if not p.is_dir() else "hidden folder"))
        elif p.is_dir():
            skipped.append((p.name, "folder (sub-folders are not searched)"))
        elif not p.is_file():
            skipped.append((p.name, "not a regular file"))
        elif suffix in UNSUPPORTED_IMAGE_TYPES:
            skipped.append((p.name, UNSUPPORTED_IMAGE_TYPES[suffix]))
        elif suffix not in IMAGE_EXTENSIONS:
            skipped.append((p.name, "not an image file"))
        else:
            if p.stem in found:
                raise ValueError(f"two images share the stem {p.stem!r} in {folder}: {found[p.stem].name}, {p.name}")
            found[p.stem] = p
    return found, skipped


def describe_skipped(skipped: list[tuple[str, str]], limit: int = 8) -> str:
    """One line for :func:`scan_images`' skipped files: the first ``limit`` named with their
    reason, plain non-image files as a count by extension.

    Example:
        >>> describe_skipped([("a.heic", "HEIC is not supported: convert to JPEG/PNG"),
        ...                   ("notes.txt", "not an image file")])
        'skipped 2 files: a.heic (HEIC is not supported: convert to JPEG/PNG); 1 non-image file (.txt)'
    """
    named = [(n, why) for n, why in skipped if why != "not an image file"]
    other = [n for n, why in skipped if why == "not an image file"]
    parts = [f"{n} ({why})" for n, why in named[:limit]]
    if len(named) > limit:
        parts.append(f"{len(named) - limit} more")
    if other:
        exts = sorted({Path(n).suffix.lower() or "no extension" for n in other})
        parts.append(f"{len(other)} non-image file{'s' if len(other) != 1 else ''} ({', '.join(exts[:6])}"
                     f"{', ...' if len(exts) > 6 else ''})")
    return f"skipped {len(skipped)} file{'s' if len(skipped) != 1 else ''}: " + "; ".join(parts)


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, C) -> float32 (C, H, W) in [-1, 1].

    Example:
        >>> image_to_tensor(np.array([[[0, 255, 51]]], np.uint8)).flatten().tolist()
        [-1.0, 1.0, -0.6000000238418579]
    """
    import torch  # here: the command line reads files through this module without torch

    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"expected a uint8 (H, W, C) image, got {image.dtype} {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(127.5).sub(1.0)


def tensor_to_image(tensor: torch.Tensor) -> np.ndarray:
    """float (C, H, W) in [-1, 1] -> uint8 (H, W, C) (rounded, clipped); inverts :func:`image_to_tensor`.

    Example:
        >>> image = np.array([[[0, 255, 51]]], np.uint8)
        >>> tensor_to_image(image_to_tensor(image)).tolist()
        [[[0, 255, 51]]]
    """
    import torch
    if tensor.ndim != 3:
        raise ValueError(f"expected a (C, H, W) tensor, got {tuple(tensor.shape)}")
    arr = ((tensor.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return arr.permute(1, 2, 0).numpy()

"""Small file helpers shared by every module: atomic writes and image reading."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

PathLike = str | os.PathLike


@contextlib.contextmanager
def atomic_path(path: PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    A crash or exception while writing leaves any existing ``path`` untouched and
    removes the partial temporary file. The temporary name keeps ``path``'s suffix so
    libraries that pick a format from the extension (PIL, OpenCV, numpy) still work.
    """
    path = Path(path)
    if not overwrite and path.exists():
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
    """Write an image (PIL or uint8 array (H, W[, C])) atomically; format from the extension."""
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


def load_image(path: PathLike, mode: str = "RGB") -> np.ndarray:
    """Read an image file as a uint8 array in ``mode``: "RGB" (H, W, 3), "L" (H, W), or
    "mask": a mask as read -- grey files stay (H, W), others become RGB (H, W, 3).

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file when it is missing or
    cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if mode == "mask":
                return mask_array(im)
            return np.array(im.convert(mode))
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot decode image {path}: {exc}") from exc


def mask_array(image: Image.Image) -> np.ndarray:
    """A decoded mask image as read: grey (L, 1, 16-bit) stays uint8 (H, W), anything else uint8 RGB (H, W, 3)."""
    if image.mode in ("L", "1", "I", "I;16", "F", "LA"):
        return np.array(image.convert("L"))
    return np.array(image.convert("RGB"))


def list_images(folder: PathLike) -> dict[str, Path]:
    """Map file stem -> path for the image files directly inside ``folder``.

    Raises ``ValueError`` when two files share a stem (e.g. ``a.png`` and ``a.jpg``),
    since matching by stem would then be ambiguous.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."):
            if p.stem in found:
                raise ValueError(f"two images share the stem {p.stem!r} in {folder}: {found[p.stem].name}, {p.name}")
            found[p.stem] = p
    return found


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, C) -> float32 (C, H, W) in [-1, 1]."""
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"expected a uint8 (H, W, C) image, got {image.dtype} {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(127.5).sub(1.0)


def tensor_to_image(tensor: torch.Tensor) -> np.ndarray:
    """float (C, H, W) in [-1, 1] -> uint8 (H, W, C) (rounded, clipped)."""
    if tensor.ndim != 3:
        raise ValueError(f"expected a (C, H, W) tensor, got {tuple(tensor.shape)}")
    arr = ((tensor.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return arr.permute(1, 2, 0).numpy()

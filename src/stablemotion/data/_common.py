"""Shared pieces of the datasets: sample type, array conversions, file-header readers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..core.image_processing import mask_valid
from ..io.images import image_to_tensor

Sample = dict[str, Any]
Transform = Callable[[Sample], Sample]

#: Keys of a sample that are not images (never resized as pictures, never thresholded).
IMAGE_KEYS_EXCLUDED = frozenset({"name", "flow"})
_MAX_LISTED = 10


def _listing(problems: Sequence[str], what: str) -> str:
    shown = "\n  ".join(problems[:_MAX_LISTED])
    more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    return f"{what} ({len(problems)} problem{'s' if len(problems) != 1 else ''}):\n  {shown}{more}"


# --------------------------------------------------------------------------- conversions
def mask_to_tensor(mask: np.ndarray) -> torch.Tensor:
    """uint8 mask (H, W) or (H, W, C) (white = content) -> float32 (1, H, W) in {-1, 1}, by the
    package's one mask rule (:func:`stablemotion.core.image_processing.mask_valid`)."""
    return torch.from_numpy(mask_valid(mask)).float().mul(2.0).sub(1.0).unsqueeze(0)


def array_to_image_tensor(array: np.ndarray, what: str = "image") -> torch.Tensor:
    """An image array (H, W, 3) or (H, W) -> float32 (3, H, W) in [-1, 1].

    uint8 arrays are read as [0, 255]. Float arrays are read as [0, 255] when their
    maximum exceeds 1.5, as [-1, 1] when their minimum is below 0, else as [0, 1].
    """
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise ValueError(f"{what} must be an image (H, W, 3), got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.dtype == np.uint8:
        return image_to_tensor(arr)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{what} must be uint8 or float, got {arr.dtype}")
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1)
    if float(t.max()) > 1.5:
        return t.div(127.5).sub(1.0).clamp(-1, 1)
    if float(t.min()) < 0:
        return t.clamp(-1, 1)
    return t.mul(2.0).sub(1.0)


def _flow_tensor(flow: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float32)).permute(2, 0, 1).contiguous()


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file from its header."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except OSError as exc:
        raise ValueError(f"cannot read image header of {path}: {exc}") from exc
    return h, w


def _npy_shape(path: Path) -> tuple[int, ...]:
    try:
        return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
    except (ValueError, OSError) as exc:
        raise ValueError(f"cannot read {path} as a .npy array: {exc}") from exc


def _flow_hw(shape: tuple[int, ...]) -> tuple[int, int] | None:
    if len(shape) == 3 and shape[2] == 2:
        return shape[0], shape[1]
    if len(shape) == 3 and shape[0] == 2:
        return shape[1], shape[2]
    return None




class SampleDataset(Dataset):
    """Base of the datasets: ``load(index)`` reads a sample dict, ``transform`` (if any) is
    applied by ``__getitem__``, which also rejects out-of-range indices by name."""

    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        sample = self.load(index)
        return self.transform(sample) if self.transform is not None else sample

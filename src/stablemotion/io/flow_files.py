"""Flow files: Middlebury ``.flo``, numpy ``.npy`` and 16-bit KITTI-style ``.png``, written atomically.

On disk and in numpy a flow is ``(H, W, 2)`` float32 in **pixels**, channel 0 = ``u`` (x, to
the right), channel 1 = ``v`` (y, downwards); a ``(2, H, W)`` / ``(1, 2, H, W)`` tensor is
accepted wherever a flow is written. :func:`read_flow` / :func:`write_flow` choose the format
by the file's extension.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import torch

from .images import PathLike, atomic_path

__all__ = [
    "FLO_MAGIC",
    "to_hw2_array",
    "read_flow",
    "write_flow",
    "read_flo",
    "write_flo",
    "read_flow_png",
    "write_flow_png",
]

#: Magic number at the start of a Middlebury ``.flo`` file (float32).
FLO_MAGIC = 202021.25

_KITTI_SCALE = 64.0
_KITTI_OFFSET = 2**15


def to_hw2_array(flow: np.ndarray | torch.Tensor) -> np.ndarray:
    """A (2, H, W) / (1, 2, H, W) tensor -> its (H, W, 2) numpy array; arrays pass through.

    Example:
        >>> to_hw2_array(torch.zeros(1, 2, 3, 4)).shape
        (3, 4, 2)
    """
    if isinstance(flow, torch.Tensor):
        flow = flow.detach().cpu().float().numpy()
        if flow.ndim == 4 and flow.shape[0] == 1:
            flow = flow[0]
        if flow.ndim == 3 and flow.shape[0] == 2:
            flow = flow.transpose(1, 2, 0)
    return np.asarray(flow)


def _as_hw2(flow: np.ndarray | torch.Tensor, path: PathLike) -> np.ndarray:
    flow = to_hw2_array(flow)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"cannot write {path}: flow must be (H, W, 2) array or (2, H, W) tensor, got {flow.shape}")
    if not np.isfinite(flow).all():
        raise ValueError(f"cannot write {path}: flow contains NaN or infinite values")
    return np.ascontiguousarray(flow, dtype=np.float32)


def _streamed(flow: object) -> bool:
    """A flow that hands out rows (``flow.rows(r0, r1)``, e.g. a full-size
    :class:`~stablemotion.core.large_image.StripFlow`): written without materialising it."""
    return not isinstance(flow, (np.ndarray, torch.Tensor)) and callable(getattr(flow, "rows", None))


def _write_rows(f: object, flow: object, path: PathLike, dtype: str = "<f4", rows_per_chunk: int = 256) -> None:
    """Write a row-streamed (H, W, 2) flow's values row-major to the open binary file ``f``, checked finite."""
    height = int(flow.shape[0])  # type: ignore[attr-defined]
    for r0 in range(0, height, rows_per_chunk):
        part = flow.rows(r0, min(height, r0 + rows_per_chunk))  # type: ignore[attr-defined]
        if not np.isfinite(part).all():
            raise ValueError(f"cannot write {path}: flow contains NaN or infinite values")
        f.write(np.ascontiguousarray(part, dtype=dtype).tobytes())  # type: ignore[attr-defined]


def write_flo(path: PathLike, flow: np.ndarray | torch.Tensor) -> Path:
    """Write a Middlebury ``.flo`` file atomically (magic 202021.25, width, height, float32 u/v).

    Args:
        path: the file to write.
        flow: (H, W, 2) array or (2, H, W) tensor, pixels, finite.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "f.flo"
        >>> _ = write_flo(path, np.full((2, 3, 2), 1.5, np.float32))
        >>> path.stat().st_size  # 12-byte header + 2 * 3 * 2 float32
        60
        >>> read_flo(path)[1, 2].tolist()
        [1.5, 1.5]
    """
    if _streamed(flow):
        h, w = int(flow.shape[0]), int(flow.shape[1])  # type: ignore[union-attr]
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(struct.pack("<fii", FLO_MAGIC, w, h))
            _write_rows(f, flow, path)
        return Path(path)
    arr = _as_hw2(flow, path)
    h, w, _ = arr.shape
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<fii", FLO_MAGIC, w, h))
        f.write(arr.astype("<f4").tobytes())
    return Path(path)


def read_flo(path: PathLike) -> np.ndarray:
    """Read a Middlebury ``.flo`` file -> (H, W, 2) float32, pixels (see :func:`write_flo`).

    Raises ``FileNotFoundError`` for a missing file, ``ValueError`` for a wrong magic
    number, size or length.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"flow file not found: {path}")
    data = path.read_bytes()
    if len(data) < 12:
        raise ValueError(f"{path} is too short to be a .flo file ({len(data)} bytes)")
    magic, w, h = struct.unpack("<fii", data[:12])
    if magic != FLO_MAGIC:
        raise ValueError(f"{path} is not a .flo file: magic number {magic!r}, expected {FLO_MAGIC}")
    if w <= 0 or h <= 0:
        raise ValueError(f"{path} has an invalid size {w}x{h}")
    expected = 12 + 8 * w * h
    if len(data) != expected:
        raise ValueError(f"{path} is truncated or padded: {len(data)} bytes, expected {expected} for {w}x{h}")
    return np.frombuffer(data, dtype="<f4", offset=12).reshape(h, w, 2).astype(np.float32)


def write_flow_png(path: PathLike, flow: np.ndarray | torch.Tensor, valid: np.ndarray | None = None) -> Path:
    """Write a 16-bit KITTI-style flow PNG: R,G = flow * 64 + 2**15, B = validity.

    Values must lie within +-511.98 px (the format's range) and are stored in steps of
    1/64 px; ``valid`` ((H, W), non-zero = valid) defaults to all ones.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "f.png"
        >>> _ = write_flow_png(path, np.full((2, 3, 2), -2.25, np.float32), valid=np.eye(2, 3))
        >>> flow, valid = read_flow_png(path)
        >>> flow[0, 0].tolist(), valid.tolist()
        ([-2.25, -2.25], [[True, False, False], [False, True, False]])
    """
    arr = _as_hw2(flow, path)
    limit = (2**16 - 1 - _KITTI_OFFSET) / _KITTI_SCALE
    if np.abs(arr).max(initial=0.0) > limit:
        raise ValueError(f"cannot write {path}: |flow| up to {np.abs(arr).max():.1f} px exceeds the 16-bit PNG range {limit:.2f}")
    enc = np.round(arr * _KITTI_SCALE + _KITTI_OFFSET).astype(np.uint16)
    v = np.ones(arr.shape[:2], np.uint16) if valid is None else (np.asarray(valid) > 0).astype(np.uint16)
    if v.shape != arr.shape[:2]:
        raise ValueError(f"cannot write {path}: valid mask shape {v.shape} != flow size {arr.shape[:2]}")
    bgr = np.stack((v, enc[..., 1], enc[..., 0]), axis=-1)  # OpenCV stores BGR
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), bgr):
            raise OSError(f"OpenCV could not write {path}")
    return Path(path)


def read_flow_png(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a 16-bit KITTI-style flow PNG -> (flow (H, W, 2) float32 pixels, valid (H, W) bool).

    Invalid pixels read as a zero flow (see :func:`write_flow_png` for an example).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"flow file not found: {path}")
    bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if bgr is None:
        raise ValueError(f"cannot decode {path} as a PNG")
    if bgr.dtype != np.uint16 or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ValueError(f"{path} is not a 16-bit 3-channel flow PNG (dtype {bgr.dtype}, shape {bgr.shape})")
    flow = (bgr[..., [2, 1]].astype(np.float32) - _KITTI_OFFSET) / _KITTI_SCALE
    valid = bgr[..., 0] > 0
    flow[~valid] = 0.0
    return flow, valid


def read_flow(path: PathLike) -> np.ndarray:
    """Read a flow file by extension (``.flo``, ``.npy``, ``.png``) -> (H, W, 2) float32 pixels.

    ``.npy`` files may hold (H, W, 2) (the DIR-D pseudo-label layout) or (2, H, W).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "f.npy"
        >>> _ = write_flow(path, torch.ones(2, 4, 5))  # a (2, H, W) tensor is stored (H, W, 2)
        >>> arr = read_flow(path)
        >>> arr.shape, arr.dtype
        ((4, 5, 2), dtype('float32'))
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".flo":
        return read_flo(path)
    if suffix == ".png":
        return read_flow_png(path)[0]
    if suffix == ".npy":
        if not path.is_file():
            raise FileNotFoundError(f"flow file not found: {path}")
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ValueError(f"cannot read {path} as a .npy array: {exc}") from exc
        if arr.ndim == 3 and arr.shape[0] == 2 and arr.shape[2] != 2:
            arr = arr.transpose(1, 2, 0)
        if arr.ndim != 3 or arr.shape[2] != 2:
            raise ValueError(f"{path} holds an array of shape {arr.shape}, expected (H, W, 2) flow in pixels")
        return np.ascontiguousarray(arr, dtype=np.float32)
    raise ValueError(f"unknown flow file type {path.suffix!r} for {path}: use .flo, .npy or .png")


def write_flow(path: PathLike, flow: np.ndarray | torch.Tensor) -> Path:
    """Write a flow by extension (``.flo``, ``.npy`` (H, W, 2) float32, ``.png`` 16-bit), atomically.

    Args:
        path: the file; its extension chooses the format.
        flow: (H, W, 2) array or (2, H, W) / (1, 2, H, W) tensor, pixels, finite.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Example:
        >>> import tempfile
        >>> path = write_flow(Path(tempfile.mkdtemp()) / "f.flo", np.zeros((3, 4, 2), np.float32))
        >>> read_flow(path).shape
        (3, 4, 2)
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".flo":
        return write_flo(path, flow)
    if suffix == ".png":
        return write_flow_png(path, flow)
    if suffix == ".npy" and _streamed(flow):  # the header, then the rows: never the whole flow in memory
        shape = (int(flow.shape[0]), int(flow.shape[1]), 2)  # type: ignore[union-attr]
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
            _write_rows(f, flow, path)
        return Path(path)
    if suffix == ".npy":
        arr = _as_hw2(flow, path)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, arr)
        return Path(path)
    raise ValueError(f"unknown flow file type {suffix!r} for {path}: use .flo, .npy or .png")

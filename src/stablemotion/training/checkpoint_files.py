"""Reading training checkpoints without ever running code from them.

A checkpoint folder is data a user may have downloaded, copied from a shared disk or had
tampered with. Python's pickle can run arbitrary code while loading, so every file of a
checkpoint is read as *weights only*:

* the EMA weights are written as safetensors (``ema_unet.safetensors``: tensors plus a JSON
  header), which cannot hold code at all;
* the files accelerate writes with ``torch.save`` (optimizer, scheduler, RNG states) are
  checked with PyTorch's weights-only unpickler and a short allow-list (numpy arrays and
  dtypes for the RNG state) *before* accelerate reads them, whatever accelerate version
  is installed; their tensors are memory-mapped, so the check reads only the pickle itself.

A file that needs anything else is refused with :class:`UnsafeCheckpointError`, which
``--resume`` never skips over: it is a sign of tampering, not of an interrupted save.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> torch.save({"step": torch.tensor(3)}, folder / "optimizer.bin")
    >>> check_pickled_files(folder)  # plain tensors and numbers: passes
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

__all__ = [
    "EMA_FILE", "LEGACY_EMA_FILE", "PICKLED_SUFFIXES", "UnsafeCheckpointError", "check_pickled_files",
    "load_ema_state", "load_weights_only", "save_ema_state",
]

#: The EMA weights of a checkpoint (safetensors).
EMA_FILE = "ema_unet.safetensors"
#: Where checkpoints written before this version keep them (a ``torch.save`` pickle).
LEGACY_EMA_FILE = "ema_unet.pt"
#: Files of a checkpoint folder that are pickles (``torch.save``), hence checked before loading.
PICKLED_SUFFIXES = (".bin", ".pkl", ".pt", ".pth")


class UnsafeCheckpointError(ValueError):
    """A checkpoint file that would need to run code (or import objects) to be loaded."""

    def __init__(self, file: Path, detail: str) -> None:
        self.file = file
        self.reason = f"{file.name} is not a weights-only file ({detail})"
        super().__init__(
            f"refusing to load {file}: it holds pickled objects other than tensors and numbers ({detail}); "
            "a checkpoint must contain only weights. Delete the file (or the checkpoint) if you did not write it."
        )


def _numpy_globals() -> list[Any]:
    """What accelerate's RNG-state file legitimately holds besides tensors: numpy arrays (the
    numpy Mersenne-Twister state) and their dtypes."""
    names = [np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    try:  # numpy 2 moved the array reconstructor; both spellings are the same function
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    names.append(_reconstruct)
    return names


def load_weights_only(file: str | os.PathLike, map_location: str | torch.device = "cpu", mmap: bool = False) -> Any:
    """``torch.load`` a file with the weights-only unpickler (tensors, numbers, strings,
    containers and numpy arrays only).

    Raises:
        UnsafeCheckpointError: the pickle refers to any other object (a function, a class).
        ValueError: the file is not a readable ``torch.save`` file (the message names it).

    Example:
        >>> import tempfile, torch
        >>> path = tempfile.mktemp(suffix=".pt")
        >>> torch.save({"w": torch.ones(2)}, path)
        >>> load_weights_only(path)["w"]
        tensor([1., 1.])
    """
    file = Path(file)
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(file, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        # The weights-only unpickler refuses both code ("unsupported GLOBAL posix.system") and
        # garbage ("Unsupported operand"); only the first is a tampered file.
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "GLOBAL" in ln or "global" in ln.lower()), None)
        if detail is not None:
            raise UnsafeCheckpointError(file, detail[:200]) from None
        reason = next((ln for ln in lines if ln.startswith("Unsupported") or "error" in ln.lower()), lines[-1] if lines else "?")
        raise ValueError(f"cannot read {file}: {reason[:200]}") from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot read {file}: {first[:200]}") from None


def check_pickled_files(folder: str | os.PathLike) -> None:
    """Check that every pickled file of a checkpoint folder loads as weights only.

    Tensors are memory-mapped where the file format allows it, so this reads little more
    than the pickles themselves. Raises :class:`UnsafeCheckpointError` for the first file
    that would run code; unreadable files raise ``ValueError`` naming them.
    """
    for file in sorted(Path(folder).iterdir()):
        if file.suffix not in PICKLED_SUFFIXES or not file.is_file():
            continue
        try:
            load_weights_only(file, mmap=True)
        except ValueError as exc:
            if isinstance(exc, UnsafeCheckpointError) or "mmap" not in str(exc):
                raise
            load_weights_only(file)  # a legacy (non-zip) torch.save file cannot be memory-mapped


def save_ema_state(state: dict[str, Any], file: str | os.PathLike) -> None:
    """Write an EMA state dict (diffusers ``EMAModel.state_dict()``) as safetensors.

    ``shadow_params`` (a list of tensors) become tensors ``shadow.0``, ``shadow.1``, ...; the
    other entries (numbers, booleans) go to the header's metadata as JSON.
    """
    shadow = state.get("shadow_params") or []
    tensors = {f"shadow.{i}": p.detach().contiguous().cpu() for i, p in enumerate(shadow)}
    scalars = {k: v for k, v in state.items() if k != "shadow_params"}
    save_file(tensors, str(file), metadata={"ema": json.dumps(scalars), "count": str(len(shadow))})


def load_ema_state(folder: str | os.PathLike) -> dict[str, Any]:
    """Read the EMA state of a checkpoint folder as a dict for ``EMAModel.load_state_dict``.

    Reads :data:`EMA_FILE`, or a checkpoint written before it existed (:data:`LEGACY_EMA_FILE`)
    with the weights-only unpickler. Raises ``FileNotFoundError`` when neither exists,
    :class:`UnsafeCheckpointError` for a legacy file that would run code and ``ValueError``
    for an unreadable one.
    """
    folder = Path(folder)
    file = folder / EMA_FILE
    if file.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(str(file))
            count = int(meta.get("count", len(tensors)))
            state = json.loads(meta.get("ema", "{}"))
            state["shadow_params"] = [tensors[f"shadow.{i}"] for i in range(count)]
        except (SafetensorError, OSError, ValueError, KeyError) as exc:
            raise ValueError(f"cannot read {file}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
        return state
    legacy = folder / LEGACY_EMA_FILE
    if legacy.is_file():
        state = load_weights_only(legacy)
        if not isinstance(state, dict):
            raise ValueError(f"cannot read {legacy}: expected an EMA state dict, got {type(state).__name__}")
        return state
    raise FileNotFoundError(f"EMA state missing in {folder} ({EMA_FILE})")

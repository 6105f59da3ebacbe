"""Telling resource exhaustion apart from other errors, so that each layer can turn it into one
line naming what to lower (the trainer: its config keys; the command line: its options).

Example:
    >>> is_out_of_memory(RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 8 GB"))
    True
    >>> import errno
    >>> is_out_of_space(OSError(errno.ENOSPC, "No space left on device"))
    True
"""

from __future__ import annotations

import errno
import sys

__all__ = ["is_out_of_memory", "is_out_of_space"]


def is_out_of_memory(exc: BaseException) -> bool:
    """``MemoryError``, ``torch.OutOfMemoryError`` (CUDA/MPS) or the CPU allocator's
    ``RuntimeError`` ("not enough memory" / "can't allocate memory" / "out of memory")."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")  # never imported just for this
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if oom is not None and isinstance(exc, oom):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("out of memory", "not enough memory", "can't allocate memory"))


def is_out_of_space(exc: BaseException | None) -> bool:
    """An ``OSError`` for a full disk or an exhausted quota (also when it is the cause or
    context of ``exc``, as libraries that wrap I/O errors leave it)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False

"""The compute dtype a pipeline runs in: ``auto`` picks the fastest one the device does natively.

``auto`` (the default of ``stablemotion rectify``, ``evaluate``, ``serve`` and the Python
loading helpers) resolves per device:

* a CUDA GPU that supports bfloat16 (compute capability 8.0 and later) -> ``bf16``; any other
  CUDA GPU -> ``fp16``; Apple's MPS -> ``fp16``;
* a CPU with native bfloat16 arithmetic (x86 ``avx512_bf16`` or AMX tiles, ARM ``bf16``) -> ``bf16``;
* anything else (e.g. an AVX2-only x86 CPU, which emulates bfloat16 slowly) -> ``fp32``.

The quality cost of each dtype against float32 is measured by ``benchmarks/dtype_auto.py``
(BENCHMARKS.md, "dtype auto"). The choice is reported once (:func:`describe_choice`).

Example:
    >>> import torch
    >>> resolve_dtype_name("fp16"), resolve_dtype_name("auto", torch.device("cpu")) in DTYPE_NAMES
    ('fp16', True)
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["DTYPE_CHOICES", "DTYPE_NAMES", "auto_dtype_name", "cpu_has_native_bf16", "describe_choice",
           "resolve_dtype_name", "torch_dtype_of"]

#: The explicit compute dtypes, by their command-line names.
DTYPE_NAMES = ("fp32", "bf16", "fp16")
#: What ``--dtype`` accepts: ``auto`` and the explicit names.
DTYPE_CHOICES = ("auto", *DTYPE_NAMES)


def _cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (``flags`` on x86, ``Features`` on ARM); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively: x86 with ``avx512_bf16`` or AMX tiles (as PyTorch's
    own probes report them), ARM with the ``bf16`` extension. An AVX2-only CPU has neither: PyTorch
    emulates bfloat16 there, which is slower than float32.

    Example:
        >>> isinstance(cpu_has_native_bf16(), bool)
        True
    """
    import torch

    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    for probe in probes:
        try:
            if probe is not None and bool(probe()):
                return True
        except RuntimeError:
            continue
    flags = _cpu_flags()
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "bf16" in flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def auto_dtype_name(device: torch.device | str = "cpu") -> tuple[str, str]:
    """The dtype ``auto`` picks on ``device`` -> ``(name, why)``, ``name`` one of :data:`DTYPE_NAMES`.

    Example:
        >>> name, why = auto_dtype_name("cpu")
        >>> name in ("fp32", "bf16"), why.startswith("CPU")
        (True, True)
    """
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        label = torch.cuda.get_device_name(index)
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16", f"CUDA GPU {label} supports bfloat16"
        return "fp16", f"CUDA GPU {label} has no native bfloat16"
    if dev.type == "mps":
        return "fp16", "Apple MPS GPU"
    capability = torch.backends.cpu.get_cpu_capability()
    if cpu_has_native_bf16():
        return "bf16", f"CPU ({capability}) with native bfloat16"
    return "fp32", f"CPU ({capability}) without native bfloat16 (bfloat16 would be emulated, slower)"


def resolve_dtype_name(name: str, device: torch.device | str = "cpu") -> str:
    """``name`` (one of :data:`DTYPE_CHOICES`) with ``auto`` resolved for ``device`` -> one of :data:`DTYPE_NAMES`.

    Example:
        >>> resolve_dtype_name("bf16"), resolve_dtype_name("fp64")
        Traceback (most recent call last):
        ...
        ValueError: unknown dtype 'fp64'; use one of auto, fp32, bf16, fp16
    """
    if name not in DTYPE_CHOICES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(DTYPE_CHOICES)}")
    return auto_dtype_name(device)[0] if name == "auto" else name


def torch_dtype_of(dtype: torch.dtype | str | None, device: torch.device | str = "cpu") -> torch.dtype | None:
    """A torch dtype from a torch dtype, a name of :data:`DTYPE_CHOICES` (``auto`` resolved for ``device``),
    ``"float32"``-style names, or ``None`` (kept: the weights' stored dtype).

    Example:
        >>> import torch
        >>> torch_dtype_of("bf16"), torch_dtype_of(torch.float16), torch_dtype_of(None)
        (torch.bfloat16, torch.float16, None)
    """
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    aliases = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
    name = resolve_dtype_name(aliases.get(str(dtype), str(dtype)), device)
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def describe_choice(name: str, device: torch.device | str = "cpu") -> str:
    """One line saying what ``--dtype name`` means on ``device`` (printed once by the commands).

    Example:
        >>> describe_choice("fp16")
        'dtype fp16 (as asked)'
    """
    if name != "auto":
        return f"dtype {name} (as asked)"
    chosen, why = auto_dtype_name(device)
    return f"dtype auto -> {chosen}: {why}"

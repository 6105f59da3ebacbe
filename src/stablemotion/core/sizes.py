"""One rule for image sizes given as text or lists (``"384x512"``, ``"512"``, ``[384, 512]``).

Example:
    >>> parse_size("384x512")
    (384, 512)
    >>> parse_size("0", "--processing-resolution", allow_zero=True)
    0
"""

from __future__ import annotations

import re

__all__ = ["parse_size", "shown_value"]

_SIZE = re.compile(r"^\s*(\d+)\s*(?:[xX,]\s*(\d+))?\s*$")


def parse_size(value: str | int | list[int] | tuple[int, ...], name: str = "size",
               allow_zero: bool = False, maximum: int | None = None) -> tuple[int, int] | int:
    """One rule for every size on the command line.

    Accepts ``"384x512"`` / ``"384,512"`` / ``[384, 512]`` (H x W), ``"512"`` / ``[512]``
    (square) and, with ``allow_zero``, ``"0"`` (the input's own size). With ``maximum``, no
    side may be larger.

    Returns:
        ``(H, W)``, or ``0``.

    Raises:
        ValueError: naming ``name`` and the accepted forms.
    """
    forms = "H W, HxW, N (square)" + (" or 0 (the input's own size)" if allow_zero else "")
    try:
        if isinstance(value, (list, tuple)):
            parts = [int(v) for v in value]
        else:
            m = _SIZE.match(str(value))
            if m is None:
                parts = []
            else:
                parts = [int(m.group(1))] + ([int(m.group(2))] if m.group(2) is not None else [])
    except (TypeError, ValueError):  # "1.5", 5000-digit numbers
        parts = []
    if len(parts) not in (1, 2):
        raise ValueError(f"{name} takes {forms}; got {shown_value(value)}")
    if parts == [0] and allow_zero:
        return 0
    if any(p < 1 for p in parts):
        raise ValueError(f"{name} must be positive ({forms}); got {shown_value(value)}")
    if maximum is not None and max(parts) > maximum:
        raise ValueError(f"{name} must be at most {maximum} pixels a side ({forms}); got {shown_value(value)}")
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def shown_value(value: object) -> str:
    """``repr`` of a value for a message, shortened (a 5000-digit number stays one short line)."""
    raw = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
    text = repr(raw)
    return text if len(text) <= 40 else f"{repr(str(raw)[:28])[:-1]}...' ({len(str(raw))} characters)"

"""The app's user-fixable errors: a JSON ``{"detail": message}`` answer with its HTTP status."""

from __future__ import annotations

from fastapi import HTTPException

__all__: list[str] = []


class _InputError(HTTPException):
    """A user-fixable problem with the request: its message is shown on the page.

    Example:
        >>> _InputError("the image file is empty").status_code
        400
    """

    def __init__(self, message: str, status: int = 400, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status, detail=message, headers=headers)


def _mb(n: int) -> str:
    """``n`` bytes as the page shows a size.

    Example:
        >>> _mb(10 * 2**20), _mb(3000)
        ('10.0 MB', '3 KB')
    """
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 1024:.0f} KB"

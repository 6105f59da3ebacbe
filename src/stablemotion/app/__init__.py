"""The web app of ``stablemotion serve`` (FastAPI) and the HTML demo report.

The names of :mod:`stablemotion.app.server` are available here too (``from stablemotion.app import create_app``);
they import lazily so that importing a sibling module stays light.
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    module = importlib.import_module(".server", __name__)
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None

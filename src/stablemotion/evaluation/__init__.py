"""The evaluation layer: scoring test sets, the studies and the perceptual judge.

The names of :mod:`stablemotion.evaluation.runner` are available here too (``from stablemotion.evaluation import run_inference``);
they import lazily so that importing a sibling module stays light.
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    module = importlib.import_module(".runner", __name__)
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None

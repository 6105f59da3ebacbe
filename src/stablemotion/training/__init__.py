"""The training layer: experiment configs, losses, checkpoints and the trainer.

The names of :mod:`stablemotion.training.trainer` are available here too (``from stablemotion.training import Trainer``);
they import lazily so that importing a sibling module stays light.
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    module = importlib.import_module(".trainer", __name__)
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None

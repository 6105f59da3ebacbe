"""The model layer: the pipeline and its components, building, loading and importing models, the bundled catalog, tiny test models, the regression baseline and the task classifier.

The names of :mod:`stablemotion.model.loading` are available here too (``from stablemotion.model import load_pipeline``);
they import lazily so that importing a sibling module stays light.
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    module = importlib.import_module(".loading", __name__)
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None

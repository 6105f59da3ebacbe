"""Modules imported on first use, so that ``import stablemotion.tasks`` (which the command
line does to list the tasks) stays free of numpy, OpenCV and torch."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for the module ``name``; imports it at the first attribute access."""

    __slots__ = ("_name", "_module")

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        module = self._module
        if module is None:
            module = importlib.import_module(self._name)
            self._module = module
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


np: Any = LazyModule("numpy")
cv2: Any = LazyModule("cv2")
torch: Any = LazyModule("torch")
flow: Any = LazyModule("stablemotion.core.flow")
io: Any = LazyModule("stablemotion.io.images")

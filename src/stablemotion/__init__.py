"""StableMotion: one-step single-image motion estimation with a diffusion prior.

The public names below import lazily (PEP 562), so ``import stablemotion`` and the command
line stay fast; the first access loads torch and diffusers::

    from stablemotion import StableMotionPipeline, load_bundled_pipeline
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import _compat

__version__ = "0.1.0"

_compat.install()

#: public name -> the module that defines it
_EXPORTS = {
    "StableMotionPipeline": "model.pipeline",
    "StableMotionOutput": "model.pipeline",
    "TaskSpec": "tasks",
    "register_task": "tasks",
    "get_task": "tasks",
    "build_pipeline": "model.loading",
    "load_pipeline": "model.loading",
    "load_bundled_pipeline": "model.loading",
    "import_released_checkpoint": "model.loading",
    "warp": "core.flow",
    "read_flow": "core.flow",
    "write_flow": "core.flow",
    "flow_to_color": "core.flow",
    "stitch": "model.stitch",
    "StitchResult": "model.stitch",
}

__all__ = [
    "__version__",
    "StableMotionPipeline",
    "StableMotionOutput",
    "TaskSpec",
    "register_task",
    "get_task",
    "build_pipeline",
    "load_pipeline",
    "load_bundled_pipeline",
    "import_released_checkpoint",
    "warp",
    "read_flow",
    "write_flow",
    "flow_to_color",
    "stitch",
    "StitchResult",
]

if TYPE_CHECKING:
    from .core.flow import flow_to_color, read_flow, warp, write_flow
    from .model.loading import (
        build_pipeline,
        import_released_checkpoint,
        load_bundled_pipeline,
        load_pipeline,
    )
    from .model.pipeline import StableMotionOutput, StableMotionPipeline
    from .model.stitch import StitchResult, stitch
    from .tasks import TaskSpec, get_task, register_task


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'stablemotion' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

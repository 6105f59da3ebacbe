"""Tasks: what distinguishes one single-image warping task from another.

A task is a :class:`TaskSpec` (condition images, warp padding, network resolution, loss
weights: what the model and the trainer see) and an :class:`EvalProtocol` (how it is scored),
registered by :func:`register_task`. The package ships

* ``sir`` (:mod:`.sir`): stitched image rectangling,
* ``rsc`` (:mod:`.rsc`): rolling-shutter correction,
* ``rotation`` (:mod:`.rotation`): rotation correction of a tilted photo,
* ``lens`` (:mod:`.lens`): radial (barrel / fisheye-like) lens-distortion correction.

A user adds a task for training and inference alone with :func:`register_task` (or by
passing a :class:`TaskSpec` directly) without editing library code. Synthetic-sample
generators live in the data layer (:mod:`stablemotion.data.synthesis`, one module per
generator; :func:`stablemotion.data.synthesis.declare_task` registers a task with its
generator, see ``docs/tasks.md``). Importing this package loads neither numpy, OpenCV nor torch.
"""

from __future__ import annotations

from ._spec import (
    LAYOUT_KINDS,
    MASK_CONDITIONS,
    MISSING_IMAGE_VALUE,
    MISSING_MASK_VALUE,
    MOTION_MODEL_NAMES,
    PROTOCOL_METRICS,
    RELEASED_TASKS,
    EvalProtocol,
    TaskSpec,
    as_task_list,
    available_tasks,
    describe_model_tasks,
    get_protocol,
    get_task,
    missing_condition_value,
    register_task,
    union_conditions,
)
from .lens import LENS
from .rotation import ROTATION
from .rsc import RSC
from .sir import SIR

__all__ = [
    "TaskSpec",
    "SIR",
    "RSC",
    "ROTATION",
    "LENS",
    "MASK_CONDITIONS",
    "register_task",
    "get_task",
    "available_tasks",
    "EvalProtocol",
    "get_protocol",
    "PROTOCOL_METRICS",
    "LAYOUT_KINDS",
    "RELEASED_TASKS",
    "union_conditions",
    "as_task_list",
    "describe_model_tasks",
    "missing_condition_value",
    "MISSING_MASK_VALUE",
    "MISSING_IMAGE_VALUE",
    "MOTION_MODEL_NAMES",
]


def __getattr__(name: str) -> object:  # generator-side names moved to stablemotion.data.synthesis
    from .._compat import moved_attribute

    return moved_attribute(__name__, name)

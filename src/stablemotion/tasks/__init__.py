"""Tasks: what distinguishes one single-image warping task from another.

A task is declared in one module of this package: its :class:`TaskSpec` (condition images,
warp padding, network resolution, loss weights: what the model and the trainer see), its
synthetic-sample generator and on-disk layout (:class:`SynthSpec`, used by
:func:`stablemotion.data.synth.make_sample`, :func:`stablemotion.data.synth.write_dataset` and
``stablemotion synth``) and its evaluation protocol (:class:`EvalProtocol`), registered
together with :func:`declare_task`. The package ships

* ``sir`` (:mod:`.sir`): stitched image rectangling,
* ``rsc`` (:mod:`.rsc`): rolling-shutter correction,
* ``rotation`` (:mod:`.rotation`): rotation correction of a tilted photo,
* ``lens`` (:mod:`.lens`): radial (barrel / fisheye-like) lens-distortion correction.

A user adds a task for training and inference alone with :func:`register_task` (or by
passing a :class:`TaskSpec` directly) without editing library code; a task with synthetic
data is one new module calling :func:`declare_task` (see ``docs/tasks.md``). Shared pieces
live in :mod:`._photos` (photo sources, crops, procedural scenes), :mod:`._geometry` (flow
inversion, resampling) and :mod:`._writer` (sampling and writing datasets). Importing this
package loads neither numpy, OpenCV nor torch.
"""

from __future__ import annotations

from ._spec import (
    LAYOUT_KINDS,
    MASK_CONDITIONS,
    MISSING_IMAGE_VALUE,
    MISSING_MASK_VALUE,
    PROTOCOL_METRICS,
    RELEASED_TASKS,
    EvalProtocol,
    Layout,
    SynthOption,
    SynthSpec,
    TaskEntry,
    TaskSpec,
    as_task_list,
    available_tasks,
    declare_task,
    describe_model_tasks,
    get_entry,
    get_generator,
    get_protocol,
    get_task,
    missing_condition_value,
    register_task,
    synth_tasks,
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
    "SynthSpec",
    "SynthOption",
    "Layout",
    "TaskEntry",
    "declare_task",
    "get_entry",
    "get_generator",
    "get_protocol",
    "synth_tasks",
    "PROTOCOL_METRICS",
    "LAYOUT_KINDS",
    "RELEASED_TASKS",
    "union_conditions",
    "as_task_list",
    "describe_model_tasks",
    "missing_condition_value",
    "MISSING_MASK_VALUE",
    "MISSING_IMAGE_VALUE",
]

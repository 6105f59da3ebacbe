"""Task descriptions and the task registry.

A :class:`TaskSpec` is what the model and the trainer see of a task (conditions, padding,
resolution, loss weights); an :class:`EvalProtocol` says how it is scored. Both are
registered by :func:`register_task`. How to make synthetic samples of a task lives in the data
layer (:mod:`stablemotion.data.synthesis`). Nothing here imports numpy, OpenCV or torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..core.constants import FLOW_GAMMA, PADDING_MODES

#: The tasks of the paper's released checkpoints. Several tasks share a UNet width (rsc,
#: rotation and lens all have 8 input channels), so code that infers a task from a checkpoint's
#: channel count should prefer these on a tie.
RELEASED_TASKS = ("sir", "rsc")

#: Condition names that hold a binary mask (1 = valid content) rather than a photo.
MASK_CONDITIONS = frozenset({"mask"})

#: The low-dimensional motion families a task may name as its ``motion_model`` (the keys of
#: :data:`stablemotion.core.motion_models.MOTION_MODELS`; tests check they agree).
MOTION_MODEL_NAMES = ("rolling_shutter", "rotation", "lens")


@dataclass(frozen=True)
class TaskSpec:
    """Declarative description of a rectification task.

    Attributes:
        name: short id used on the command line and in saved configs (``"sir"``).
        conditions: names of the condition images, in UNet-input order. ``"image"`` is
            the image the flow warps; ``"mask"`` is a binary validity mask.
        padding: :func:`stablemotion.core.flow.warp` padding (``"border"`` or ``"zeros"``).
        resolution: network (processing) resolution ``(H, W)`` in pixels.
        loss_weights: weight per loss term; keys ``"v"`` (diffusion v-loss), ``"warp"``
            (warped input vs gt), ``"mask"`` (warped mask should be all valid), ``"vgg"``
            (perceptual); a missing key means weight 0.
        valid_region_loss: mask the warp loss to where the gt flow samples inside the
            image (RSC), instead of the whole image (SIR).
        flow_gamma: flow normalisation of the VAE encoding.
        description: one line for help texts.
        motion_model: the low-dimensional motion family of the task's correcting flows
            (:data:`MOTION_MODEL_NAMES`: ``"rolling_shutter"``, ``"rotation"``, ``"lens"``; see
            :mod:`stablemotion.core.motion_models`), or ``None`` (SIR: no parametric family).
            The pipeline's ``flow_projection="motion_model"`` and correction gate use it.
    """

    name: str
    conditions: tuple[str, ...]
    padding: str = "border"
    resolution: tuple[int, int] = (384, 512)
    loss_weights: Mapping[str, float] = field(default_factory=dict)
    valid_region_loss: bool = False
    flow_gamma: float = FLOW_GAMMA
    description: str = ""
    motion_model: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"task name must be a non-empty identifier, got {self.name!r}")
        conds = tuple(self.conditions)
        object.__setattr__(self, "conditions", conds)
        if "image" not in conds:
            raise ValueError(f"task {self.name!r}: conditions {conds} must include 'image' (the image the flow warps)")
        if len(set(conds)) != len(conds):
            raise ValueError(f"task {self.name!r}: duplicate condition names in {conds}")
        if self.padding not in PADDING_MODES:
            raise ValueError(f"task {self.name!r}: padding must be one of {PADDING_MODES}, got {self.padding!r}")
        res = tuple(int(r) for r in self.resolution)
        if len(res) != 2 or min(res) < 8 or res[0] % 8 or res[1] % 8:
            raise ValueError(f"task {self.name!r}: resolution must be (H, W), multiples of 8, got {self.resolution}")
        object.__setattr__(self, "resolution", res)
        weights = {str(k): float(v) for k, v in dict(self.loss_weights).items()}
        unknown = set(weights) - {"v", "warp", "mask", "vgg"}
        if unknown:
            raise ValueError(f"task {self.name!r}: unknown loss terms {sorted(unknown)}; use v, warp, mask, vgg")
        if weights.get("mask", 0.0) and "mask" not in conds:
            raise ValueError(f"task {self.name!r}: a 'mask' loss needs a 'mask' condition")
        object.__setattr__(self, "loss_weights", weights)
        if self.flow_gamma <= 0:
            raise ValueError(f"task {self.name!r}: flow_gamma must be positive")
        if self.motion_model is not None and self.motion_model not in MOTION_MODEL_NAMES:
            raise ValueError(f"task {self.name!r}: motion_model must be None or one of {MOTION_MODEL_NAMES}, "
                             f"got {self.motion_model!r}")

    @property
    def num_conditions(self) -> int:
        return len(self.conditions)

    @property
    def unet_in_channels(self) -> int:
        """UNet input channels: 4 latent channels per condition plus 4 for the noisy flow."""
        return 4 * (self.num_conditions + 1)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["conditions"] = list(self.conditions)
        d["resolution"] = list(self.resolution)
        d["loss_weights"] = dict(self.loss_weights)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskSpec:
        """A spec from :meth:`to_dict`'s dict. A dict saved before ``motion_model`` existed
        takes the registered task's of the same name (so a saved ``"rsc"`` model keeps its family).

        Example:
            >>> TaskSpec.from_dict({"name": "rsc", "conditions": ["image"]}).motion_model
            'rolling_shutter'
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown task fields {sorted(unknown)}; expected some of {sorted(known)}")
        fields = dict(data)
        if "motion_model" not in fields and str(fields.get("name", "")).lower() in _REGISTRY:
            fields["motion_model"] = _REGISTRY[str(fields["name"]).lower()].motion_model
        return cls(**fields)

    def replace(self, **changes: Any) -> TaskSpec:
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------- several tasks, one model
#: What a multi-task model is fed for a condition the current task lacks, in [0, 1]: an all-valid
#: mask (1) for a mask condition, mid grey (0.5) for any other condition image. Constants keep
#: ``conv_in`` the same for every task; the task embedding tells the tasks apart.
MISSING_MASK_VALUE = 1.0
MISSING_IMAGE_VALUE = 0.5


def missing_condition_value(name: str) -> float:
    """The constant fed, in [0, 1], for condition ``name`` when a task of a multi-task model
    lacks it (:data:`MISSING_MASK_VALUE` for masks, :data:`MISSING_IMAGE_VALUE` otherwise)."""
    return MISSING_MASK_VALUE if name in MASK_CONDITIONS else MISSING_IMAGE_VALUE


def describe_model_tasks(names: Any) -> str:
    """How errors name what a model serves: "a 'sir' model" or "a model of the tasks ['sir', 'lens']"."""
    names = list(names)
    return f"a {names[0]!r} model" if len(names) == 1 else f"a model of the tasks {names}"


def as_task_list(task: Any) -> list[TaskSpec]:
    """One task (name, spec or dict) or a list of them -> a list of specs (a list of one for a
    single task; several distinct tasks make a multi-task model)."""
    items = list(task) if isinstance(task, (list, tuple)) else [task]
    specs = [get_task(t) for t in items]
    names = [t.name for t in specs]
    if not specs or len(set(names)) != len(names):
        raise ValueError(f"expected one task or a list of distinct tasks, got {names}")
    return specs


def union_conditions(tasks: Any) -> tuple[str, ...]:
    """The conditions of a model serving ``tasks`` (names or specs), in a fixed order: the
    tasks in the given order, each task's conditions in its own order, first occurrence kept.

    ``union_conditions(["sir", "rsc", "rotation", "lens"]) == ("mask", "image")``: the UNet
    then takes ``4 * (2 + 1)`` input channels, as a SIR model does.
    """
    out: list[str] = []
    for task in tasks:
        for name in get_task(task).conditions:
            if name not in out:
                out.append(name)
    if not out:
        raise ValueError("a model needs at least one task")
    return tuple(out)


# --------------------------------------------------------------------------- evaluation protocol
#: Metrics an :class:`EvalProtocol` may name: PSNR / SSIM of the rectified image against the gt
#: (scikit-image on uint8, full resolution) and EPE (mean end-point error of the flow, pixels).
PROTOCOL_METRICS = ("psnr", "ssim", "epe")
#: Dataset layouts: DIR-D (``SPLIT/{input,mask,gt}``), RS-Real (``SPLIT/npz``) or a task folder
#: (``SPLIT/{input,gt}`` read by :class:`stablemotion.data.TaskFolderDataset`).
LAYOUT_KINDS = ("dird", "rsreal", "folder")


@dataclass(frozen=True)
class EvalProtocol:
    """How a task is scored.

    Attributes:
        metrics: subset of :data:`PROTOCOL_METRICS`; image metrics compare the output with
            the gt on uint8 images at full resolution, no mask.
        epe_region: ``"all"`` (EPE over every pixel) or ``"valid"`` (only where the gt flow
            samples inside the input, :func:`stablemotion.core.flow.valid_mask`: RSC, whose GS
            frame sees parts the RS camera never saw).
        layout: the test set's layout (:data:`LAYOUT_KINDS`), what ``open_eval_set`` reads.
        split: the test split's folder name.
        optional_metrics: extra metrics reported when installed (``"fid"``, ``"lpips"``).
        reference: one line naming the protocol's origin.
    """

    metrics: tuple[str, ...] = ("psnr", "ssim", "epe")
    epe_region: str = "all"
    layout: str = "folder"
    split: str = "test"
    optional_metrics: tuple[str, ...] = ()
    reference: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", tuple(self.metrics))
        object.__setattr__(self, "optional_metrics", tuple(self.optional_metrics))
        unknown = set(self.metrics) - set(PROTOCOL_METRICS)
        if unknown:
            raise ValueError(f"unknown metrics {sorted(unknown)}; use some of {PROTOCOL_METRICS}")
        if self.epe_region not in ("all", "valid"):
            raise ValueError(f"epe_region must be 'all' or 'valid', got {self.epe_region!r}")
        if self.layout not in LAYOUT_KINDS:
            raise ValueError(f"layout must be one of {LAYOUT_KINDS}, got {self.layout!r}")

    def score(self, output: Any, gt: Any, flow: Any = None, flow_gt: Any = None) -> dict[str, float]:
        """Score one result.

        Args:
            output, gt: uint8 (H, W, 3) images (the rectified image and the ground truth).
            flow, flow_gt: (H, W, 2) flows in pixels (predicted, ground truth); EPE is
                reported only when both are given.

        Returns:
            ``{metric: value}`` for the protocol's metrics that the arguments allow
            (:func:`stablemotion.core.metrics.score_pair`).

        Example:
            >>> import numpy as np
            >>> gt, f = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 2), np.float32)
            >>> EvalProtocol(metrics=("psnr", "epe")).score(gt, gt, f + np.float32([3, 4]), f)
            {'psnr': inf, 'epe': 5.0}
        """
        from ..core.metrics import score_pair

        return score_pair(output, gt, flow, flow_gt, metrics=self.metrics, epe_region=self.epe_region)


# --------------------------------------------------------------------------- the registry
_REGISTRY: dict[str, TaskSpec] = {}
_PROTOCOLS: dict[str, EvalProtocol] = {}


def register_task(task: TaskSpec, overwrite: bool = False, protocol: EvalProtocol | None = None) -> TaskSpec:
    """Make ``task`` available by name to :func:`get_task` (and so to configs and the CLI),
    with its evaluation ``protocol`` (:func:`get_protocol`; None keeps the one registered before,
    else the default :class:`EvalProtocol`).

    A synthetic-sample generator is registered with the task by
    :func:`stablemotion.data.synthesis.declare_task`.

    Example:
        >>> from stablemotion.tasks import SIR
        >>> register_task(SIR) is get_task("SIR")  # the same spec again: nothing changes
        True
        >>> register_task(SIR.replace(padding="zeros"))
        Traceback (most recent call last):
        ...
        ValueError: a different task named 'sir' is already registered; pass overwrite=True
    """
    if task.name in _REGISTRY and not overwrite and _REGISTRY[task.name] != task:
        raise ValueError(f"a different task named {task.name!r} is already registered; pass overwrite=True")
    _REGISTRY[task.name] = task
    if protocol is not None:
        _PROTOCOLS[task.name] = protocol
    return task


def get_task(task: str | TaskSpec | Mapping[str, Any]) -> TaskSpec:
    """Resolve a task name (any case), dict or :class:`TaskSpec` to a :class:`TaskSpec`.

    Example:
        >>> get_task("SIR").conditions
        ('mask', 'image')
        >>> get_task({"name": "t", "conditions": ["image"]}).unet_in_channels
        8
    """
    if isinstance(task, TaskSpec):
        return task
    if isinstance(task, Mapping):
        return TaskSpec.from_dict(task)
    key = str(task).lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown task {task!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]


def available_tasks() -> list[str]:
    """Names of the registered tasks, sorted."""
    return sorted(_REGISTRY)


def get_protocol(task: str | TaskSpec) -> EvalProtocol:
    """The evaluation protocol of a task (the default :class:`EvalProtocol` when it declares
    none, or for an unregistered :class:`TaskSpec`)."""
    name = task.name if isinstance(task, TaskSpec) else get_task(task).name
    return _PROTOCOLS.get(name, EvalProtocol())

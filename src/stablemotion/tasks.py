"""Task descriptions: what distinguishes one single-image warping task from another.

A task declares its condition images (their order is the order of the latents in the
UNet input, before the noisy flow latent, and so part of the checkpoint format), the
warp padding, the network resolution and its loss weights. The library ships SIR
(stitched image rectangling) and RSC (rolling-shutter correction); a user adds a new
task with :func:`register_task` (or by passing a :class:`TaskSpec` directly) without
editing library code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .constants import FLOW_GAMMA, PADDING_MODES

__all__ = ["TaskSpec", "SIR", "RSC", "register_task", "get_task", "available_tasks"]

#: Condition names that hold a binary mask (1 = valid content) rather than a photo.
MASK_CONDITIONS = frozenset({"mask"})


@dataclass(frozen=True)
class TaskSpec:
    """Declarative description of a rectification task.

    Attributes:
        name: short id used on the command line and in saved configs (``"sir"``).
        conditions: names of the condition images, in UNet-input order. ``"image"`` is
            the image the flow warps; ``"mask"`` is a binary validity mask.
        padding: :func:`stablemotion.flow.warp` padding (``"border"`` or ``"zeros"``).
        resolution: network (processing) resolution ``(H, W)`` in pixels.
        loss_weights: weight per loss term; keys ``"v"`` (diffusion v-loss), ``"warp"``
            (warped input vs gt), ``"mask"`` (warped mask should be all valid), ``"vgg"``
            (perceptual); a missing key means weight 0.
        valid_region_loss: mask the warp loss to where the gt flow samples inside the
            image (RSC), instead of the whole image (SIR).
        flow_gamma: flow normalisation of the VAE encoding.
        description: one line for help texts.
    """

    name: str
    conditions: tuple[str, ...]
    padding: str = "border"
    resolution: tuple[int, int] = (384, 512)
    loss_weights: Mapping[str, float] = field(default_factory=dict)
    valid_region_loss: bool = False
    flow_gamma: float = FLOW_GAMMA
    description: str = ""

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
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown task fields {sorted(unknown)}; expected some of {sorted(known)}")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> TaskSpec:
        return dataclasses.replace(self, **changes)


SIR = TaskSpec(
    name="sir",
    conditions=("mask", "image"),
    padding="border",
    resolution=(384, 512),
    loss_weights={"v": 1.0, "warp": 8.0, "mask": 8.0, "vgg": 0.1},
    description="stitched image rectangling: stitched image + mask -> rectangular image",
)

RSC = TaskSpec(
    name="rsc",
    conditions=("image",),
    padding="zeros",
    resolution=(256, 256),
    loss_weights={"v": 1.0, "warp": 1.0, "vgg": 0.01},
    valid_region_loss=True,
    description="rolling-shutter correction: rolling-shutter image -> global-shutter image",
)

_REGISTRY: dict[str, TaskSpec] = {}


def register_task(task: TaskSpec, overwrite: bool = False) -> TaskSpec:
    """Make ``task`` available by name to :func:`get_task` (and so to configs and the CLI)."""
    if task.name in _REGISTRY and not overwrite and _REGISTRY[task.name] != task:
        raise ValueError(f"a different task named {task.name!r} is already registered; pass overwrite=True")
    _REGISTRY[task.name] = task
    return task


def get_task(task: str | TaskSpec | Mapping[str, Any]) -> TaskSpec:
    """Resolve a task name, dict or :class:`TaskSpec` to a :class:`TaskSpec`."""
    if isinstance(task, TaskSpec):
        return task
    if isinstance(task, Mapping):
        return TaskSpec.from_dict(task)
    key = str(task).lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown task {task!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[key]


def available_tasks() -> list[str]:
    return sorted(_REGISTRY)


register_task(SIR)
register_task(RSC)

"""Task descriptions and the task registry.

A :class:`TaskSpec` is what the model and the trainer see of a task (conditions, padding,
resolution, loss weights). A task module of this package also declares how to make
synthetic samples for it (:class:`SynthSpec`: a generator, its options and its on-disk
:class:`Layout`) and how it is scored (:class:`EvalProtocol`), all registered together by
:func:`declare_task`. Nothing here imports numpy, OpenCV or torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..core.constants import FLOW_GAMMA, PADDING_MODES

#: The tasks of the paper's released checkpoints. Several tasks share a UNet width (rsc,
#: rotation and lens all have 8 input channels), so code that infers a task from a checkpoint's
#: channel count should prefer these on a tie.
RELEASED_TASKS = ("sir", "rsc")

#: Condition names that hold a binary mask (1 = valid content) rather than a photo.
MASK_CONDITIONS = frozenset({"mask"})


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
            ``{metric: value}`` for the protocol's metrics that the arguments allow.
        """
        import numpy as np

        from ..core.metrics import psnr, ssim

        out: dict[str, float] = {}
        if "psnr" in self.metrics:
            out["psnr"] = psnr(output, gt)
        if "ssim" in self.metrics:
            out["ssim"] = ssim(output, gt)
        if "epe" in self.metrics and flow is not None and flow_gt is not None:
            f, g = np.asarray(flow, np.float64), np.asarray(flow_gt, np.float64)
            if f.shape != g.shape or f.ndim != 3 or f.shape[-1] != 2:
                raise ValueError(f"flows must both be (H, W, 2), got {f.shape} and {g.shape}")
            err = np.linalg.norm(f - g, axis=-1)
            if self.epe_region == "valid":
                import torch

                from ..core.flow import valid_mask

                keep = valid_mask(torch.from_numpy(g).permute(2, 0, 1))[0].numpy()
                err = err[keep] if keep.any() else err
            out["epe"] = float(err.mean())
        return out


# --------------------------------------------------------------------------- synthetic data
@dataclass(frozen=True)
class SynthOption:
    """One option of a generator or a layout: a keyword of ``make_sample`` / the writer and,
    unless ``flag`` is ``""``, a ``stablemotion synth`` option.

    Attributes:
        name: keyword name (``"max_angle"``).
        default: default value (also the command line's).
        help: help text.
        type: argparse type / converter (``float``, ``int``, ``str``...).
        choices: allowed values, or None.
        low, high: bounds of a number (inclusive unless ``open_low``); None = unbounded.
        open_low: the lower bound is exclusive.
        flag: command-line flag; None derives ``--max-angle`` from the name, ``""`` keeps the
            option off the command line (a task's ``cli_arguments`` hook may set it).
        action: argparse action instead of ``type`` (e.g. ``argparse.BooleanOptionalAction``).
    """

    name: str
    default: Any
    help: str = ""
    type: Any = float
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    flag: str | None = None
    action: Any = None

    @property
    def cli_flag(self) -> str:
        return "--" + self.name.replace("_", "-") if self.flag is None else self.flag

    def check(self, value: Any) -> None:
        """Raise ``ValueError`` naming the option when ``value`` is not allowed."""
        if value is None:
            return
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{self.name} must be one of {self.choices}, got {value!r}")
        if self.low is not None or self.high is not None:
            v = float(value)
            below = self.low is not None and (v <= self.low if self.open_low else v < self.low)
            above = self.high is not None and v > self.high
            if below or above:
                lo = "-inf" if self.low is None else f"{self.low:g}"
                hi = "inf" if self.high is None else f"{self.high:g}"
                raise ValueError(f"{self.name} must be in {'(' if self.open_low else '['}{lo}, {hi}], got {value}")


@dataclass(frozen=True)
class Layout:
    """How a task's samples go to disk.

    Attributes:
        kind: one of :data:`LAYOUT_KINDS` (which dataset class reads it back).
        subdirs: folders inside ``OUT/SPLIT`` that a write fills (checked before writing).
        write: ``write(sample, split_dir, name, split, ext, quality, **options)`` writes one sample.
        options: layout options (:class:`SynthOption`), passed to ``write``.
        describe: the written layout for messages, formatted with ``out`` and ``split``.
    """

    kind: str
    subdirs: tuple[str, ...]
    write: Callable[..., None]
    options: tuple[SynthOption, ...] = ()
    describe: str = "{out}/{split}/{{input,gt,flow}}"


@dataclass(frozen=True)
class SynthSpec:
    """A task's synthetic-data generator.

    Attributes:
        name: generator name (``make_sample(name, ...)``, ``stablemotion synth NAME``).
        stream: the random stream id: sample ``i`` uses ``default_rng([seed, i, stream])``;
            unique per generator and never changed (it fixes every dataset made before).
        generate: ``generate(photo, rng, size, prefilter_sigma, **options) -> sample``:
            ``photo`` uint8 (H0, W0, 3) (a photo or a generated scene), ``size`` (H, W).
        layout: its :class:`Layout`.
        options: the generator's options (:class:`SynthOption`).
        aliases: other accepted names (the task name, a dashed spelling).
        size: default (H, W).
        split: default split folder name.
        help: one line for ``stablemotion synth --help``.
        cli_arguments: optional ``f(parser)`` adding arguments beyond the declared options.
        cli_options: optional ``f(args) -> dict`` turning those arguments into options.
    """

    name: str
    stream: int
    generate: Callable[..., Any]
    layout: Layout
    options: tuple[SynthOption, ...] = ()
    aliases: tuple[str, ...] = ()
    size: tuple[int, int] = (384, 512)
    split: str = "training"
    help: str = ""
    cli_arguments: Callable[[Any], None] | None = None
    cli_options: Callable[[Any], dict[str, Any]] | None = None

    @property
    def cli_name(self) -> str:
        return self.name.replace("_", "-")

    def check_options(self, options: Mapping[str, Any], layout: bool = False) -> None:
        declared = {o.name: o for o in (*self.options, *(self.layout.options if layout else ()))}
        for key, value in options.items():
            if key in declared:
                declared[key].check(value)


@dataclass(frozen=True)
class TaskEntry:
    """A registered task: its spec and, for the tasks of this package, its generator and protocol."""

    spec: TaskSpec
    synth: SynthSpec | None = None
    protocol: EvalProtocol | None = None


_REGISTRY: dict[str, TaskSpec] = {}
_ENTRIES: dict[str, TaskEntry] = {}
_GENERATORS: dict[str, str] = {}  # generator name or alias -> task name


def register_task(task: TaskSpec, overwrite: bool = False) -> TaskSpec:
    """Make ``task`` available by name to :func:`get_task` (and so to configs and the CLI)."""
    if task.name in _REGISTRY and not overwrite and _REGISTRY[task.name] != task:
        raise ValueError(f"a different task named {task.name!r} is already registered; pass overwrite=True")
    _REGISTRY[task.name] = task
    if task.name not in _ENTRIES or _ENTRIES[task.name].spec != task:
        old = _ENTRIES.get(task.name)
        _ENTRIES[task.name] = TaskEntry(task, old.synth if old else None, old.protocol if old else None)
    return task


def declare_task(
    spec: TaskSpec,
    synth: SynthSpec | None = None,
    protocol: EvalProtocol | None = None,
    overwrite: bool = False,
) -> TaskSpec:
    """Register a task with its generator and evaluation protocol (what a task module does).

    The generator becomes available to ``make_sample``, the dataset writers and
    ``stablemotion synth`` under its name and aliases (and the task's name).
    """
    if synth is not None:
        for key in {synth.name, *synth.aliases, spec.name}:
            owner = _GENERATORS.get(key)
            if owner is not None and owner != spec.name and not overwrite:
                raise ValueError(f"generator name {key!r} is already used by task {owner!r}")
        streams = {e.synth.stream: n for n, e in _ENTRIES.items() if e.synth is not None and n != spec.name}
        if synth.stream in streams and not overwrite:
            raise ValueError(f"random stream {synth.stream} is already used by task {streams[synth.stream]!r}")
    register_task(spec, overwrite=overwrite)
    _ENTRIES[spec.name] = TaskEntry(spec, synth, protocol)
    if synth is not None:
        for key in {synth.name, *synth.aliases, spec.name}:
            _GENERATORS[key] = spec.name
    return spec


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


def get_entry(task: str | TaskSpec) -> TaskEntry:
    """The registered :class:`TaskEntry` of a task (by task name, generator name or alias)."""
    name = task.name if isinstance(task, TaskSpec) else str(task).lower()
    if name not in _ENTRIES:
        name = _GENERATORS.get(name, name)
    if name not in _ENTRIES:
        raise ValueError(f"unknown task {task!r}; available: {', '.join(sorted(_ENTRIES))}")
    return _ENTRIES[name]


def get_generator(name: str) -> SynthSpec:
    """The generator of a task, by generator name (``"rectangling"``), alias or task name."""
    key = str(name).lower()
    if key not in _GENERATORS:
        raise ValueError(f"task must be one of {sorted(synth_tasks())}, got {name!r}")
    synth = _ENTRIES[_GENERATORS[key]].synth
    assert synth is not None
    return synth


def get_protocol(task: str | TaskSpec) -> EvalProtocol:
    """The evaluation protocol of a task (the default :class:`EvalProtocol` when it declares none)."""
    try:
        entry = get_entry(task)
    except ValueError:
        if isinstance(task, TaskSpec):
            return EvalProtocol()
        raise
    return entry.protocol if entry.protocol is not None else EvalProtocol()


def synth_tasks() -> list[str]:
    """Generator names, ordered by their random stream id (the order they were added)."""
    synths = sorted((e.synth for e in _ENTRIES.values() if e.synth is not None), key=lambda s: s.stream)
    return [s.name for s in synths]

"""Experiment configuration: one YAML file per run, validated before any compute.

A config is a tree of dataclasses (:class:`TrainConfig`). :func:`load_config` reads a
YAML file, applies ``key.sub=value`` overrides (values parsed as YAML, so ``1e-4``,
``true``, ``[256, 256]`` work), rejects unknown keys with the list of valid ones, and
checks types, value ranges (``optim.lr=nan``, a zero batch size, an EMA decay outside
[0, 1] ...), task names and data paths, so a typo fails in a second, not after model
loading. Every problem is a one-line :class:`ConfigError` naming the file, the key and
what was expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from ..io.images import PathLike, atomic_path
from ..tasks import TaskSpec, as_task_list, available_tasks, get_task

__all__ = [
    "DataConfig",
    "TaskDataConfig",
    "ModelConfig",
    "LossConfig",
    "OptimConfig",
    "TrainLoopConfig",
    "CheckpointConfig",
    "LoggingConfig",
    "ValidationConfig",
    "TrainConfig",
    "ConfigError",
    "OBJECTIVES",
    "E2E_NOISES",
    "load_config",
    "apply_overrides",
]


class ConfigError(ValueError):
    """A configuration problem; the message names the file and key."""


@dataclass
class DataConfig:
    """Where the training data is and how it is read.

    ``format``: ``"dird"`` (``{input,mask,gt}`` folders + ``flow`` folder of .npy),
    ``"rsreal"`` (.npz with ``condition``/``out_flow``/``gs``) or ``"folder"`` (generic
    task folder: one sub-folder per condition, ``gt/`` and ``flow/``).
    ``train``/``val``: dataset roots (a split folder such as ``DIR-D/training``).
    ``flows``: flow folder for DIR-D when it lives elsewhere (pseudo labels).
    ``tasks``: a multi-task run's datasets, one :class:`TaskDataConfig` mapping per task
    (``{sir: {format: dird, train: ..., val: ...}, lens: {...}}``); the other keys here (resolution,
    flips, workers, val_samples) apply to every task, and ``format``/``train``/``val``/``flows``
    stay unset.
    """

    format: str = "dird"
    train: str = ""
    val: str | None = None
    flows: str | None = None
    resolution: list[int] | None = None  # (H, W); None = the task's resolution
    hflip: float = 0.5
    vflip: float = 0.0
    num_workers: int = 2
    val_samples: int = 8
    tasks: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskDataConfig:
    """One task's dataset in a multi-task run (``data.tasks.<name>``): the keys of
    :class:`DataConfig` that say where the data is, ``weight``, the task's share of the
    training steps relative to the others (steps go round-robin, each task ``weight`` steps per
    round), and ``resolution``, the task's own network resolution (None = ``data.resolution``)."""

    format: str = "dird"
    train: str = ""
    val: str | None = None
    flows: str | None = None
    weight: int = 1
    resolution: list[int] | None = None


@dataclass
class ModelConfig:
    """Base model: a hub id / local SD2 folder, or ``"tiny"`` for random tiny components.

    With ``base == "tiny"``, ``tiny`` holds extra keyword arguments of
    :func:`stablemotion.model.tiny_pipeline` (pipeline defaults such as
    ``default_denoising_steps``); ``seed`` seeds the tiny weights. ``init`` fine-tunes an
    existing pipeline folder instead (its weights, VAE and inference settings; same task, unless
    ``retarget`` is true: then its weights are re-mapped to this run's task or tasks with
    :func:`stablemotion.model.retarget_pipeline`, e.g. a SIR model into a multi-task model).
    """

    base: str = "stabilityai/stable-diffusion-2"
    revision: str | None = None
    local_files_only: bool | None = None
    vae: str | None = None  # optional fine-tuned flow VAE folder (replaces the base VAE)
    tiny: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    init: str | None = None  # a StableMotion pipeline folder to fine-tune (replaces base/tiny; same task)
    retarget: bool = False  # allow model.init of other tasks: re-map its conv_in and prompts to this run's


#: ``loss.objective`` values: the diffusion v-loss (plus the task's image terms), or end-to-end
#: one-step training on the decoded flow (:mod:`stablemotion.training.e2e`).
OBJECTIVES = ("diffusion", "e2e")
#: ``loss.e2e_noise`` values: the latent the one-step UNet call gets in end-to-end training.
E2E_NOISES = ("gaussian", "zeros")


@dataclass
class LossConfig:
    """Loss weights override the task's defaults key by key (``{"vgg": 0}`` turns VGG off).

    ``objective``: ``"diffusion"`` (v-loss at random timesteps, plus the task's image terms of the
    one-shot x0) or ``"e2e"`` (end-to-end one-step training, :mod:`stablemotion.training.e2e`: the UNet
    runs as one-step inference does, the frozen VAE decodes the flow in the graph, and the loss is
    ``weights.epe`` x end-point error (px) + ``weights.photo`` x L1 of the warped input, plus any
    warp/mask/vgg weights; the timestep and pyramid keys do not apply). ``e2e_noise``: the e2e
    initial latent, ``"gaussian"`` (what the pipeline draws by default) or ``"zeros"`` (E2E-FT; call
    the pipeline with zero ``latents`` then, as validation does).
    """

    objective: str = "diffusion"
    e2e_noise: str = "gaussian"
    weights: dict[str, float] = field(default_factory=dict)
    vgg_weights: str | None = "imagenet"  # "imagenet", a local .pth/.safetensors path, or null = random
    pyramid_noise: bool = True
    pyramid_strength: float = 0.9
    pyramid_levels: int = 10
    # Training timesteps are drawn uniformly from [min, max] (the method: [0, 999]). [999, 999]
    # trains only the one-step path (t = 999 -> x0) that inference uses: faster for small budgets.
    timesteps: list[int] = field(default_factory=lambda: [0, 999])
    # Fraction of samples trained at the largest timestep whatever ``timesteps`` says: keeps
    # the one-step path strong while the rest of [min, max] keeps multi-step inference usable.
    one_step_fraction: float = 0.0


@dataclass
class OptimConfig:
    lr: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-2
    eps: float = 1e-8
    grad_clip: float = 1.0
    lr_schedule: str = "constant"  # any diffusers.optimization.get_scheduler name
    warmup_steps: int = 0


@dataclass
class TrainLoopConfig:
    """``stage``: ``"unet"`` (the motion model), ``"vae"`` (fine-tune the VAE decoder as a
    flow codec, encoder frozen so image latents stay valid; exported as a ``vae/`` folder
    that ``model.vae`` of a UNet run, or a pipeline, loads) or ``"regression"`` (the plain
    baseline :class:`~stablemotion.model.FlowRegressor`, laid out by ``model.tiny``, trained
    with the task's warp/mask losses; exported as a ``regressor/`` folder). ``vae_train_encoder`` also
    trains the encoder, with an image-reconstruction loss on the inputs and targets: for
    small VAEs trained from scratch, never for the pretrained SD2 VAE."""

    stage: str = "unet"
    vae_train_encoder: bool = False
    batch_size: int = 16  # per process
    grad_accum: int = 1
    max_steps: int = 70000
    # Wall-clock budget of the run in minutes (None = none): at the budget the run ends as if
    # max_steps were reached (checkpoint, export); for fixed-time runs such as configs/gpu_recipe.sh.
    max_minutes: float | None = None
    mixed_precision: str = "no"  # "no", "bf16", "fp16"
    gradient_checkpointing: bool = False
    ema: bool = True
    ema_decay: float = 0.9999
    ema_power: float = 2 / 3
    seed: int = 0
    device: str | None = None  # None = accelerate's choice; "cpu" forces CPU


@dataclass
class CheckpointConfig:
    output_dir: str = "runs/experiment"
    every: int = 1000
    keep: int = 3


@dataclass
class LoggingConfig:
    every: int = 10
    tensorboard: bool = True


@dataclass
class ValidationConfig:
    every: int = 1000  # 0 disables periodic validation
    steps: int = 1
    grid_samples: int = 4


@dataclass
class TrainConfig:
    """A whole experiment. ``task`` is a registered name or a task dict (custom task), or a list
    of them: a multi-task model (one UNet, a learned prompt per task), its data in ``data.tasks``."""

    task: Any = "sir"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    source: str | None = None  # file the config came from (set by load_config)

    @property
    def is_multi_task(self) -> bool:
        return isinstance(self.task, (list, tuple))

    @property
    def task_specs(self) -> list[TaskSpec]:
        """The tasks trained (one for a single-task run)."""
        return as_task_list(self.task)

    @property
    def task_spec(self) -> TaskSpec:
        """The task (a multi-task run: the first, the model's default task)."""
        return self.task_specs[0] if self.is_multi_task else get_task(self.task)

    def task_resolution(self, name: str) -> tuple[int, int]:
        """(H, W) that task ``name`` trains at: its ``data.tasks.<name>.resolution`` in a
        multi-task run, else :attr:`resolution`."""
        res = self.task_data(name).resolution if self.is_multi_task else None
        return (int(res[0]), int(res[1])) if res else self.resolution

    def task_data(self, name: str) -> TaskDataConfig:
        """Where task ``name``'s data is: ``data.tasks.<name>`` (multi-task) or ``data``."""
        if not self.is_multi_task:
            d = self.data
            return TaskDataConfig(format=d.format, train=d.train, val=d.val, flows=d.flows)
        if name not in self.data.tasks:
            raise ConfigError(f"{self.source or '<config>'}: data.tasks has no entry for task {name!r} "
                              f"(it has {sorted(self.data.tasks)})")
        return _build(TaskDataConfig, self.data.tasks[name], self.source or "<config>", prefix=f"data.tasks.{name}.")

    @property
    def resolution(self) -> tuple[int, int]:
        res = self.data.resolution or self.task_spec.resolution
        return int(res[0]), int(res[1])

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source", None)
        if isinstance(self.task, TaskSpec):
            d["task"] = self.task.to_dict()
        return d

    def save(self, path: PathLike) -> Path:
        with atomic_path(path) as tmp:
            tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return Path(path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<config>") -> TrainConfig:
        cfg = _build(cls, data, source, prefix="")
        cfg.source = source
        return cfg

    def validate(self, check_paths: bool = True) -> TrainConfig:
        """Raise :class:`ConfigError` on any inconsistency (before anything is loaded)."""
        src = self.source or "<config>"
        try:
            specs = self.task_specs
            spec = self.task_spec
        except ValueError as exc:
            raise ConfigError(f"{src}: task: {exc}") from exc
        if self.is_multi_task:
            if self.train.stage != "unet":
                raise ConfigError(f"{src}: a multi-task run (task: a list) trains the UNet only; "
                                  f"train.stage {self.train.stage!r} is for one task")
            extra = set(self.data.tasks) - {t.name for t in specs}
            if extra:
                raise ConfigError(f"{src}: data.tasks has entries for {sorted(extra)}, which are not in task: "
                                  f"{[t.name for t in specs]}")
        elif self.data.tasks:
            raise ConfigError(f"{src}: data.tasks is for a multi-task run (task: a list of tasks)")
        for s in specs:
            where = f"data.tasks.{s.name}." if self.is_multi_task else "data."
            td = self.task_data(s.name)
            fmt = td.format
            if fmt not in ("dird", "rsreal", "folder"):
                raise ConfigError(f"{src}: {where}format must be 'dird', 'rsreal' or 'folder', got {fmt!r}")
            if fmt == "rsreal" and s.conditions != ("image",):
                raise ConfigError(f"{src}: {where}format 'rsreal' holds single images; task {s.name!r} needs {s.conditions}")
            if fmt == "dird" and set(s.conditions) - {"image", "mask"}:
                raise ConfigError(f"{src}: {where}format 'dird' has image and mask only; task {s.name!r} needs {s.conditions}")
            _check_range(src, f"{where}weight", td.weight, low=1)
            tres = td.resolution
            if tres is not None and (len(tres) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 8 or v % 8
                                                           for v in tres)):
                raise ConfigError(f"{src}: {where}resolution must be [height, width] in pixels, multiples of 8, "
                                  f"got {tres}")
        res = self.data.resolution
        if res is not None and (len(res) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in res)):
            raise ConfigError(f"{src}: data.resolution must be [height, width] in pixels (two integers), got {res}")
        h, w = self.resolution
        if h % 8 or w % 8 or min(h, w) < 8:
            raise ConfigError(f"{src}: resolution must be multiples of 8, got {h}x{w}")
        if self.train.stage not in ("unet", "vae", "regression"):
            raise ConfigError(f"{src}: train.stage must be 'unet', 'vae' or 'regression', got {self.train.stage!r}")
        if self.train.stage == "regression" and self.model.base != "tiny":
            raise ConfigError(f"{src}: train.stage 'regression' builds its network from model.tiny; set model.base: tiny")
        self._check_values(src)
        if self.train.vae_train_encoder and self.train.stage != "vae":
            raise ConfigError(f"{src}: train.vae_train_encoder applies to train.stage 'vae' only")
        if self.train.mixed_precision not in ("no", "bf16", "fp16"):
            raise ConfigError(f"{src}: train.mixed_precision must be 'no', 'bf16' or 'fp16'")
        ts = self.loss.timesteps
        if len(ts) != 2 or not 0 <= int(ts[0]) <= int(ts[1]) <= 999:
            raise ConfigError(f"{src}: loss.timesteps must be [min, max] with 0 <= min <= max <= 999, got {ts}")
        try:
            weights = self.loss_weights(spec)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{src}: loss.weights: {exc}") from exc
        for name, value in dataclasses.asdict(weights).items():
            _check_range(src, f"loss.weights.{name}", value, low=0.0)
        if weights.mask and "mask" not in spec.conditions:
            raise ConfigError(f"{src}: loss.weights.mask needs a task with a 'mask' condition")
        self._check_objective(src, weights)
        if weights.flow_smooth and self.train.stage != "vae":
            raise ConfigError(f"{src}: loss.weights.flow_smooth applies to train.stage 'vae' only (the decoder's smoothness)")
        if check_paths:
            for s in specs:
                where = f"data.tasks.{s.name}." if self.is_multi_task else "data."
                td = self.task_data(s.name)
                if not td.train:
                    raise ConfigError(f"{src}: {where}train is required (the training dataset folder)")
                for key in ("train", "val", "flows"):
                    val = getattr(td, key)
                    if val and not Path(val).exists():
                        raise ConfigError(f"{src}: {where}{key} folder not found: {val}")
            if self.model.vae and not Path(self.model.vae).exists():
                raise ConfigError(f"{src}: model.vae folder not found: {self.model.vae}")
            if self.model.init and not (Path(self.model.init) / "model_index.json").is_file():
                raise ConfigError(f"{src}: model.init must be a pipeline folder (with model_index.json): {self.model.init}")
        return self

    def loss_weights(self, task: TaskSpec | str | None = None) -> Any:
        """The :class:`~stablemotion.training.losses.LossWeights` of ``task`` (default: the run's task):
        its own weights overridden by ``loss.weights``. In a multi-task run the overrides apply
        to every task, except that a mask weight is dropped for tasks without a mask condition."""
        from .losses import LossWeights

        spec = self.task_spec if task is None else get_task(task)
        overrides = dict(self.loss.weights)
        if self.is_multi_task and "mask" not in spec.conditions:
            overrides.pop("mask", None)
        return LossWeights.from_mapping(spec.loss_weights, overrides)

    def _check_objective(self, src: str, weights: Any) -> None:
        """``loss.objective`` and ``loss.e2e_noise`` are known values; the e2e terms go with the e2e objective."""
        lo = self.loss
        if lo.objective not in OBJECTIVES:
            raise ConfigError(f"{src}: loss.objective must be one of {', '.join(map(repr, OBJECTIVES))}, "
                              f"got {lo.objective!r}")
        if lo.e2e_noise not in E2E_NOISES:
            raise ConfigError(f"{src}: loss.e2e_noise must be one of {', '.join(map(repr, E2E_NOISES))}, "
                              f"got {lo.e2e_noise!r}")
        if lo.objective == "e2e":
            if self.train.stage != "unet":
                raise ConfigError(f"{src}: loss.objective 'e2e' trains the UNet (train.stage 'unet'), "
                                  f"not train.stage {self.train.stage!r}")
            if not (weights.epe or weights.photo or weights.warp or weights.mask or weights.vgg):
                raise ConfigError(f"{src}: loss.objective 'e2e' needs a flow or image loss: set loss.weights.epe "
                                  "and/or loss.weights.photo above 0")
        elif weights.epe or weights.photo:
            raise ConfigError(f"{src}: loss.weights.epe and loss.weights.photo apply to loss.objective 'e2e' only "
                              f"(loss.objective is {lo.objective!r})")

    def _check_values(self, src: str) -> None:
        """Ranges of the numeric settings: each problem names the key and the expected range."""
        o, t, d, lo = self.optim, self.train, self.data, self.loss
        _check_range(src, "optim.lr", o.lr, low=0.0, low_open=True)
        if len(o.betas) != 2:
            raise ConfigError(f"{src}: optim.betas must be two numbers [beta1, beta2] in [0, 1), got {o.betas}")
        for i, beta in enumerate(o.betas):
            _check_range(src, f"optim.betas[{i}]", beta, low=0.0, high=1.0, high_open=True)
        _check_range(src, "optim.weight_decay", o.weight_decay, low=0.0)
        _check_range(src, "optim.eps", o.eps, low=0.0, low_open=True)
        _check_range(src, "optim.grad_clip", o.grad_clip, low=0.0, note="0 turns clipping off")
        _check_range(src, "optim.warmup_steps", o.warmup_steps, low=0)
        for key, val in (("train.batch_size", t.batch_size), ("train.grad_accum", t.grad_accum),
                         ("train.max_steps", t.max_steps), ("checkpoint.every", self.checkpoint.every),
                         ("checkpoint.keep", self.checkpoint.keep), ("logging.every", self.logging.every),
                         ("validation.steps", self.validation.steps)):
            _check_range(src, key, val, low=1)
        if t.max_minutes is not None:
            _check_range(src, "train.max_minutes", t.max_minutes, low=0.0, low_open=True)
        _check_range(src, "train.ema_decay", t.ema_decay, low=0.0, high=1.0)
        _check_range(src, "train.ema_power", t.ema_power, low=0.0, low_open=True)
        _check_range(src, "data.hflip", d.hflip, low=0.0, high=1.0, note="a probability")
        _check_range(src, "data.vflip", d.vflip, low=0.0, high=1.0, note="a probability")
        _check_range(src, "data.num_workers", d.num_workers, low=0)
        _check_range(src, "data.val_samples", d.val_samples, low=0)
        _check_range(src, "loss.pyramid_strength", lo.pyramid_strength, low=0.0, high=1.0)
        _check_range(src, "loss.pyramid_levels", lo.pyramid_levels, low=0)
        _check_range(src, "loss.one_step_fraction", lo.one_step_fraction, low=0.0, high=1.0)
        _check_range(src, "validation.every", self.validation.every, low=0, note="0 turns validation off")
        _check_range(src, "validation.grid_samples", self.validation.grid_samples, low=0)


def _check_range(
    src: str,
    key: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    note: str = "",
) -> None:
    """Raise a one-line :class:`ConfigError` unless ``value`` is a finite number in the range.

    An integer ``low`` (or ``high``) asks for an integer; ``*_open`` excludes the bound."""
    integer = isinstance(low, int) and not isinstance(low, bool) and (high is None or isinstance(high, int))
    if integer:
        what = "an integer"
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        what = "a finite number"
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if low is not None and high is not None:
        what += f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        what += f" {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        what += f" {'<' if high_open else '<='} {high:g}"
    if ok:
        ok = ((low is None or (value > low if low_open else value >= low))
              and (high is None or (value < high if high_open else value <= high)))
    if not ok:
        raise ConfigError(f"{src}: {key} must be {what}{f' ({note})' if note else ''}, got {value!r}")


def _build(cls: type, data: Any, source: str, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    hints = get_type_hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(str(k), list(fields), n=1)
        hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
        raise ConfigError(f"{source}: unknown key {prefix}{k}{hint}; valid keys here: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, source, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, source, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, source: str, key: str) -> Any:
    """Light type checking: numbers, strings, bools, lists, dicts, optionals."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if args and type(None) in args:  # Optional[...]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], source, key) if len(inner) == 1 else value
    bad = ConfigError(f"{source}: {key} must be {_type_name(hint)}, got {value!r}")
    if hint is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if hint is str:
        if not isinstance(value, (str, os.PathLike)):
            raise bad
        return str(value)
    if origin is list:
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise bad
        if args:
            return [_coerce(v, args[0], source, f"{key}[{i}]") for i, v in enumerate(value)]
        return list(value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise bad
        if len(args) == 2 and args[1] is not Any:
            return {k: _coerce(v, args[1], source, f"{key}.{k}") for k, v in value.items()}
        return dict(value)
    return value


def _type_name(hint: Any) -> str:
    """``float`` -> "float", ``list[int]`` -> "list[int]", ``str | None`` -> "str or null"."""
    args = get_args(hint)
    if args and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return " or ".join(_type_name(a) for a in inner) + " or null"
    if get_origin(hint) is not None:
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", str(hint))


def _key_hint(parts: Sequence[str]) -> str:
    """What the config key ``parts`` expects, e.g. "optim.lr expects float", or "" when unknown."""
    cls: Any = TrainConfig
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            return ""
        hints = get_type_hints(cls)
        if part not in hints or part == "source":
            return ""
        cls = hints[part]
        if i < len(parts) - 1 and not dataclasses.is_dataclass(cls):
            return ""
    if dataclasses.is_dataclass(cls) or cls is Any:
        return ""
    return f"{'.'.join(parts)} expects {_type_name(cls)}"


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings to a nested dict (values parsed as YAML)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override {item!r} has an empty key")
        node = data
        for p in parts[:-1]:
            if node.get(p) is None:  # absent, or an empty section in the file ("optim:")
                node[p] = {}
            if not isinstance(node[p], dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
            node = node[p]
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
            hint = _key_hint(parts)
            expected = f"{hint}; " if hint else ""
            raise ConfigError(
                f"override {item!r}: the value {raw!r} is not valid YAML ({problem}); {expected}"
                "write a number, true/false, a string, a list [a, b] or a mapping {k: v}"
            ) from None
        node[parts[-1]] = value
    return data


def load_config(path: PathLike, overrides: Sequence[str] = (), check_paths: bool = True) -> TrainConfig:
    """Read, override and validate a YAML experiment config.

    Relative data/model/output paths in the file are taken relative to the current
    working directory (as on the command line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    data = apply_overrides(data, overrides)
    cfg = TrainConfig.from_dict(data, source=str(path))
    if isinstance(cfg.task, str) and cfg.task.lower() not in available_tasks():
        raise ConfigError(f"{path}: unknown task {cfg.task!r}; available: {', '.join(available_tasks())}")
    return cfg.validate(check_paths=check_paths)

"""Experiment configuration: one YAML file per run, validated before any compute.

A config is a tree of dataclasses (:class:`TrainConfig`). :func:`load_config` reads a
YAML file, applies ``key.sub=value`` overrides (values parsed as YAML, so ``1e-4``,
``true``, ``[256, 256]`` work), rejects unknown keys with the list of valid ones, and
checks task names and data paths, so a typo fails in a second, not after model loading.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from ._io import PathLike, atomic_path
from .tasks import TaskSpec, available_tasks, get_task

__all__ = [
    "DataConfig",
    "ModelConfig",
    "LossConfig",
    "OptimConfig",
    "TrainLoopConfig",
    "CheckpointConfig",
    "LoggingConfig",
    "ValidationConfig",
    "TrainConfig",
    "ConfigError",
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


@dataclass
class ModelConfig:
    """Base model: a hub id / local SD2 folder, or ``"tiny"`` for random tiny components.

    With ``base == "tiny"``, ``tiny`` holds extra keyword arguments of
    :func:`stablemotion.model.tiny_pipeline` (pipeline defaults such as
    ``default_denoising_steps``); ``seed`` seeds the tiny weights.
    """

    base: str = "stabilityai/stable-diffusion-2"
    revision: str | None = None
    local_files_only: bool | None = None
    vae: str | None = None  # optional fine-tuned flow VAE folder (replaces the base VAE)
    tiny: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


@dataclass
class LossConfig:
    """Loss weights override the task's defaults key by key (``{"vgg": 0}`` turns VGG off)."""

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
    """A whole experiment. ``task`` is a registered name or a task dict (custom task)."""

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
    def task_spec(self) -> TaskSpec:
        return get_task(self.task)

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
            spec = self.task_spec
        except ValueError as exc:
            raise ConfigError(f"{src}: task: {exc}") from exc
        fmt = self.data.format
        if fmt not in ("dird", "rsreal", "folder"):
            raise ConfigError(f"{src}: data.format must be 'dird', 'rsreal' or 'folder', got {fmt!r}")
        if fmt == "rsreal" and spec.conditions != ("image",):
            raise ConfigError(f"{src}: data.format 'rsreal' holds single images; task {spec.name!r} needs {spec.conditions}")
        if fmt == "dird" and set(spec.conditions) - {"image", "mask"}:
            raise ConfigError(f"{src}: data.format 'dird' has image and mask only; task {spec.name!r} needs {spec.conditions}")
        h, w = self.resolution
        if h % 8 or w % 8 or min(h, w) < 8:
            raise ConfigError(f"{src}: resolution must be multiples of 8, got {h}x{w}")
        if self.train.stage not in ("unet", "vae", "regression"):
            raise ConfigError(f"{src}: train.stage must be 'unet', 'vae' or 'regression', got {self.train.stage!r}")
        if self.train.stage == "regression" and self.model.base != "tiny":
            raise ConfigError(f"{src}: train.stage 'regression' builds its network from model.tiny; set model.base: tiny")
        if not 0.0 <= self.loss.one_step_fraction <= 1.0:
            raise ConfigError(f"{src}: loss.one_step_fraction must be in [0, 1], got {self.loss.one_step_fraction}")
        if self.train.vae_train_encoder and self.train.stage != "vae":
            raise ConfigError(f"{src}: train.vae_train_encoder applies to train.stage 'vae' only")
        if self.train.mixed_precision not in ("no", "bf16", "fp16"):
            raise ConfigError(f"{src}: train.mixed_precision must be 'no', 'bf16' or 'fp16'")
        for key, val in (("train.batch_size", self.train.batch_size), ("train.grad_accum", self.train.grad_accum),
                         ("train.max_steps", self.train.max_steps), ("checkpoint.keep", self.checkpoint.keep)):
            if val < 1:
                raise ConfigError(f"{src}: {key} must be >= 1, got {val}")
        ts = self.loss.timesteps
        if len(ts) != 2 or not 0 <= int(ts[0]) <= int(ts[1]) <= 999:
            raise ConfigError(f"{src}: loss.timesteps must be [min, max] with 0 <= min <= max <= 999, got {ts}")
        if self.optim.lr <= 0 or len(self.optim.betas) != 2:
            raise ConfigError(f"{src}: optim.lr must be > 0 and optim.betas two numbers")
        try:
            from .losses import LossWeights

            weights = LossWeights.from_mapping(spec.loss_weights, self.loss.weights)
        except ValueError as exc:
            raise ConfigError(f"{src}: loss.weights: {exc}") from exc
        if weights.mask and "mask" not in spec.conditions:
            raise ConfigError(f"{src}: loss.weights.mask needs a task with a 'mask' condition")
        if check_paths:
            if not self.data.train:
                raise ConfigError(f"{src}: data.train is required (the training dataset folder)")
            for key in ("train", "val", "flows"):
                val = getattr(self.data, key)
                if val and not Path(val).exists():
                    raise ConfigError(f"{src}: data.{key} folder not found: {val}")
            if self.model.vae and not Path(self.model.vae).exists():
                raise ConfigError(f"{src}: model.vae folder not found: {self.model.vae}")
        return self


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
    bad = ConfigError(f"{source}: {key} must be {getattr(hint, '__name__', hint)}, got {value!r}")
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
        return list(value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise bad
        return dict(value)
    return value


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
            if not isinstance(node.get(p, {}), dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(raw)
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

"""Fine-tune Stable Diffusion into StableMotion, on 1 CPU process or many GPUs (accelerate).

One code path for every task: the task description says which conditions are encoded,
which losses are on, and the warp padding. ``accelerate launch -m stablemotion.cli train
CONFIG`` (or ``stablemotion train``) runs it data-parallel; each process takes its
slice of every global batch.

Reproducibility and safety:

* batches and noise are pure functions of ``(seed, step, process)``, so a resumed run
  sees exactly the data and noise the uninterrupted run would have seen;
* checkpoints are written to a hidden temporary folder and renamed into place after a
  ``COMPLETE`` marker, so an interrupted save never replaces or corrupts the previous one;
  ``--resume`` takes the newest checkpoint that is complete *and readable*: one damaged
  afterwards (truncated weights, missing EMA state, corrupt optimizer state) is skipped
  with a warning naming it and why, and the previous one is used;
* checkpoint and export files get the usual umask-based mode (0644 under umask 022);
* nothing in a checkpoint can run code: the EMA weights are safetensors and every pickled
  file accelerate writes is checked with the weights-only unpickler before it is read
  (:mod:`stablemotion.training.checkpoint_files`).

A multi-task run (``task:`` a list) trains one UNet and a learned prompt per task
(:class:`~stablemotion.model.components.TaskEmbedding`) on every task's data: the steps go
round-robin over the tasks (each task's batches are its own, with its own loss weights and warp
padding), the conditions a task lacks are fed as constants, and validation reports each task.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import struct
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from ..core.errors import is_out_of_memory, is_out_of_space
from ..core.flow import decode_flow, encode_flow, end_point_error, flow_to_color, warp
from ..core.metrics import psnr_torch, ssim_torch
from ..data import Augment, DIRDDataset, RSRealDataset, TaskFolderDataset
from ..io.images import save_image, umask_modes
from ..model.components import decode_flow_latents, encode_latents
from ..model.loading import build_pipeline, load_pipeline, retarget_pipeline
from ..model.regression import FlowRegressor
from ..model.tiny import tiny_pipeline
from ..tasks import MASK_CONDITIONS, TaskSpec, missing_condition_value, union_conditions
from .checkpoint_files import (
    EMA_FILE,
    LEGACY_EMA_FILE,
    UnsafeCheckpointError,
    check_pickled_files,
    load_ema_state,
    save_ema_state,
)
from .config import TrainConfig
from .losses import (
    LossWeights,
    PerceptualLoss,
    flow_smoothness_loss,
    gt_valid_region,
    mask_loss,
    pyramid_noise_like,
    v_target,
    warp_loss,
    x0_from_v,
)

__all__ = ["Trainer", "TrainResult", "CheckpointError", "TrainingResourceError", "batch_bytes", "build_dataset",
           "check_batch_fits", "find_checkpoints", "latest_checkpoint"]

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
COMPLETE_MARKER = "COMPLETE"
_STATE_FILE = "trainer_state.json"
_EXPORT_FOLDERS = {"unet": "pipeline", "vae": "vae", "regression": "regressor"}


# --------------------------------------------------------------------------- data
def build_dataset(cfg: TrainConfig, split: str = "train", task: str | None = None) -> Dataset:
    """The configured dataset (no augmentation); ``split`` is ``"train"`` or ``"val"``;
    ``task``: which task's data in a multi-task run (default: the run's task)."""
    spec = cfg.task_spec if task is None else next(t for t in cfg.task_specs if t.name == task)
    data = cfg.task_data(spec.name)
    root = data.train if split == "train" else data.val
    if not root:
        where = f"data.tasks.{spec.name}" if cfg.is_multi_task else "data"
        raise ValueError(f"no {where}.{split} folder configured")
    if data.format == "dird":
        flows: Any = data.flows if (split == "train" and data.flows) else None
        return DIRDDataset(root, split="", flow_dir=flows)
    if data.format == "rsreal":
        return RSRealDataset(root)
    return TaskFolderDataset(root, spec)


class _StepBatches(Sampler[list[tuple[int, int]]]):
    """Global batch ``s`` = positions ``[s*G, (s+1)*G)`` of an endless stream of per-epoch
    permutations; this process yields its slice of each. Keys are ``(epoch, index)``."""

    def __init__(self, n: int, batch_size: int, num_processes: int, rank: int, seed: int, start_step: int, steps: int):
        self.n, self.bs, self.world, self.rank = n, batch_size, num_processes, rank
        self.seed, self.start, self.steps = seed, start_step, steps
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g)}
        return self._perms[epoch]

    def batch_keys(self, step: int) -> list[tuple[int, int]]:
        g = self.bs * self.world
        first = step * g + self.rank * self.bs
        keys = []
        for pos in range(first, first + self.bs):
            epoch, off = divmod(pos, self.n)
            keys.append((epoch, int(self._perm(epoch)[off])))
        return keys

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.steps):
            yield self.batch_keys(step)

    def __len__(self) -> int:
        return max(0, self.steps - self.start)


class _AugmentedView(Dataset):
    """Applies :class:`Augment` with a generator seeded by ``(seed, epoch, index)``."""

    def __init__(self, base: Dataset, size: tuple[int, int], hflip: float, vflip: float, seed: int, masks: tuple[str, ...]):
        self.base, self.size, self.hflip, self.vflip, self.seed, self.masks = base, size, hflip, vflip, seed, masks

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch * 10_007 + index) % (2**63))
        sample = self.base[index]
        return Augment(self.size, self.hflip, self.vflip, mask_keys=self.masks, generator=g)(sample)


class _TaskMix(Dataset):
    """A multi-task run's training data: key ``(task index, epoch, index)`` -> that task's
    augmented sample, with ``"task"`` (its name) and every model condition the task lacks filled
    with its constant (:func:`~stablemotion.tasks.missing_condition_value`, in [-1, 1])."""

    def __init__(self, views: list[_AugmentedView], specs: list[TaskSpec], conditions: tuple[str, ...]) -> None:
        self.views, self.specs, self.conditions = views, specs, conditions

    def __len__(self) -> int:
        return sum(len(v) for v in self.views)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        i, epoch, index = key
        sample = dict(self.views[i][(epoch, index)])
        like = sample["image"]
        for name in self.conditions:
            if name not in self.specs[i].conditions:
                channels = 1 if name in MASK_CONDITIONS else 3
                sample[name] = like.new_full((channels, *like.shape[-2:]), missing_condition_value(name) * 2 - 1)
        sample["task"] = self.specs[i].name
        return sample


class _TaskRounds(Sampler[list[tuple[int, int, int]]]):
    """Multi-task batches: micro-step ``s`` belongs to task ``schedule[s % len(schedule)]`` (each
    task ``weight`` times per round) and is that task's ``n``-th batch, drawn from its own
    :class:`_StepBatches` stream, so a resumed run sees the same batches."""

    def __init__(self, streams: list[_StepBatches], weights: list[int], start_step: int, steps: int) -> None:
        self.streams, self.start, self.steps = streams, start_step, steps
        self.schedule = [i for i, w in enumerate(weights) for _ in range(w)]

    def task_of(self, step: int) -> tuple[int, int]:
        """(task index, that task's own step) of micro-step ``step``."""
        rounds, pos = divmod(step, len(self.schedule))
        task = self.schedule[pos]
        return task, rounds * self.schedule.count(task) + self.schedule[:pos].count(task)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for step in range(self.start, self.steps):
            task, own = self.task_of(step)
            yield [(task, epoch, index) for epoch, index in self.streams[task].batch_keys(own)]

    def __len__(self) -> int:
        return max(0, self.steps - self.start)


class _PromptedUNet(torch.nn.Module):
    """A multi-task model's trained parts, one module for ``accelerate.prepare`` (DDP): the
    UNet and the per-task prompts it reads through cross-attention."""

    def __init__(self, unet: torch.nn.Module, prompts: torch.nn.Module) -> None:
        super().__init__()
        self.unet, self.prompts = unet, prompts

    def forward(self, x: torch.Tensor, t: torch.Tensor, task: str) -> torch.Tensor:
        emb = self.prompts(x.shape[0], task).to(x.dtype)
        return self.unet(x, t, encoder_hidden_states=emb, return_dict=False)[0]


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in samples[0]:
        vals = [s[key] for s in samples]
        out[key] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out


class _FlowCodec(torch.nn.Module):
    """VAE round trip (B, 3, H, W) -> (B, 3, H, W): decode(encoder mean).

    A module of its own so that ``accelerate.prepare`` (DDP) sees a ``forward``; gradients
    reach the encoder only when it is trained too."""

    def __init__(self, vae: torch.nn.Module, train_encoder: bool = False) -> None:
        super().__init__()
        self.vae = vae
        self.train_encoder = train_encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(self.train_encoder and torch.is_grad_enabled()):
            z = self.vae.encode(x.to(self.vae.dtype)).latent_dist.mean
        return self.vae.decode(z).sample


# --------------------------------------------------------------------------- checkpoints
def find_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``checkpoint-N`` folder in ``output_dir``, newest first."""
    root = Path(output_dir)
    found = []
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX):
                try:
                    found.append((int(p.name[len(CHECKPOINT_PREFIX) :]), p))
                except ValueError:
                    continue
    return sorted(found, reverse=True)


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (missing, incomplete or unreadable).

    ``reason`` is the short cause without the path (for lists of skipped checkpoints)."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class TrainingResourceError(ValueError):
    """The run ran out of memory or disk space; the message names the setting to lower."""


#: Bytes per pixel of one sample's tensors in a batch (float32 image, gt, flow, mask, the
#: encoded conditions and their copies on the way to the network): the floor a batch needs
#: before any activation. Used only to refuse batches that cannot fit at all.
_BATCH_BYTES_PER_PIXEL = 4 * (3 + 3 + 2 + 1) * 2


def batch_bytes(cfg: TrainConfig) -> int:
    """Lower bound of one process's batch memory in bytes: ``batch_size x H x W x`` the
    sample tensors (largest task resolution), before any network activation."""
    h, w = max((cfg.task_resolution(t.name) for t in cfg.task_specs), key=lambda r: r[0] * r[1])
    return cfg.train.batch_size * h * w * _BATCH_BYTES_PER_PIXEL


def check_batch_fits(cfg: TrainConfig, available: int | None = None) -> None:
    """Refuse a batch whose sample tensors alone exceed the memory available (one line naming
    ``train.batch_size``). ``available``: bytes (default: free RAM, or free GPU memory on CUDA).

    Example:
        >>> from stablemotion.training.config import TrainConfig
        >>> cfg = TrainConfig()
        >>> cfg.train.batch_size = 100_000
        >>> check_batch_fits(cfg, available=8 * 2**30)
        Traceback (most recent call last):
        ...
        stablemotion.training.TrainingResourceError: train.batch_size=100000 needs at least 1.4e+03 GB ...
    """
    if available is None:
        if cfg.train.device != "cpu" and torch.cuda.is_available():
            available = torch.cuda.mem_get_info()[0]
        else:
            import psutil

            available = psutil.virtual_memory().available
    need = batch_bytes(cfg)
    if need > available:
        h, w = max((cfg.task_resolution(t.name) for t in cfg.task_specs), key=lambda r: r[0] * r[1])
        raise TrainingResourceError(
            f"train.batch_size={cfg.train.batch_size} needs at least {need / 1e9:.2g} GB for the batch's "
            f"{h}x{w} samples alone (before the network's activations); {available / 1e9:.2g} GB is available: "
            "lower train.batch_size (raise train.grad_accum to keep the effective batch)"
        )


def _safetensors_problem(file: Path) -> str | None:
    """Cheap integrity check of a ``.safetensors`` file: a readable header whose tensors
    all end inside the file (catches truncation without reading the tensor data)."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{file.name} is truncated ({size} bytes)"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"{file.name} is truncated ({size} bytes, header alone needs {n + 8})"
            header = json.loads(f.read(n))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        return f"{file.name} has an unreadable header ({type(exc).__name__})"
    need = 8 + n + max(ends, default=0)
    if size < need:
        return f"{file.name} is truncated ({size} of {need} bytes)"
    return None


def _checkpoint_problem(path: Path, need_ema: bool = False) -> str | None:
    """Why ``path`` cannot be resumed from, or ``None``. Cheap: no tensor is loaded.

    ``need_ema``: the run uses EMA, so the checkpoint must hold its EMA state."""
    if not path.is_dir():
        return "not a checkpoint folder"
    if not (path / COMPLETE_MARKER).is_file():
        return "no COMPLETE marker (interrupted save)"
    try:
        state = json.loads((path / _STATE_FILE).read_text())
        int(state["step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable {_STATE_FILE} ({exc})"
    weights = sorted(path.glob("model*.safetensors"))
    if not weights and not any(path.glob("pytorch_model*.bin")):
        return "model weights missing"
    for file in weights:
        problem = _safetensors_problem(file)
        if problem is not None:
            return problem
    optimizer = sorted(path.glob("optimizer*.bin"))
    if not optimizer:
        return "optimizer state missing"
    empty = [f.name for f in (*optimizer, *path.glob("pytorch_model*.bin")) if f.stat().st_size == 0]
    if empty:
        return f"{empty[0]} is empty"
    if need_ema and not ((path / EMA_FILE).is_file() or (path / LEGACY_EMA_FILE).is_file()):
        return f"EMA state missing ({EMA_FILE}) but this run uses EMA"
    return None


def latest_checkpoint(output_dir: str | os.PathLike, need_ema: bool = False) -> Path | None:
    """The newest complete checkpoint; broken ones are skipped with a warning.

    Only cheap checks are made (see :meth:`Trainer.resume` for the full fallback, which
    also skips checkpoints whose files fail to load)."""
    for _, path in find_checkpoints(output_dir):
        problem = _checkpoint_problem(path, need_ema=need_ema)
        if problem is None:
            return path
        _warn_skip(path, problem)
    return None


def _warn_skip(path: Path, problem: str, say: Any = print) -> None:
    logger.warning("skipping checkpoint %s: %s", path, problem)
    say(f"warning: skipping checkpoint {path}: {problem}")


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class TrainResult:
    """What a run produced: the final step, the exported pipeline folder, the last losses."""

    step: int
    pipeline_dir: Path | None
    last_losses: dict[str, float]
    history: list[dict[str, float]]


# --------------------------------------------------------------------------- trainer
class Trainer:
    """Trains the UNet of a StableMotion pipeline for ``config.task``.

    Args:
        config: a validated :class:`~stablemotion.training.config.TrainConfig`.
        pipeline: optional pre-built pipeline (tests); default builds it from
            ``config.model`` (``"tiny"`` = random tiny components, else an SD2 checkpoint).
        train_dataset / val_dataset: optional datasets overriding ``config.data``.
    """

    def __init__(
        self,
        config: TrainConfig,
        pipeline: Any | None = None,
        train_dataset: Dataset | None = None,
        val_dataset: Dataset | None = None,
    ) -> None:
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        config.validate(check_paths=False)  # value ranges too, for configs built in code
        check_batch_fits(config)
        self.cfg = config
        self.task: TaskSpec = config.task_spec
        #: The tasks trained, by name (one for a single-task run) and the model's conditions.
        self.tasks: dict[str, TaskSpec] = {t.name: t for t in config.task_specs}
        self.multi = config.is_multi_task
        self.conditions = union_conditions(list(self.tasks.values()))
        self.out = Path(config.checkpoint.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        log_with = None
        if config.logging.tensorboard:
            try:
                import tensorboard  # noqa: F401

                log_with = "tensorboard"
            except ImportError:
                print("warning: tensorboard is not installed; scalars are only printed")
        _reset_accelerator_if_changed(config.train.mixed_precision)
        self.acc = Accelerator(
            mixed_precision=config.train.mixed_precision,
            gradient_accumulation_steps=config.train.grad_accum,
            log_with=log_with,
            project_config=ProjectConfiguration(project_dir=str(self.out), logging_dir=str(self.out / "logs")),
            cpu=config.train.device == "cpu",
        )
        self.task_weights: dict[str, LossWeights] = {n: config.loss_weights(t) for n, t in self.tasks.items()}
        self.weights = self.task_weights[self.task.name]
        self.pipe = pipeline if pipeline is not None else self._build_pipeline()
        if self.multi and list(self.pipe.tasks) != list(self.tasks):
            raise ValueError(f"the pipeline serves {list(self.pipe.tasks)}, the config trains {list(self.tasks)}")
        # One dataset per task (train_dataset / val_dataset: a dataset, or {task: dataset} in a multi-task run)
        self.train_sets = self._datasets(train_dataset, "train")
        self.val_sets = self._datasets(val_dataset, "val")
        self.train_ds = self.train_sets[self.task.name]
        self.val_ds = self.val_sets.get(self.task.name)
        for name, ds in self.train_sets.items():
            self._check_dataset(ds, f"{name} training" if self.multi else "training", self.tasks[name])

        self.stage = config.train.stage
        self.vae = self.pipe.vae.requires_grad_(False).eval()
        self.unet = self.pipe.unet
        self.unet.requires_grad_(self.stage == "unet")
        if self.stage == "unet":
            self.unet.train()
            if config.train.gradient_checkpointing:
                self.unet.enable_gradient_checkpointing()
            self.model: torch.nn.Module = self.unet
            if self.multi:  # the per-task prompts are learned with the UNet
                self.pipe.text_embedding.embedding.requires_grad_(True)
                self.model = _PromptedUNet(self.unet, self.pipe.text_embedding)
        elif self.stage == "regression":
            self.model = FlowRegressor.for_task(self.task, seed=config.model.seed, **config.model.tiny).train()
            if config.train.gradient_checkpointing:
                self.model.net.enable_gradient_checkpointing()
        else:  # the VAE as a flow codec: the decoder, and the encoder only when asked
            self.unet.eval()
            self.vae.decoder.requires_grad_(True).train()
            self.vae.post_quant_conv.requires_grad_(True)
            if config.train.vae_train_encoder:
                self.vae.encoder.requires_grad_(True).train()
                self.vae.quant_conv.requires_grad_(True)
            if config.train.gradient_checkpointing:
                self.vae.enable_gradient_checkpointing()
            self.model = _FlowCodec(self.vae, train_encoder=config.train.vae_train_encoder)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.perceptual = (PerceptualLoss(config.loss.vgg_weights)
                           if (any(w.vgg for w in self.task_weights.values()) and self.stage in ("unet", "regression"))
                           else None)

        self.ema = None
        if config.train.ema:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(params, decay=config.train.ema_decay, power=config.train.ema_power)
        o = config.optim
        self.optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)
        from diffusers.optimization import get_scheduler

        self.lr_scheduler = get_scheduler(
            o.lr_schedule,
            optimizer=self.optimizer,
            num_warmup_steps=o.warmup_steps * self.acc.num_processes,
            num_training_steps=config.train.max_steps * self.acc.num_processes,
        )
        self.model, self.optimizer, self.lr_scheduler = self.acc.prepare(self.model, self.optimizer, self.lr_scheduler)
        if self.stage == "unet" and not self.multi:
            self.unet = self.model
        self.unet.to(self.acc.device)
        self.vae.to(self.acc.device)
        if self.perceptual is not None:
            self.perceptual.to(self.acc.device)
        if self.ema is not None:
            self.ema.to(self.acc.device)
        self.embedding = None if self.multi else self.pipe.text_embedding(1).detach().to(self.acc.device)
        self.alphas_cumprod = self.pipe.scheduler.alphas_cumprod.to(self.acc.device)
        self.num_train_timesteps = int(self.pipe.scheduler.config.num_train_timesteps)
        self.step = 0

    # ------------------------------------------------------------------ setup
    def _build_pipeline(self) -> Any:
        m = self.cfg.model
        want: Any = list(self.tasks.values()) if self.multi else self.task  # specs: custom tasks need no registry
        names: Any = list(self.tasks) if self.multi else self.task.name
        if m.init:
            pipe = load_pipeline(m.init, torch.float32, progress=False)
            has = list(pipe.tasks) if pipe.config.get("tasks") else pipe.task.name
            if has != names:
                if not m.retarget:
                    raise ValueError(f"model.init {m.init} is a {has!r} pipeline but the config trains {names!r}; "
                                     "set model.retarget: true to re-map its weights to this run's task(s)")
                pipe = retarget_pipeline(pipe, want, seed=m.seed)
        elif m.base == "tiny":
            pipe = tiny_pipeline(want, seed=m.seed, **m.tiny)
        else:
            pipe = build_pipeline(m.base, want, revision=m.revision, local_files_only=m.local_files_only)
        if m.vae:
            from diffusers import AutoencoderKL

            pipe.vae = AutoencoderKL.from_pretrained(m.vae)
        pipe.register_to_config(default_processing_resolution=list(self.cfg.resolution))
        if self.multi:  # tasks trained at their own resolution run at it by default
            own = {n: list(self.cfg.task_resolution(n)) for n in self.tasks}
            pipe.register_to_config(task_resolutions={n: r for n, r in own.items() if r != list(self.cfg.resolution)}
                                    or None)
        return pipe

    def _datasets(self, given: Any, split: str) -> dict[str, Dataset]:
        """{task: dataset} from ``given`` (one dataset, or a mapping in a multi-task run) or the config."""
        if given is not None:
            sets = dict(given) if isinstance(given, Mapping) else {self.task.name: given}
            missing = set(self.tasks) - set(sets)
            if split == "train" and missing:
                raise ValueError(f"no {split} dataset for tasks {sorted(missing)}")
            return sets
        return {n: build_dataset(self.cfg, split, n) for n in self.tasks
                if (self.cfg.task_data(n).train if split == "train" else self.cfg.task_data(n).val)}

    def _check_dataset(self, ds: Dataset, what: str, task: TaskSpec | None = None) -> None:
        task = task or self.task
        if len(ds) == 0:  # type: ignore[arg-type]
            raise ValueError(f"the {what} dataset is empty")
        sample = ds[0]
        needed = set(task.conditions) | {"gt", "flow"}
        missing = needed - set(sample)
        if missing:
            raise ValueError(
                f"the {what} dataset gives {sorted(k for k in sample if k != 'name')} but task {task.name!r} "
                f"training needs {sorted(needed)} (missing {sorted(missing)}; flows: make them with "
                "`stablemotion label-flows`)"
            )

    def _loader(self, start_step: int) -> DataLoader:
        c = self.cfg
        start, steps = start_step * c.train.grad_accum, c.train.max_steps * c.train.grad_accum

        def stream(ds: Dataset, seed: int) -> _StepBatches:
            return _StepBatches(len(ds), c.train.batch_size, self.acc.num_processes,  # type: ignore[arg-type]
                                self.acc.process_index, seed, start, steps)

        def view(ds: Dataset, spec: TaskSpec, seed: int) -> _AugmentedView:
            masks = tuple(k for k in spec.conditions if k in MASK_CONDITIONS)
            return _AugmentedView(ds, self.cfg.task_resolution(spec.name), c.data.hflip, c.data.vflip, seed, masks)

        if not self.multi:
            return DataLoader(view(self.train_ds, self.task, c.train.seed), batch_sampler=stream(self.train_ds, c.train.seed),
                              num_workers=c.data.num_workers, collate_fn=_collate, persistent_workers=False)
        specs = list(self.tasks.values())
        seeds = [c.train.seed * 31 + i for i in range(len(specs))]  # one data stream per task
        mix = _TaskMix([view(self.train_sets[t.name], t, sd) for t, sd in zip(specs, seeds, strict=True)], specs,
                       self.conditions)
        rounds = _TaskRounds([stream(self.train_sets[t.name], sd) for t, sd in zip(specs, seeds, strict=True)],
                             [self.cfg.task_data(t.name).weight for t in specs], start, steps)
        return DataLoader(mix, batch_sampler=rounds, num_workers=c.data.num_workers, collate_fn=_collate,
                          persistent_workers=False)

    # ------------------------------------------------------------------ one step
    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return encode_latents(self.vae, x)

    def _condition_latents(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, 4k, h, w): the model's conditions in order, encoded in one VAE batch."""
        imgs = []
        for name in self.conditions:
            x = batch[name]
            imgs.append(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)
        b, k = imgs[0].shape[0], len(imgs)
        lat = self._encode(torch.stack(imgs, 1).flatten(0, 1))
        return lat.unflatten(0, (b, k)).flatten(1, 2)

    def compute_losses(self, batch: Mapping[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """All loss terms for one batch (tensors in [-1, 1], flows in pixels; a multi-task
        batch is one task's, named by its ``"task"`` entry)."""
        dev = self.acc.device
        spec = self.tasks[batch["task"][0]] if self.multi else self.task
        batch = {k: v.to(dev) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        if self.stage == "vae":
            return self._codec_losses(batch)
        if self.stage == "regression":
            with self.acc.autocast():
                flow = self.model(self._stack_conditions(batch))
            return self._image_losses(batch, flow.float(), {})
        b = batch["gt"].shape[0]
        g = torch.Generator().manual_seed((self.cfg.train.seed * 7_919 + step * 104_729 + self.acc.process_index) % (2**63))
        with torch.no_grad():
            cond = self._condition_latents(batch)
            z0 = self._encode(encode_flow(batch["flow"], spec.flow_gamma))
        t_min, t_max = (int(v) for v in self.cfg.loss.timesteps)
        t_max = min(t_max, self.num_train_timesteps - 1)
        t = torch.randint(t_min, t_max + 1, (b,), generator=g)
        if self.cfg.loss.one_step_fraction > 0:
            t = torch.where(torch.rand(b, generator=g) < self.cfg.loss.one_step_fraction, t_max, t)
        t = t.to(dev)
        if self.cfg.loss.pyramid_noise:
            strength = self.cfg.loss.pyramid_strength * t.float().cpu() / self.num_train_timesteps
            noise = pyramid_noise_like(z0.cpu().float(), strength, self.cfg.loss.pyramid_levels, generator=g)
        else:
            noise = torch.randn(z0.shape, generator=g)
        noise = noise.to(dev, z0.dtype)
        sa = self.alphas_cumprod[t].view(-1, 1, 1, 1).to(z0.dtype)
        z_t = sa.sqrt() * z0 + (1 - sa).sqrt() * noise
        with self.acc.autocast():
            if self.multi:
                v_hat = self.model(torch.cat([cond, z_t], 1), t, spec.name)
            else:
                emb = self.embedding.expand(b, -1, -1)
                v_hat = self.unet(torch.cat([cond, z_t], 1), t, encoder_hidden_states=emb, return_dict=False)[0]
        losses: dict[str, torch.Tensor] = {}
        losses["v"] = F.mse_loss(v_hat.float(), v_target(z0, noise, self.alphas_cumprod, t).float())
        w = self.task_weights[spec.name]
        if w.warp or w.mask or w.vgg:
            z0_hat = x0_from_v(z_t.float(), v_hat.float(), self.alphas_cumprod, t)
            with self.acc.autocast():
                flow_hat = decode_flow_latents(self.vae, z0_hat, spec.flow_gamma)
            return self._image_losses(batch, flow_hat, losses, spec)
        losses["total"] = w.v * losses["v"]
        return losses

    def _stack_conditions(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, C, H, W): the task's conditions in order, as the regressor takes them."""
        return torch.cat([batch[name] for name in self.task.conditions], 1)

    def _image_losses(
        self, batch: Mapping[str, torch.Tensor], flow: torch.Tensor, losses: dict[str, torch.Tensor],
        task: TaskSpec | None = None,
    ) -> dict[str, torch.Tensor]:
        """Add the warp / mask / perceptual terms of a predicted flow (pixels) and the total."""
        task = task or self.task
        w = self.task_weights[task.name]
        pad = task.padding
        valid = gt_valid_region(batch["flow"]) if task.valid_region_loss else None
        if w.warp:
            losses["warp"] = warp_loss(batch["image"], flow, batch["gt"], padding=pad, valid=valid)
        if w.mask:
            losses["mask"] = mask_loss(batch["mask"], flow, padding=pad)
        if w.vgg and self.perceptual is not None:
            pred = warp(batch["image"], flow, padding=pad, check_finite=False, fill=-1.0)
            target = batch["gt"]
            if valid is not None:
                pred, target = pred * valid, target * valid
            losses["vgg"] = self.perceptual(pred, target)
        losses["total"] = sum(getattr(w, k) * v for k, v in losses.items())
        return losses

    def _codec_losses(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """VAE stage: MSE of the decoded flow (in gamma units) + the task's warp loss (+ the
        smoothness term ``flow_smooth``, pixels, when weighted); with a
        trained encoder also the reconstruction MSE of the images (input and gt), so image
        latents stay meaningful. One forward over flows and images together (DDP-safe)."""
        gamma = self.task.flow_gamma
        target = encode_flow(batch["flow"], gamma)
        b = target.shape[0]
        images = [batch["image"], batch["gt"]] if self.cfg.train.vae_train_encoder else []
        with self.acc.autocast():
            out = self.model(torch.cat([target, *images]) if images else target)
        rec = out[:b]
        losses = {"flow": F.mse_loss(rec[:, :2].float(), target[:, :2].float())}
        if images:
            losses["image"] = F.mse_loss(out[b:].float(), torch.cat(images).float())
        flow = rec[:, :2].float() * gamma
        if self.weights.warp:
            valid = gt_valid_region(batch["flow"]) if self.task.valid_region_loss else None
            losses["warp"] = warp_loss(batch["image"], flow, batch["gt"], padding=self.task.padding, valid=valid)
        if self.weights.flow_smooth:  # pixels: the Laplacian of the decoded flow against the gt's
            losses["flow_smooth"] = flow_smoothness_loss(flow, target[:, :2].float() * gamma)
        w = self.weights
        losses["total"] = (w.flow * losses["flow"] + w.image * losses.get("image", 0.0) + w.warp * losses.get("warp", 0.0)
                           + w.flow_smooth * losses.get("flow_smooth", 0.0))
        return losses

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Write ``checkpoint-<step>`` atomically and prune to the newest ``keep``."""
        final = self.out / f"{CHECKPOINT_PREFIX}{self.step}"
        tmp = self.out / f".{CHECKPOINT_PREFIX}{self.step}.partial"
        if self.acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        self.acc.wait_for_everyone()
        try:
            # safetensors writes 0600 files: the main process gives everything it wrote the umask mode
            with umask_modes(tmp) if self.acc.is_main_process else contextlib.nullcontext():
                self.acc.save_state(str(tmp), safe_serialization=True)
                if self.acc.is_main_process:
                    if self.ema is not None:
                        save_ema_state(self.ema.state_dict(), tmp / EMA_FILE)
                    state = {"step": self.step, "stage": self.stage, "task": self._task_record(),
                             "config": self.cfg.to_dict()}
                    (tmp / _STATE_FILE).write_text(json.dumps(state, indent=1))
                    (tmp / COMPLETE_MARKER).write_text(f"{self.step}\n")
        except Exception as exc:
            if self.acc.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
            if not is_out_of_space(exc):
                raise
            previous = latest_checkpoint(self.out, need_ema=self.ema is not None)
            kept = f"the previous checkpoint {previous.name} is intact" if previous else "no earlier checkpoint exists"
            raise TrainingResourceError(
                f"no space left on the device of {self.out} while writing {final.name} ({kept}): free space, "
                "lower checkpoint.keep or set checkpoint.output_dir to a larger disk, then rerun with --resume"
            ) from None
        if self.acc.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            # Prune among checkpoints up to this step only: newer ones are ones a resume fell back
            # past (unreadable) or branched from; they are replaced when the run reaches their step,
            # and must not take the `keep` slots of the good ones.
            mine = [(step, p) for step, p in find_checkpoints(self.out) if step <= self.step]
            for _, old in mine[self.cfg.checkpoint.keep :]:
                shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()
        return final

    def _task_record(self) -> dict[str, Any]:
        """What a checkpoint records of the task(s): a task dict, or for a multi-task run the
        task names joined by "+", the model's conditions and the tasks."""
        if not self.multi:
            return self.task.to_dict()
        return {"name": "+".join(self.tasks), "conditions": list(self.conditions), "tasks": list(self.tasks)}

    def _unet_module(self) -> torch.nn.Module:
        """The trained UNet itself (unwrapped from DDP and, multi-task, from its prompts)."""
        module = self.acc.unwrap_model(self.model)
        return module.unet if isinstance(module, _PromptedUNet) else module

    def load_checkpoint(self, path: str | os.PathLike) -> int:
        """Restore model, optimizer, scheduler, RNG and EMA state; returns the step.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            CheckpointError: the checkpoint is incomplete or a file of it cannot be read
                (the trainer's state may then be partly overwritten: load another one).
            ValueError: the checkpoint is from another task or stage.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"cannot resume: checkpoint folder not found: {path}")
        problem = _checkpoint_problem(path, need_ema=self.ema is not None)
        if problem is not None:
            raise CheckpointError(f"cannot resume from {path}: {problem}", problem)
        state = json.loads((path / _STATE_FILE).read_text())
        rec, mine = state.get("task", {}), self._task_record()
        if rec.get("conditions") != mine["conditions"] or rec.get("tasks") != mine.get("tasks"):
            raise ValueError(
                f"checkpoint {path} was trained for task {rec.get('name')!r} "
                f"(conditions {rec.get('conditions')}), this run is {mine['name']!r} (conditions {mine['conditions']})"
            )
        if state.get("stage", "unet") != self.stage:
            raise ValueError(f"checkpoint {path} is from a {state.get('stage')!r} stage run, this run is {self.stage!r}")
        try:
            check_pickled_files(path)  # before accelerate unpickles anything: never run code from a checkpoint
            self.acc.load_state(str(path))
            if self.ema is not None:
                self.ema.load_state_dict(load_ema_state(path))
                self.ema.to(self.acc.device)
        except (MemoryError, torch.cuda.OutOfMemoryError, UnsafeCheckpointError):
            raise
        except Exception as exc:  # a damaged file: pickle, zip, safetensors or shape errors
            reason = f"cannot be read ({type(exc).__name__}: {_one_line(exc)})"
            raise CheckpointError(f"cannot resume from {path}: {reason}", reason) from exc
        self.step = int(state["step"])
        return self.step

    def resume(self, resume: bool | str | os.PathLike = True) -> Path | None:
        """Load the checkpoint to continue from; returns it, or ``None`` to start at step 0.

        Args:
            resume: ``True``: the newest readable checkpoint in the output folder. A path:
                that checkpoint folder, or a run folder holding ``checkpoint-N`` folders
                (then its newest readable one).

        Searching a folder, a checkpoint that is incomplete or fails to load is skipped
        with a warning naming it and why, and the previous one is tried. Raises
        ``FileNotFoundError`` for a missing path and :class:`CheckpointError` when the
        folder has checkpoints but none is readable (or the given checkpoint is not).
        A folder without any checkpoint starts a fresh run (with a note). A checkpoint file
        that is not weights only (a pickle that would run code) is never skipped over: it
        raises :class:`~stablemotion.training.checkpoint_files.UnsafeCheckpointError` and the run stops.
        """
        if not resume:
            return None
        if resume is True:
            where = self.out
        else:
            where = Path(resume)
            if not where.exists():
                raise FileNotFoundError(f"cannot resume: checkpoint folder not found: {where}")
            if not where.is_dir():
                raise NotADirectoryError(f"cannot resume from {where}: not a folder (give a checkpoint-N folder)")
            own_files = (COMPLETE_MARKER, _STATE_FILE, EMA_FILE, LEGACY_EMA_FILE, "model.safetensors", "optimizer.bin")
            if any((where / name).exists() for name in own_files):
                self.load_checkpoint(where)  # one named checkpoint: no fallback, its problem is the error
                return where
            if not find_checkpoints(where):
                raise CheckpointError(f"cannot resume from {where}: it is neither a checkpoint folder "
                                      f"(no {COMPLETE_MARKER}) nor a run folder holding {CHECKPOINT_PREFIX}N folders")
        skipped = []
        for _, path in find_checkpoints(where):
            problem = _checkpoint_problem(path, need_ema=self.ema is not None)
            if problem is None:
                try:
                    self.load_checkpoint(path)
                    return path
                except CheckpointError as exc:
                    problem = exc.reason
            _warn_skip(path, problem, say=self.acc.print)
            skipped.append(f"{path.name}: {problem}")
        if skipped:
            raise CheckpointError(
                f"cannot resume: no readable checkpoint in {where} ({'; '.join(skipped)}); "
                "move them away to start afresh"
            )
        self.acc.print(f"no checkpoint in {where}: starting from step 0")
        return None

    # ------------------------------------------------------------------ validation
    def _trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.acc.unwrap_model(self.model).parameters() if p.requires_grad]

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Temporarily swap the EMA weights into the trained module (eval mode)."""
        module = self.acc.unwrap_model(self.model)
        params = self._trainable()
        if self.ema is not None:
            self.ema.store(params)
            self.ema.copy_to(params)
        module.eval()
        try:
            yield
        finally:
            if self.ema is not None:
                self.ema.restore(params)
            module.train()
            if self.stage == "vae" and not self.cfg.train.vae_train_encoder:
                self.vae.encoder.eval()

    @torch.no_grad()
    def validate(self, max_samples: int | None = None) -> dict[str, float]:
        """Validation on the main process with the EMA weights.

        UNet stage: one-step inference, PSNR/SSIM of the prediction and of the identity
        (input vs gt), and an image grid (input | prediction | gt | flow colours); a multi-task
        run does it for each task, under ``val/<task>/``.
        VAE stage: end-point error of the flow round trip and PSNR of the warp with the
        round-tripped flow vs with the exact flow.
        """
        if not self.val_sets or not self.acc.is_main_process:
            return {}
        limit = max_samples or self.cfg.data.val_samples
        with self.ema_weights():
            if self.stage == "vae":
                return self._validate_codec(min(len(self.val_ds), limit))  # type: ignore[arg-type]
            if self.stage == "unet":
                self.pipe.unet = self._unet_module()
            out: dict[str, float] = {}
            for name, ds in self.val_sets.items():
                n = min(len(ds), limit)  # type: ignore[arg-type]
                if n == 0:
                    continue
                res = self._validate_task(ds, self.tasks[name], n, grid_name=f"{name}-" if self.multi else "")
                out.update({k.replace("val/", f"val/{name}/") if self.multi else k: v for k, v in res.items()})
            return out

    def _validate_codec(self, n: int) -> dict[str, float]:
        """VAE stage validation (inside :meth:`ema_weights`)."""
        if n == 0:
            return {}
        aug = Augment(self.cfg.resolution, 0.0, 0.0, mask_keys=tuple(k for k in self.task.conditions if k in MASK_CONDITIONS))
        codec = self.acc.unwrap_model(self.model)
        rows = []
        for i in range(n):
            s = aug(self.val_ds[i])
            flow = s["flow"][None].to(self.acc.device)
            rec = decode_flow(codec(encode_flow(flow, self.task.flow_gamma)), self.task.flow_gamma).float()
            inp, gt = s["image"][None].to(self.acc.device), s["gt"][None].to(self.acc.device)
            pad = self.task.padding
            rows.append([float(end_point_error(rec, flow)[0]),
                         float(psnr_torch(warp(inp, rec, padding=pad, fill=-1.0), gt)),
                         float(psnr_torch(warp(inp, flow, padding=pad, fill=-1.0), gt))])
        r = np.asarray(rows)
        return {"val/codec_epe": float(r[:, 0].mean()), "val/codec_warp_psnr": float(r[:, 1].mean()),
                "val/exact_flow_warp_psnr": float(r[:, 2].mean())}

    def _validate_task(self, ds: Dataset, task: TaskSpec, n: int, grid_name: str = "") -> dict[str, float]:
        """One task's validation (inside :meth:`ema_weights`): PSNR/SSIM of one-step inference
        and of the identity, and the image grid ``validation/<grid_name>step-N.png``."""
        masks = tuple(k for k in task.conditions if k in MASK_CONDITIONS)
        aug = Augment(self.cfg.task_resolution(task.name), 0.0, 0.0, mask_keys=masks)
        rows, grid = [], []
        for i in range(n):
            s = aug(ds[i])
            gt, inp = s["gt"][None], s["image"][None]
            if self.stage == "regression":
                cond = self._stack_conditions({k: s[k][None] for k in task.conditions}).to(self.acc.device)
                flow = self.acc.unwrap_model(self.model)(cond).float().cpu()
                pred = warp(inp, flow, padding=task.padding, fill=-1.0).clamp(-1, 1)
            else:
                conds = {k: (s[k][None] + 1) / 2 for k in task.conditions if k != "image"}
                out = self.pipe(
                    (s["image"][None] + 1) / 2, conditions=conds, num_inference_steps=self.cfg.validation.steps,
                    generator=torch.Generator().manual_seed(i), show_progress_bar=False, output_type="pt",
                    task=task.name,
                )
                pred = out.image.to(torch.float32) * 2 - 1
                flow = out.flow
            rows.append([
                float(psnr_torch(pred, gt)), float(ssim_torch(pred, gt)),
                float(psnr_torch(inp, gt)), float(ssim_torch(inp, gt)),
            ])
            if i < self.cfg.validation.grid_samples:
                col = torch.from_numpy(flow_to_color(flow[0])).permute(2, 0, 1).float() / 127.5 - 1
                grid.append(torch.cat([inp[0], pred[0], gt[0], col], dim=2))
        r = np.asarray(rows)
        metrics = {"val/psnr": r[:, 0].mean(), "val/ssim": r[:, 1].mean(),
                   "val/psnr_identity": r[:, 2].mean(), "val/ssim_identity": r[:, 3].mean()}
        if grid:
            img = ((torch.cat(grid, dim=1).clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
            save_image(img, self.out / "validation" / f"{grid_name}step-{self.step:07d}.png")
            for tracker in self.acc.trackers:
                if tracker.name == "tensorboard":
                    tracker.writer.add_image(f"val/{grid_name}grid", img, self.step, dataformats="HWC")
        return {k: float(v) for k, v in metrics.items()}

    # ------------------------------------------------------------------ export
    def export(self, folder: str | os.PathLike | None = None) -> Path:
        """Save the EMA result atomically: a :class:`StableMotionPipeline` folder (UNet
        stage, default ``OUT/pipeline``), a diffusers ``AutoencoderKL`` folder (VAE stage,
        default ``OUT/vae``; load it with ``model.vae`` or as a pipeline's ``vae``) or a
        :class:`~stablemotion.model.FlowRegressor` folder (regression stage, ``OUT/regressor``)."""
        default = _EXPORT_FOLDERS[self.stage]
        folder = Path(folder) if folder is not None else self.out / default
        with self.ema_weights():
            if self.acc.is_main_process:
                tmp = folder.with_name(f".{folder.name}.partial")
                if tmp.exists():
                    shutil.rmtree(tmp)
                with umask_modes(tmp):  # safetensors writes 0600 files
                    if self.stage == "unet":
                        self.pipe.unet = self._unet_module()
                        self.pipe.save_pretrained(str(tmp))
                    elif self.stage == "regression":
                        self.acc.unwrap_model(self.model).save_pretrained(str(tmp))
                    else:
                        self.vae.save_pretrained(str(tmp))
                old = folder.with_name(f".{folder.name}.old")
                if folder.exists():
                    os.replace(folder, old)
                os.replace(tmp, folder)
                if old.exists():
                    shutil.rmtree(old)
        self.acc.wait_for_everyone()
        return folder

    # ------------------------------------------------------------------ loop
    @contextlib.contextmanager
    def _out_of_memory_says_what_to_lower(self) -> Iterator[None]:
        """An out-of-memory error in a step becomes one line naming the settings that set memory."""
        try:
            yield
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            c = self.cfg
            h, w = max((c.task_resolution(t) for t in self.tasks), key=lambda r: r[0] * r[1])
            last = latest_checkpoint(self.out, need_ema=self.ema is not None)
            resume = f"; --resume continues from {last.name}" if last is not None else ""
            raise TrainingResourceError(
                f"out of memory at step {self.step + 1} (train.batch_size={c.train.batch_size} of {h}x{w} per "
                f"process, train.mixed_precision={c.train.mixed_precision}): lower train.batch_size (raise "
                "train.grad_accum to keep the effective batch), set train.gradient_checkpointing: true or "
                f"train.mixed_precision: bf16{resume}"
            ) from None

    def train(self, resume: bool | str | os.PathLike = False, max_steps: int | None = None,
              show_progress: bool = True) -> TrainResult:
        """Train until ``max_steps`` (default ``config.train.max_steps``), then export.

        Args:
            resume: ``True`` continues from the newest readable checkpoint in the output
                folder (starting fresh if there is none), or a checkpoint path (see
                :meth:`resume` for the fallback past damaged checkpoints).
            max_steps: stop early at this step (checkpointing as usual) - for tests and
                for splitting a long run; the pipeline is exported only at the configured end.
        """
        c = self.cfg
        if resume:
            ckpt = self.resume(resume)
            if ckpt is not None:
                self.acc.print(f"resumed from {ckpt} at step {self.step}")
        stop = min(c.train.max_steps, max_steps or c.train.max_steps)
        if self.acc.log_with:
            self.acc.init_trackers("stablemotion", config=_flat(c.to_dict()))
        if self.acc.is_main_process:
            c.save(self.out / "config.yaml")
        history: list[dict[str, float]] = []
        last: dict[str, float] = {}
        bar = tqdm(total=stop, initial=self.step, desc="train", disable=not (show_progress and self.acc.is_main_process))
        t0, done0 = time.perf_counter(), self.step
        micro = self.step * c.train.grad_accum
        loader = self._loader(self.step)
        accum: dict[str, float] = {}
        try:  # the bar is closed on errors too, so that an error message starts its own line
            for batch in loader:
                if self.step >= stop:
                    break
                with self.acc.accumulate(self.model), self._out_of_memory_says_what_to_lower():
                    losses = self.compute_losses(batch, micro)
                    if not torch.isfinite(losses["total"]):
                        raise FloatingPointError(f"non-finite loss at step {self.step}: {_floats(losses)}")
                    self.acc.backward(losses["total"])
                    if self.acc.sync_gradients and c.optim.grad_clip > 0:
                        self.acc.clip_grad_norm_(self._trainable(), c.optim.grad_clip)
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                micro += 1
                for k, v in _floats(losses).items():
                    accum[k] = accum.get(k, 0.0) + v / c.train.grad_accum
                if not self.acc.sync_gradients:
                    continue
                if self.ema is not None:
                    self.ema.step(self._trainable())
                self.step += 1
                last, accum = accum, {}
                history.append(dict(last, step=self.step))
                rate = (self.step - done0) / max(time.perf_counter() - t0, 1e-9)
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in last.items()} | {"it/s": f"{rate:.2f}"})
                if self.step % c.logging.every == 0 or self.step == stop:
                    self.acc.log({f"train/{k}": v for k, v in last.items()} | {"lr": self.lr_scheduler.get_last_lr()[0]},
                                 step=self.step)
                if c.validation.every and self.step % c.validation.every == 0:
                    metrics = self.validate()
                    if metrics:
                        self.acc.log(metrics, step=self.step)
                        bar.write(f"step {self.step}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
                if self.step % c.checkpoint.every == 0 or self.step == stop:
                    self.save_checkpoint()
        finally:
            bar.close()
        pipeline_dir = None
        if self.step >= c.train.max_steps:
            try:
                pipeline_dir = self.export()
            except OSError as exc:
                if not is_out_of_space(exc):
                    raise
                raise TrainingResourceError(
                    f"no space left on the device of {self.out} while exporting the trained model (checkpoint-"
                    f"{self.step} holds it): free space, then rerun with --resume to export"
                ) from None
            what = {"unet": "pipeline", "vae": "flow VAE", "regression": "regression baseline"}[self.stage]
            self.acc.print(f"exported the trained {what} to {pipeline_dir}")
        self.acc.end_training()
        return TrainResult(self.step, pipeline_dir, last, history)


def _reset_accelerator_if_changed(mixed_precision: str) -> None:
    """accelerate keeps one global state per process; a second Trainer in the same process
    (tests, benchmarks, notebooks) with another precision would otherwise be refused."""
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and str(state.get("_mixed_precision", mixed_precision)) != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)


def _floats(losses: Mapping[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in losses.items()}


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out

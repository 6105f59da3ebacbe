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
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..core.errors import is_out_of_memory, is_out_of_space
from ..io.images import umask_modes
from ..model.loading import build_pipeline, load_pipeline, retarget_pipeline
from ..model.tiny import tiny_pipeline
from ..tasks import TaskSpec, union_conditions
from .checkpoints import (
    CHECKPOINT_PREFIX,
    COMPLETE_MARKER,
    CheckpointError,
    find_checkpoints,
    latest_checkpoint,
    load_checkpoint_state,
    load_newest,
    resume_folder,
    write_checkpoint,
)
from .config import TrainConfig
from .losses import LossWeights, PerceptualLoss
from .resources import TrainingResourceError, batch_bytes, check_batch_fits, out_of_memory_error
from .sampling import build_dataset, step_loader
from .stages import Stage, stage_for, unet_module

__all__ = ["Trainer", "TrainResult", "CheckpointError", "TrainingResourceError", "batch_bytes", "build_dataset",
           "check_batch_fits", "find_checkpoints", "latest_checkpoint", "CHECKPOINT_PREFIX", "COMPLETE_MARKER"]


@dataclass
class TrainResult:
    """What a run produced: the final step, the exported pipeline folder, the last losses."""

    step: int
    pipeline_dir: Path | None
    last_losses: dict[str, float]
    history: list[dict[str, float]]


class Trainer:
    """Trains the UNet of a StableMotion pipeline for ``config.task`` (or, by ``train.stage``,
    the VAE as a flow codec or the regression baseline: :mod:`stablemotion.training.stages`).

    Args:
        config: a validated :class:`~stablemotion.training.config.TrainConfig`.
        pipeline: optional pre-built pipeline (tests); default builds it from
            ``config.model`` (``"tiny"`` = random tiny components, else an SD2 checkpoint).
        train_dataset / val_dataset: optional datasets overriding ``config.data`` (a dataset,
            or ``{task: dataset}`` in a multi-task run).
    """

    def __init__(
        self,
        config: TrainConfig,
        pipeline: Any | None = None,
        train_dataset: Dataset | None = None,
        val_dataset: Dataset | None = None,
    ) -> None:
        config.validate(check_paths=False)  # value ranges too, for configs built in code
        check_batch_fits(config)
        self.cfg = config
        self._init_tasks()
        self.out = Path(config.checkpoint.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.acc = self._accelerator()
        self.pipe = pipeline if pipeline is not None else self._build_pipeline()
        if self.multi and list(self.pipe.tasks) != list(self.tasks):
            raise ValueError(f"the pipeline serves {list(self.pipe.tasks)}, the config trains {list(self.tasks)}")
        self._init_datasets(train_dataset, val_dataset)
        #: ``train.stage`` (a name) and the object holding what differs between the stages.
        self.stage: str = config.train.stage
        self.training_stage: Stage = stage_for(self.stage)
        self._init_model()
        self._init_optimizer()
        self._prepare()
        self.step = 0

    # ------------------------------------------------------------------ setup
    def _init_tasks(self) -> None:
        """The tasks trained, by name (one for a single-task run), their loss weights and the model's conditions."""
        config = self.cfg
        self.task: TaskSpec = config.task_spec
        self.tasks: dict[str, TaskSpec] = {t.name: t for t in config.task_specs}
        self.multi = config.is_multi_task
        self.conditions = union_conditions(list(self.tasks.values()))
        self.task_weights: dict[str, LossWeights] = {n: config.loss_weights(t) for n, t in self.tasks.items()}
        self.weights = self.task_weights[self.task.name]

    def _accelerator(self) -> Any:
        """The run's ``accelerate.Accelerator`` (tensorboard logging when it is installed and asked for)."""
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        config = self.cfg
        log_with = None
        if config.logging.tensorboard:
            try:
                import tensorboard  # noqa: F401

                log_with = "tensorboard"
            except ImportError:
                print("warning: tensorboard is not installed; scalars are only printed")
        _reset_accelerator_if_changed(config.train.mixed_precision)
        return Accelerator(
            mixed_precision=config.train.mixed_precision,
            gradient_accumulation_steps=config.train.grad_accum,
            log_with=log_with,
            project_config=ProjectConfiguration(project_dir=str(self.out), logging_dir=str(self.out / "logs")),
            cpu=config.train.device == "cpu",
        )

    def _init_datasets(self, train_dataset: Any, val_dataset: Any) -> None:
        """One dataset per task (given: a dataset, or {task: dataset} in a multi-task run), checked."""
        self.train_sets = self._datasets(train_dataset, "train")
        self.val_sets = self._datasets(val_dataset, "val")
        self.train_ds = self.train_sets[self.task.name]
        self.val_ds = self.val_sets.get(self.task.name)
        for name, ds in self.train_sets.items():
            self._check_dataset(ds, f"{name} training" if self.multi else "training", self.tasks[name])

    def _init_model(self) -> None:
        """Freeze the VAE and let the stage choose what trains (``self.model``); the perceptual loss."""
        self.vae = self.pipe.vae.requires_grad_(False).eval()
        self.unet = self.pipe.unet
        self.model: torch.nn.Module = self.training_stage.build_model(self)
        wants_vgg = any(w.vgg for w in self.task_weights.values()) and self.training_stage.uses_perceptual
        self.perceptual = PerceptualLoss(self.cfg.loss.vgg_weights) if wants_vgg else None

    def _init_optimizer(self) -> None:
        """EMA (when ``train.ema``), AdamW and the learning-rate schedule over the trained parameters."""
        config, o = self.cfg, self.cfg.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.ema = None
        if config.train.ema:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(params, decay=config.train.ema_decay, power=config.train.ema_power)
        self.optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)
        from diffusers.optimization import get_scheduler

        self.lr_scheduler = get_scheduler(
            o.lr_schedule,
            optimizer=self.optimizer,
            num_warmup_steps=o.warmup_steps * self.acc.num_processes,
            num_training_steps=config.train.max_steps * self.acc.num_processes,
        )

    def _prepare(self) -> None:
        """Wrap model, optimizer and schedule for the processes (DDP) and move everything to the device."""
        self.model, self.optimizer, self.lr_scheduler = self.acc.prepare(self.model, self.optimizer, self.lr_scheduler)
        self.training_stage.after_prepare(self)
        self.unet.to(self.acc.device)
        self.vae.to(self.acc.device)
        if self.perceptual is not None:
            self.perceptual.to(self.acc.device)
        if self.ema is not None:
            self.ema.to(self.acc.device)
        self.embedding = None if self.multi else self.pipe.text_embedding(1).detach().to(self.acc.device)
        self.alphas_cumprod = self.pipe.scheduler.alphas_cumprod.to(self.acc.device)
        self.num_train_timesteps = int(self.pipe.scheduler.config.num_train_timesteps)

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
        if m.tiny.get("global_context") and (m.init or m.base == "tiny"):  # model.init: add the path to its UNet
            from ..model.components import with_global_context

            pipe.unet = with_global_context(pipe.unet)
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
        """This process's batches from optimizer step ``start_step`` on (:func:`~.sampling.step_loader`)."""
        return step_loader(self.cfg, self.train_sets, self.tasks, self.conditions, self.acc.num_processes,
                           self.acc.process_index, start_step)

    # ------------------------------------------------------------------ one step
    def compute_losses(self, batch: Mapping[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """All loss terms for one batch (tensors in [-1, 1], flows in pixels; a multi-task
        batch is one task's, named by its ``"task"`` entry), with their weighted sum ``"total"``."""
        spec = self.tasks[batch["task"][0]] if self.multi else self.task
        batch = {k: v.to(self.acc.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        return self.training_stage.losses(self, batch, spec, step)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Write ``checkpoint-<step>`` atomically and prune to the newest ``keep``."""
        state = {"stage": self.stage, "task": self._task_record(), "config": self.cfg.to_dict()}
        return write_checkpoint(self.acc, self.out, self.step, state, self.ema, self.cfg.checkpoint.keep)

    def _task_record(self) -> dict[str, Any]:
        """What a checkpoint records of the task(s): a task dict, or for a multi-task run the
        task names joined by "+", the model's conditions and the tasks."""
        if not self.multi:
            return self.task.to_dict()
        return {"name": "+".join(self.tasks), "conditions": list(self.conditions), "tasks": list(self.tasks)}

    def _unet_module(self) -> torch.nn.Module:
        """The trained UNet itself (unwrapped from DDP and, multi-task, from its prompts)."""
        return unet_module(self)

    def load_checkpoint(self, path: str | os.PathLike) -> int:
        """Restore model, optimizer, scheduler, RNG and EMA state; returns the step.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            CheckpointError: the checkpoint is incomplete or a file of it cannot be read
                (the trainer's state may then be partly overwritten: load another one).
            ValueError: the checkpoint is from another task or stage.
        """
        self.step = load_checkpoint_state(self.acc, path, self.ema, self._task_record(), self.stage)
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
        where = self.out
        if resume is not True:
            where, one = resume_folder(resume)
            if one:
                self.load_checkpoint(where)  # one named checkpoint: no fallback, its problem is the error
                return where
        found = load_newest(where, self.load_checkpoint, need_ema=self.ema is not None, say=self.acc.print)
        if found is None:
            self.acc.print(f"no checkpoint in {where}: starting from step 0")
        return found

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
            self.training_stage.after_eval(self)

    @torch.no_grad()
    def validate(self, max_samples: int | None = None) -> dict[str, float]:
        """Validation on the main process with the EMA weights (:mod:`stablemotion.training.validation`).

        UNet stage: one-step inference, PSNR/SSIM of the prediction and of the identity
        (input vs gt), and an image grid (input | prediction | gt | flow colours); a multi-task
        run does it for each task, under ``val/<task>/``. Regression stage: the same with the
        regressed flow. VAE stage: end-point error of the flow round trip and PSNR of the warp
        with the round-tripped flow vs with the exact flow.
        """
        if not self.val_sets or not self.acc.is_main_process:
            return {}
        limit = max_samples or self.cfg.data.val_samples
        with self.ema_weights():
            return self.training_stage.validate(self, limit)

    # ------------------------------------------------------------------ export
    def export(self, folder: str | os.PathLike | None = None) -> Path:
        """Save the EMA result atomically: a :class:`StableMotionPipeline` folder (UNet
        stage, default ``OUT/pipeline``), a diffusers ``AutoencoderKL`` folder (VAE stage,
        default ``OUT/vae``; load it with ``model.vae`` or as a pipeline's ``vae``) or a
        :class:`~stablemotion.model.FlowRegressor` folder (regression stage, ``OUT/regressor``)."""
        folder = Path(folder) if folder is not None else self.out / self.training_stage.export_folder
        with self.ema_weights():
            if self.acc.is_main_process:
                tmp = folder.with_name(f".{folder.name}.partial")
                if tmp.exists():
                    shutil.rmtree(tmp)
                with umask_modes(tmp):  # safetensors writes 0600 files
                    self.training_stage.save(self, tmp)
                old = folder.with_name(f".{folder.name}.old")
                if folder.exists():
                    os.replace(folder, old)
                os.replace(tmp, folder)
                if old.exists():
                    shutil.rmtree(old)
        self.acc.wait_for_everyone()
        return folder

    def _export_at_end(self) -> Path:
        """:meth:`export` at the end of training; a full disk names the checkpoint that holds the result."""
        try:
            folder = self.export()
        except OSError as exc:
            if not is_out_of_space(exc):
                raise
            raise TrainingResourceError(
                f"no space left on the device of {self.out} while exporting the trained model (checkpoint-"
                f"{self.step} holds it): free space, then rerun with --resume to export"
            ) from None
        self.acc.print(f"exported the trained {self.training_stage.label} to {folder}")
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
            last = latest_checkpoint(self.out, need_ema=self.ema is not None)
            raise out_of_memory_error(self.cfg, self.step + 1, last.name if last is not None else None) from None

    def _micro_step(self, batch: Mapping[str, Any], micro: int) -> dict[str, float]:
        """Forward, backward and (when the gradients sync) one optimizer step on one micro-batch; its losses."""
        with self.acc.accumulate(self.model), self._out_of_memory_says_what_to_lower():
            losses = self.compute_losses(batch, micro)
            if not torch.isfinite(losses["total"]):
                raise FloatingPointError(f"non-finite loss at step {self.step}: {_floats(losses)}")
            self.acc.backward(losses["total"])
            if self.acc.sync_gradients and self.cfg.optim.grad_clip > 0:
                self.acc.clip_grad_norm_(self._trainable(), self.cfg.optim.grad_clip)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return _floats(losses)

    def _after_step(self, last: dict[str, float], stop: int, bar: Any, rate: float) -> None:
        """Progress, logging, validation and checkpoints after optimizer step ``self.step``."""
        c = self.cfg
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

    def _over_budget(self, t0: float) -> bool:
        """Whether ``train.max_minutes`` (wall clock since ``t0``, this process's start) has passed."""
        minutes = self.cfg.train.max_minutes
        return minutes is not None and (time.perf_counter() - t0) / 60.0 >= minutes

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
        budget_hit = False
        micro = self.step * c.train.grad_accum
        accum: dict[str, float] = {}
        try:  # the bar is closed on errors too, so that an error message starts its own line
            for batch in self._loader(self.step):
                if self.step >= stop or (self.step > done0 and (budget_hit := self._over_budget(t0))):
                    break
                losses = self._micro_step(batch, micro)
                micro += 1
                for k, v in losses.items():
                    accum[k] = accum.get(k, 0.0) + v / c.train.grad_accum
                if not self.acc.sync_gradients:
                    continue
                if self.ema is not None:
                    self.ema.step(self._trainable())
                self.step += 1
                last, accum = accum, {}
                history.append(dict(last, step=self.step))
                self._after_step(last, stop, bar, (self.step - done0) / max(time.perf_counter() - t0, 1e-9))
        finally:
            bar.close()
        if budget_hit:
            self.acc.print(f"time budget of {c.train.max_minutes:g} min reached at step {self.step}: ending the run there")
            if self.step % c.checkpoint.every != 0:
                self.save_checkpoint()
        pipeline_dir = self._export_at_end() if self.step >= c.train.max_steps or budget_hit else None
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

"""Training checkpoints: finding them, checking them cheaply, writing them atomically and
loading them with a fallback past damaged ones.

A checkpoint is a ``checkpoint-<step>`` folder of the run's output folder holding accelerate's
state (model, optimizer, scheduler, RNG), the EMA weights (safetensors), ``trainer_state.json``
and, written last, a ``COMPLETE`` marker. It is written to a hidden ``.checkpoint-<step>.partial``
folder first and renamed into place, so an interrupted save never replaces the previous one.
Nothing in a checkpoint can run code: every pickled file is checked with the weights-only
unpickler before it is read (:mod:`stablemotion.training.checkpoint_files`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..core.errors import is_out_of_space
from ..io.images import umask_modes
from .checkpoint_files import (
    EMA_FILE,
    LEGACY_EMA_FILE,
    UnsafeCheckpointError,
    check_pickled_files,
    load_ema_state,
    save_ema_state,
)
from .resources import TrainingResourceError

__all__ = ["CHECKPOINT_PREFIX", "COMPLETE_MARKER", "CheckpointError", "find_checkpoints", "latest_checkpoint",
           "load_checkpoint_state", "load_newest", "write_checkpoint"]

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
COMPLETE_MARKER = "COMPLETE"
_STATE_FILE = "trainer_state.json"
#: Files only a checkpoint folder holds (a folder with one of them is a checkpoint, not a run folder).
_OWN_FILES = (COMPLETE_MARKER, _STATE_FILE, EMA_FILE, LEGACY_EMA_FILE, "model.safetensors", "optimizer.bin")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (missing, incomplete or unreadable).

    ``reason`` is the short cause without the path (for lists of skipped checkpoints)."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


def find_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``checkpoint-N`` folder in ``output_dir``, newest first.

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> for name in ("checkpoint-20", "checkpoint-100", "checkpoint-x", "logs"):
        ...     (run / name).mkdir()
        >>> [(step, path.name) for step, path in find_checkpoints(run)]
        [(100, 'checkpoint-100'), (20, 'checkpoint-20')]
        >>> find_checkpoints(run / "missing")
        []
    """
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
    also skips checkpoints whose files fail to load).

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> latest_checkpoint(run) is None
        True
        >>> (run / "checkpoint-5").mkdir()
        >>> latest_checkpoint(run) is None  # doctest: +ELLIPSIS
        warning: skipping checkpoint .../checkpoint-5: no COMPLETE marker (interrupted save)
        True
    """
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


# --------------------------------------------------------------------------- writing
def write_checkpoint(acc: Any, out: Path, step: int, state: dict[str, Any], ema: Any | None, keep: int) -> Path:
    """Write ``out/checkpoint-<step>`` atomically (all processes call it) and prune to the newest
    ``keep`` up to ``step``. ``acc``: the run's ``accelerate.Accelerator``; ``state``: what
    ``trainer_state.json`` records besides ``step``; ``ema``: the EMA model or ``None``.

    Raises:
        TrainingResourceError: the disk filled up (the previous checkpoint is left intact).
    """
    final = out / f"{CHECKPOINT_PREFIX}{step}"
    tmp = out / f".{CHECKPOINT_PREFIX}{step}.partial"
    if acc.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    acc.wait_for_everyone()
    try:
        # safetensors writes 0600 files: the main process gives everything it wrote the umask mode
        with umask_modes(tmp) if acc.is_main_process else contextlib.nullcontext():
            acc.save_state(str(tmp), safe_serialization=True)
            if acc.is_main_process:
                if ema is not None:
                    save_ema_state(ema.state_dict(), tmp / EMA_FILE)
                (tmp / _STATE_FILE).write_text(json.dumps({"step": step, **state}, indent=1))
                (tmp / COMPLETE_MARKER).write_text(f"{step}\n")
    except Exception as exc:
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        if not is_out_of_space(exc):
            raise
        previous = latest_checkpoint(out, need_ema=ema is not None)
        kept = f"the previous checkpoint {previous.name} is intact" if previous else "no earlier checkpoint exists"
        raise TrainingResourceError(
            f"no space left on the device of {out} while writing {final.name} ({kept}): free space, "
            "lower checkpoint.keep or set checkpoint.output_dir to a larger disk, then rerun with --resume"
        ) from None
    if acc.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        # Prune among checkpoints up to this step only: newer ones are ones a resume fell back
        # past (unreadable) or branched from; they are replaced when the run reaches their step,
        # and must not take the `keep` slots of the good ones.
        mine = [(s, p) for s, p in find_checkpoints(out) if s <= step]
        for _, old in mine[keep:]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


# --------------------------------------------------------------------------- loading
def load_checkpoint_state(
    acc: Any, path: str | os.PathLike, ema: Any | None, task_record: dict[str, Any], stage: str,
) -> int:
    """Restore model, optimizer, scheduler, RNG (through ``acc``) and ``ema`` from ``path``;
    returns the step. ``task_record`` and ``stage``: what this run trains, which the checkpoint
    must match.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the checkpoint is incomplete or a file of it cannot be read
            (the state may then be partly overwritten: load another one).
        ValueError: the checkpoint is from another task or stage.
        UnsafeCheckpointError: a pickled file is not weights only.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"cannot resume: checkpoint folder not found: {path}")
    problem = _checkpoint_problem(path, need_ema=ema is not None)
    if problem is not None:
        raise CheckpointError(f"cannot resume from {path}: {problem}", problem)
    state = json.loads((path / _STATE_FILE).read_text())
    rec, mine = state.get("task", {}), task_record
    if rec.get("conditions") != mine["conditions"] or rec.get("tasks") != mine.get("tasks"):
        raise ValueError(
            f"checkpoint {path} was trained for task {rec.get('name')!r} "
            f"(conditions {rec.get('conditions')}), this run is {mine['name']!r} (conditions {mine['conditions']})"
        )
    if state.get("stage", "unet") != stage:
        raise ValueError(f"checkpoint {path} is from a {state.get('stage')!r} stage run, this run is {stage!r}")
    try:
        check_pickled_files(path)  # before accelerate unpickles anything: never run code from a checkpoint
        acc.load_state(str(path))
        if ema is not None:
            ema.load_state_dict(load_ema_state(path))
            ema.to(acc.device)
    except (MemoryError, torch.cuda.OutOfMemoryError, UnsafeCheckpointError):
        raise
    except Exception as exc:  # a damaged file: pickle, zip, safetensors or shape errors
        reason = f"cannot be read ({type(exc).__name__}: {_one_line(exc)})"
        raise CheckpointError(f"cannot resume from {path}: {reason}", reason) from exc
    return int(state["step"])


def resume_folder(resume: str | os.PathLike) -> tuple[Path, bool]:
    """Check a ``--resume PATH`` and say what it is: ``(path, True)`` for one checkpoint folder,
    ``(path, False)`` for a run folder holding ``checkpoint-N`` folders.

    Raises:
        FileNotFoundError / NotADirectoryError: the path is missing or a file.
        CheckpointError: the folder is neither.
    """
    where = Path(resume)
    if not where.exists():
        raise FileNotFoundError(f"cannot resume: checkpoint folder not found: {where}")
    if not where.is_dir():
        raise NotADirectoryError(f"cannot resume from {where}: not a folder (give a checkpoint-N folder)")
    if any((where / name).exists() for name in _OWN_FILES):
        return where, True
    if not find_checkpoints(where):
        raise CheckpointError(f"cannot resume from {where}: it is neither a checkpoint folder "
                              f"(no {COMPLETE_MARKER}) nor a run folder holding {CHECKPOINT_PREFIX}N folders")
    return where, False


def load_newest(where: Path, load: Callable[[Path], Any], need_ema: bool, say: Callable[[str], Any]) -> Path | None:
    """Load the newest checkpoint of run folder ``where`` that passes the cheap checks and
    ``load`` (which raises :class:`CheckpointError` for an unreadable one); returns it, or
    ``None`` when the folder holds no checkpoint. Each one skipped is warned about (``say``).

    Raises:
        CheckpointError: the folder has checkpoints but none is readable.
    """
    skipped = []
    for _, path in find_checkpoints(where):
        problem = _checkpoint_problem(path, need_ema=need_ema)
        if problem is None:
            try:
                load(path)
                return path
            except CheckpointError as exc:
                problem = exc.reason
        _warn_skip(path, problem, say=say)
        skipped.append(f"{path.name}: {problem}")
    if skipped:
        raise CheckpointError(
            f"cannot resume: no readable checkpoint in {where} ({'; '.join(skipped)}); "
            "move them away to start afresh"
        )
    return None

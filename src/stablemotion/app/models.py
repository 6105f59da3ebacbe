"""The app's model registry: the pipeline of each task, loaded on first use and kept.

Models load lazily, on the inference worker, once per model: the tasks of a multi-task
model (one folder, hub id or pipeline object given for several tasks, e.g. one bundled
folder serving rotation and lens) share one loaded pipeline, which is called with the
request's ``task``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..tasks import describe_model_tasks, get_task

__all__ = ["AUTO", "AUTO_DESCRIPTION", "ModelSpec"]

log = logging.getLogger(__name__)

#: What a task's model may be given as: ``None`` (the bundled model), a pipeline folder or
#: hub id (loaded on first use), or a ready pipeline (anything called like
#: :class:`~stablemotion.model.pipeline.StableMotionPipeline` with ``output_type="np"``).
ModelSpec = Any

#: The ``task`` form value that chooses the task from the image (:mod:`stablemotion.model.task_choice`);
#: no task model may be named so.
AUTO = "auto"
#: What ``/api/info`` and the page say about it.
AUTO_DESCRIPTION = ("detect the task from the image: a flat empty border means sir, otherwise a small classifier "
                    "tells rsc, rotation, lens or no distortion")


def _served(pipe: Any) -> tuple[str, ...] | None:
    """The tasks a pipeline serves (``pipe.tasks``, else ``pipe.task``), or None when it does not say (a test double)."""
    tasks = getattr(pipe, "tasks", None)
    if isinstance(tasks, Mapping) and tasks:
        return tuple(tasks)
    name = getattr(getattr(pipe, "task", None), "name", None)
    return (name,) if isinstance(name, str) else None


def _check_serves(pipe: Any, task: str, what: str) -> None:
    """Raise ``ValueError`` unless ``pipe`` serves ``task`` (pipelines that do not say are trusted)."""
    served = _served(pipe)
    if served is not None and task not in served:
        raise ValueError(f"the model {what} is {describe_model_tasks(served)}, not {task!r}")


class _Models:
    """The model of each task, loaded on first use (in the inference thread) and kept.

    Tasks given the same model (one bundled folder, one path, one pipeline object) share one
    loaded pipeline: a multi-task model is loaded once however many of its tasks are served.
    """

    def __init__(self, models: Mapping[str, ModelSpec], device: str | torch.device, dtype: torch.dtype) -> None:
        from ..model.catalog import BUNDLED_MODELS

        self._specs = dict(models)
        self.inference: dict[str, Any] = {}  # pipeline keywords for every request (serve's options)
        self._loaded: dict[tuple[str, str], Any] = {}  # by _key: one pipeline per folder / hub id / object
        self.loads = 0  # pipelines loaded from disk or the hub
        self._lock = threading.Lock()
        self.device, self.dtype = torch.device(device), dtype
        self.names: dict[str, str] = {}
        for task, spec in self._specs.items():
            if task == AUTO:
                raise ValueError(f"{AUTO!r} is the app's automatic task choice; it cannot name a task model")
            get_task(task)  # unknown task names fail here
            if spec is None:
                if task not in BUNDLED_MODELS:
                    raise ValueError(f"no bundled model for task {task!r}; give a model for it")
                self.names[task] = f"{BUNDLED_MODELS[task]} (bundled)"
            elif isinstance(spec, (str, os.PathLike)):
                self.names[task] = Path(spec).name or str(spec)
            else:
                self.names[task] = getattr(spec, "name_or_path", None) or getattr(
                    getattr(spec, "config", None), "_name_or_path", None) or type(spec).__name__
                _check_serves(spec, task, self.names[task])  # a ready pipeline: checked now
        if not self._specs:
            raise ValueError("the app needs at least one task model")

    @property
    def tasks(self) -> list[str]:
        return list(self._specs)

    def _key(self, task: str) -> tuple[str, str]:
        """What identifies the model of ``task``: its resolved folder, its hub id or the object's identity."""
        from ..model.catalog import bundled_model_path

        spec = self._specs[task]
        if spec is None:
            return "path", str(bundled_model_path(task).resolve())
        if isinstance(spec, (str, os.PathLike)):
            path = Path(spec)
            return ("path", str(path.resolve())) if path.exists() else ("hub", str(spec))
        return "object", str(id(spec))

    def get(self, task: str) -> Any:
        with self._lock:
            key = self._key(task)
            if key not in self._loaded:
                self._loaded[key] = self._load(task, self._specs[task])
            pipe = self._loaded[key]  # kept even when it does not serve ``task``: it may serve others
        try:
            _check_serves(pipe, task, key[1] if key[0] != "object" else self.names[task])
        except ValueError as exc:  # the server's models are wrong, not the request: a 500
            raise RuntimeError(str(exc)) from None
        return pipe

    def _load(self, task: str, spec: ModelSpec) -> Any:
        from ..model.catalog import bundled_model_path
        from ..model.loading import load_pipeline

        if spec is not None and not isinstance(spec, (str, os.PathLike)):
            return spec  # a ready pipeline (or a test double): used as given
        path = bundled_model_path(task) if spec is None else spec
        log.info("loading the %s model from %s", task, path)
        pipe = load_pipeline(path, self.dtype, progress=spec is not None)
        self.loads += 1
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(self.device)

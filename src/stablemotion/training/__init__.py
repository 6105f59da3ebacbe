"""The training layer: experiment configs, losses, checkpoints and the trainer.

Modules: ``config`` (the experiment config), ``losses``, ``sampling`` (datasets and the step
batches), ``checkpoints`` (finding, checking, writing and loading checkpoints),
``checkpoint_files`` (weights-only checkpoint files), ``resources`` (memory and disk limits),
``stages`` (what differs between ``train.stage`` unet / vae / regression), ``validation`` and
``trainer`` (the :class:`~stablemotion.training.trainer.Trainer`).

The names of :mod:`stablemotion.training.trainer` are available here too (``from stablemotion.training import Trainer``);
they import lazily so that importing a sibling module stays light.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule (`from . import losses`)
        return importlib.import_module(f".{name}", __name__)
    module = importlib.import_module(".trainer", __name__)
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None

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

from .._compat import reexporting_getattr

__getattr__ = reexporting_getattr(__name__, "trainer")

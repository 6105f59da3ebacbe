"""The evaluation layer: scoring test sets, the studies and the perceptual judge.

* :mod:`.protocol` -- test sets opened by the task's :class:`~stablemotion.tasks.EvalProtocol`.
* :mod:`.score` -- one scoring path: pairs into a :class:`~stablemotion.core.metrics.ScoreTable`.
* :mod:`.runner` -- ``stablemotion evaluate``: inference, scoring, merging shards.
* :mod:`.extra_metrics`, :mod:`.studies` -- FID / LPIPS, the steps and AES studies.
* :mod:`.judge` (:mod:`.judge_rubric`, :mod:`.judge_client`) -- the vision-language judge.

The names of :mod:`stablemotion.evaluation.runner` (and of :mod:`.score`) are available here too
(``from stablemotion.evaluation import run_inference``); they import lazily so that importing a
sibling module stays light.
"""

from __future__ import annotations

from .._compat import reexporting_getattr

__getattr__ = reexporting_getattr(__name__, "runner", "score")

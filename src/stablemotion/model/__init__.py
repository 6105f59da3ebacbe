"""The model layer: the pipeline and its components, building, loading and importing models, the bundled catalog, tiny test models, the regression baseline and the task classifier.

The names of :mod:`stablemotion.model.loading` are available here too (``from stablemotion.model import load_pipeline``);
they import lazily so that importing a sibling module stays light.
"""

from __future__ import annotations

from .._compat import reexporting_getattr

__getattr__ = reexporting_getattr(__name__, "loading")

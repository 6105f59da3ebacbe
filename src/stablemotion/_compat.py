"""Where the modules of earlier versions went: ``stablemotion.flow`` is now
``stablemotion.core.flow``, and so on (the package is laid out by layer: ``core``, ``io``,
``tasks``, ``model``, ``data``, ``training``, ``evaluation``, ``app``, ``cli``).

Importing an old name gives the new module itself (one module object, so patching either
name patches both) and a ``DeprecationWarning``. Pipeline folders saved by earlier versions
name their components' library ``stablemotion.components``; diffusers imports that name, so
those folders keep loading.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Callable
from types import ModuleType

#: old module name -> new module name
MOVED = {
    "stablemotion.flow": "stablemotion.core.flow",
    "stablemotion.constants": "stablemotion.core.constants",
    "stablemotion.errors": "stablemotion.core.errors",
    "stablemotion.image_processing": "stablemotion.core.image_processing",
    "stablemotion.ensemble": "stablemotion.core.ensemble",
    "stablemotion.visualize": "stablemotion.core.visualize",
    "stablemotion.large_image": "stablemotion.core.large_image",
    "stablemotion.metrics": "stablemotion.core.metrics",
    "stablemotion._io": "stablemotion.io.images",
    "stablemotion.outdir": "stablemotion.io.outdir",
    "stablemotion.components": "stablemotion.model.components",
    "stablemotion.pipeline": "stablemotion.model.pipeline",
    "stablemotion.tiny": "stablemotion.model.tiny",
    "stablemotion.regression": "stablemotion.model.regression",
    "stablemotion.catalog": "stablemotion.model.catalog",
    "stablemotion.task_choice": "stablemotion.model.task_choice",
    "stablemotion.synth": "stablemotion.data.synth",
    "stablemotion.photos": "stablemotion.data.photos",
    "stablemotion.labelling": "stablemotion.data.labelling",
    "stablemotion.config": "stablemotion.training.config",
    "stablemotion.losses": "stablemotion.training.losses",
    "stablemotion.checkpoint_files": "stablemotion.training.checkpoint_files",
    "stablemotion.judge": "stablemotion.evaluation.judge",
    "stablemotion.app_server": "stablemotion.app.server_options",
    "stablemotion.demo": "stablemotion.app.demo",
}
#: Names that stay quiet: checkpoint formats record them (diffusers imports them to load).
_RECORDED = frozenset({"stablemotion.components", "stablemotion.pipeline", "stablemotion.regression",
                       "stablemotion.task_choice"})


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:  # already executed under its new name
        return None


class _MovedModules(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        if new is None:
            return None
        if fullname not in _RECORDED:
            warnings.warn(f"{fullname} moved to {new}; import it from there", DeprecationWarning, stacklevel=3)
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    """Register the finder once (idempotent)."""
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedModules())


#: module -> the module its generator-side names moved to (the task layer keeps only specs)
MOVED_ATTRIBUTES = {
    "stablemotion.tasks": "stablemotion.data.synthesis",
    "stablemotion.tasks.sir": "stablemotion.data.synthesis.sir",
    "stablemotion.tasks.rsc": "stablemotion.data.synthesis.rsc",
    "stablemotion.tasks.rotation": "stablemotion.data.synthesis.rotation",
    "stablemotion.tasks.lens": "stablemotion.data.synthesis.lens",
}


def moved_attribute(module: str, name: str) -> object:
    """A module's ``__getattr__`` for names that moved away (a ``DeprecationWarning`` names the new home).

    Raises ``AttributeError`` for names that never existed there either."""
    target = MOVED_ATTRIBUTES.get(module)
    if target is None or name.startswith("__"):
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(target), name, _MISSING)
    if value is _MISSING:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    warnings.warn(f"{module}.{name} moved to {target}; import it from there", DeprecationWarning, stacklevel=3)
    return value


_MISSING = object()


def reexporting_getattr(package: str, *modules: str) -> Callable[[str], object]:
    """A package's ``__getattr__`` that serves the names of its main module(s) lazily (and its
    submodules, for ``from . import x``), so that importing a sibling module stays light.

    Example:
        >>> getattr_ = reexporting_getattr("stablemotion.model", "loading")
        >>> getattr_("load_pipeline").__module__
        'stablemotion.model.loading'
    """

    def __getattr__(name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        if importlib.util.find_spec(f"{package}.{name}") is not None:
            value = importlib.import_module(f"{package}.{name}")
        else:
            value = next((v for m in modules if (v := getattr(importlib.import_module(f"{package}.{m}"), name,
                                                                 _MISSING)) is not _MISSING), _MISSING)
        if value is _MISSING:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)  # resolved once: later lookups skip the file-system search
        return value

    return __getattr__

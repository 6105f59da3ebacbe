"""The package's layers import downwards only (io < core < tasks < data < model < training,
evaluation, batch < app < cli), and one module is one concept of bounded size."""

from __future__ import annotations

import ast
from pathlib import Path

import stablemotion

SRC = Path(stablemotion.__file__).parent
#: layer of each sub-package; a module may import its own layer and those below it
LAYERS = {"io": 0, "core": 1, "tasks": 2, "data": 3, "model": 4, "training": 5, "evaluation": 5, "batch": 5,
          "app": 6, "cli": 7}
#: modules of the package root that are not a layer (the lazy public API, the old-name aliases, ``python -m``)
ROOT_MODULES = {"__init__", "_compat", "__main__"}


def _module_name(path: Path) -> list[str]:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) of every stablemotion import in ``path`` (or ``source`` as if it
    were that file), function-level ones included."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                if not node.module:  # "from .. import x": x may be a module of that package
                    out += [(node.lineno, f"{target}.{a.name}") for a in node.names]
                    continue
            else:
                target = node.module or ""
            out.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return [(line, t) for line, t in out if t == "stablemotion" or t.startswith("stablemotion.")]


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_belongs_to_a_layer() -> None:
    stray = [str(p.relative_to(SRC)) for p in SRC.glob("*.py") if p.stem not in ROOT_MODULES]
    assert not stray, f"modules outside the layer packages: {stray}"
    assert set(LAYERS) <= {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        here = _layer(".".join(_module_name(path)))
        if here is None:
            continue
        for line, target in _imports(path):
            there = _layer(target)
            if there is None or there == here:
                continue
            if LAYERS[there] > LAYERS[here] or (LAYERS[there] == LAYERS[here]):
                wrong.append(f"{path.relative_to(SRC)}:{line} ({here}) imports {target} ({there})")
    assert not wrong, "imports that point up (or sideways) the layers:\n" + "\n".join(wrong)


def test_the_checker_resolves_relative_and_lazy_imports() -> None:
    """The rule above can fail: relative, ``from .. import x`` and function-level imports are all seen."""
    source = "from ..cli import main\nfrom .. import app\ndef f():\n    from ...stablemotion import x\n    import stablemotion.model.tiny\n"
    got = _imports(SRC / "core" / "flow.py", source)
    assert [(line, t) for line, t in got if line < 4] == [(1, "stablemotion.cli"), (2, "stablemotion.app")]
    assert (5, "stablemotion.model.tiny") in got
    assert [_layer(t) for _, t in got[:2]] == ["cli", "app"]


def test_no_source_file_is_over_600_lines() -> None:
    """One concept per module: a module that outgrows this is split along its concepts."""
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 600}
    assert not long, f"modules over 600 lines: {long}"

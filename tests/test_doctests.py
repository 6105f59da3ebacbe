"""Every ``>>>`` example in the package's docstrings runs and shows what it says (issue 23 item 6).

One case per module that has examples; the modules are found by walking the package, and a
module counts when its source holds ``>>>`` (read from the file, so collecting imports
nothing heavy). A failing example fails its module's case, naming the example and showing
what it printed.
"""

from __future__ import annotations

import doctest
import importlib
import io
import pkgutil
import tempfile
from pathlib import Path

import pytest

import stablemotion

OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(stablemotion.__path__, prefix="stablemotion."):
        spec = importlib.util.find_spec(info.name)
        origin = Path(spec.origin) if spec is not None and spec.origin else None
        if origin is not None and origin.suffix == ".py" and ">>>" in origin.read_text(encoding="utf-8"):
            names.append(info.name)
    return sorted(names)


MODULES = _modules_with_examples()


def test_the_walk_finds_the_documented_modules() -> None:
    assert {"stablemotion.core.flow", "stablemotion.core.grid", "stablemotion.core.mesh",
            "stablemotion.io.flow_files", "stablemotion.io.images"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Examples that need a folder take tempfile.mkdtemp(): keep them under this test's tmp_path.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    module = importlib.import_module(name)
    tests = [t for t in doctest.DocTestFinder(exclude_empty=True).find(module, name) if t.examples]
    if not tests:
        pytest.skip(f"{name} mentions '>>>' but has no docstring examples")
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    failed = []
    for test in sorted(tests, key=lambda t: t.name):
        report = io.StringIO()
        result = runner.run(test, out=report.write)
        if result.failed:
            failed.append(f"{test.name} ({result.failed} of {result.attempted} examples failed):\n{report.getvalue()}")
    assert not failed, f"docstring examples of {name} failed:\n" + "\n".join(failed)

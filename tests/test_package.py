"""The package's public surface: ``from stablemotion import ...`` and a light ``import stablemotion``."""

from __future__ import annotations

import subprocess
import sys

import stablemotion


def test_public_names_resolve_to_their_modules() -> None:
    from stablemotion import StableMotionPipeline, load_bundled_pipeline, warp
    from stablemotion.flow import warp as flow_warp
    from stablemotion.model import load_bundled_pipeline as model_load
    from stablemotion.pipeline import StableMotionPipeline as Pipe

    assert StableMotionPipeline is Pipe and load_bundled_pipeline is model_load and warp is flow_warp
    assert set(stablemotion.__all__) - {"__version__"} <= set(dir(stablemotion))
    for name in stablemotion.__all__:
        assert getattr(stablemotion, name) is not None


def test_import_is_light_and_unknown_names_fail() -> None:
    code = "import sys, stablemotion; print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
    try:
        stablemotion.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("unknown attribute did not raise")


def test_no_import_cycle_between_model_and_pipeline() -> None:
    """The pipeline imports only what is below it (components, tasks, flow, ...), never the model module."""
    import ast
    from pathlib import Path

    src = Path(stablemotion.__file__).parent
    for module, forbidden in (("pipeline", {"model", "tiny", "regression", "training"}),
                              ("components", {"model", "pipeline", "tiny"})):
        tree = ast.parse((src / f"{module}.py").read_text())
        imported = {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1
                    and n.module}
        assert not imported & forbidden, (module, imported & forbidden)

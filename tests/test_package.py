"""The package's public surface: ``from stablemotion import ...`` and a light ``import stablemotion``."""

from __future__ import annotations

import subprocess
import sys

import stablemotion


def test_public_names_resolve_to_their_modules() -> None:
    from stablemotion import StableMotionPipeline, load_bundled_pipeline, warp
    from stablemotion.core.flow import warp as flow_warp
    from stablemotion.model import load_bundled_pipeline as model_load
    from stablemotion.model.pipeline import StableMotionPipeline as Pipe

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

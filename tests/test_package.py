"""The package's public surface: ``from stablemotion import ...`` and a light ``import stablemotion``."""

from __future__ import annotations

import subprocess
import sys

import pytest

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


def test_names_of_earlier_versions_still_import_with_a_deprecation_warning() -> None:
    """Modules moved into the layer packages and generator names moved out of ``tasks`` keep working."""
    import importlib
    import warnings

    import stablemotion.core.flow
    import stablemotion.data.synthesis

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old_flow = importlib.import_module("stablemotion.flow")
        from stablemotion.tasks import SynthSpec
        from stablemotion.tasks.sir import make_rectangling_sample
    assert old_flow is stablemotion.core.flow
    assert SynthSpec is stablemotion.data.synthesis.SynthSpec
    assert make_rectangling_sample is stablemotion.data.synthesis.sir.make_rectangling_sample
    moved = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert any("stablemotion.tasks.SynthSpec moved to stablemotion.data.synthesis" in m for m in moved), moved
    with pytest.raises(ImportError):
        from stablemotion.tasks import no_such_name  # noqa: F401

"""The ``>>>`` examples in the docstrings of the model layer run as written (offline, CPU, tiny or
bundled models)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["pipeline", "pipeline_inputs", "pipeline_output", "tiny", "loading", "released_weights"]


@pytest.mark.parametrize("name", MODULES)
def test_examples_run(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    module = importlib.import_module(f"stablemotion.model.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"stablemotion.model.{name} has no examples"
    assert result.failed == 0

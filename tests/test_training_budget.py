"""train.max_minutes: a fixed-time run ends like a finished one (checkpoint, export)."""

from __future__ import annotations

import pytest

from stablemotion.training.config import ConfigError, load_config
from stablemotion.training.trainer import Trainer
from test_training import _config, _make_sir_folder


def test_time_budget_ends_the_run_with_a_checkpoint_and_an_export(tmp_path, photo):
    data = _make_sir_folder(tmp_path / "data", photo)
    cfg = load_config(_config(tmp_path, data, **{"train.max_steps": 1000, "train.max_minutes": 1e-6}))
    result = Trainer(cfg).train(show_progress=False)
    assert result.step == 1  # one step, then the budget has passed
    assert result.pipeline_dir is not None and (result.pipeline_dir / "model_index.json").is_file()
    assert (tmp_path / "run" / "checkpoint-1").is_dir()


def test_time_budget_must_be_positive(tmp_path, photo):
    data = _make_sir_folder(tmp_path / "data", photo)
    with pytest.raises(ConfigError, match="train.max_minutes"):
        load_config(_config(tmp_path, data, **{"train.max_minutes": 0}))

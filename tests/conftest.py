"""Shared test fixtures. Tests never download anything (HF_HUB_OFFLINE=1 in CI)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Test tensors are tiny: one thread is as fast, and it cannot oversubscribe a busy machine
# (OpenMP spin-waiting made two-thread runs up to 40x slower when other jobs shared the cores).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory):
    """A tiny SD2-like base checkpoint folder (diffusers layout, random weights, written here)."""
    from stablemotion.model import save_tiny_base

    return save_tiny_base(tmp_path_factory.mktemp("sd2_tiny"))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def photo() -> np.ndarray:
    """A real photo (scikit-image ships it; no download), 96x128 uint8 RGB."""
    import cv2
    from skimage import data

    return cv2.resize(data.astronaut(), (128, 96), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory: pytest.TempPathFactory):
    """``tiny_model_folder("rsc")``: a tiny random-weight pipeline folder of a task made by
    ``stablemotion tiny-model`` (written once per session and task)."""
    from stablemotion.cli import main

    made: dict[str, object] = {}

    def make(task: str):
        if task not in made:
            out = tmp_path_factory.mktemp("tiny_models") / task
            assert main(["tiny-model", "--task", task, "--out", str(out)]) == 0
            made[task] = out
        return made[task]

    return make

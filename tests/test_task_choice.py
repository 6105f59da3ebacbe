"""Automatic task choice (:mod:`stablemotion.model.task_choice`) and ``rectify --task auto``."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from stablemotion.cli import main
from stablemotion.io.images import load_image, save_image
from stablemotion.model import task_choice
from stablemotion.model.task_choice import (
    CLASSIFIER_TASKS,
    TaskChoice,
    TaskClassifier,
    choose_task,
    classifier_input,
)


class _Stub:
    """A classifier that answers fixed probabilities and counts its calls."""

    def __init__(self, probs: dict[str, float]) -> None:
        self.probs = probs
        self.calls = 0

    def predict_proba(self, image: np.ndarray) -> dict[str, float]:
        self.calls += 1
        return self.probs


def _notched(photo: np.ndarray) -> np.ndarray:
    img = np.clip(photo, 40, 215).astype(np.uint8)
    img[:12, :40] = 0  # a flat black notch at the corner: 480 of 12288 pixels (3.9%)
    return img


def test_sir_rule_flat_black_notch(photo: np.ndarray) -> None:
    stub = _Stub({"rsc": 1.0})
    choice = choose_task(_notched(photo), classifier=stub)
    assert choice.task == "sir" and choice.confidence == 1.0
    assert "flat empty border" in choice.reason
    assert stub.calls == 0  # the rule decides; the classifier is not asked


def test_no_border_goes_to_classifier(photo: np.ndarray) -> None:
    stub = _Stub({"none": 0.1, "rsc": 0.1, "rotation": 0.7, "lens": 0.1})
    choice = choose_task(np.clip(photo, 40, 215).astype(np.uint8), classifier=stub)
    assert stub.calls == 1
    assert choice.task == "rotation" and choice.confidence == pytest.approx(0.7)
    assert choice.probabilities["lens"] == pytest.approx(0.1)


@pytest.mark.parametrize(("top", "threshold", "decided"), [(0.55, 0.6, False), (0.65, 0.6, True), (0.65, 0.7, False)])
def test_threshold(photo: np.ndarray, top: float, threshold: float, decided: bool) -> None:
    rest = (1 - top) / 3
    stub = _Stub({"none": rest, "rsc": rest, "rotation": rest, "lens": top})
    choice = choose_task(np.clip(photo, 40, 215).astype(np.uint8), classifier=stub, threshold=threshold)
    assert choice.best == "lens" and choice.confidence == pytest.approx(top)
    assert choice.task == ("lens" if decided else None)
    if not decided:
        assert "unsure" in choice.reason


def test_classifier_shape_and_round_trip(tmp_path: Path, photo: np.ndarray) -> None:
    torch.manual_seed(0)
    model = TaskClassifier(width=8).eval()
    x = torch.from_numpy(classifier_input(photo))[None]
    assert x.shape == (1, 3, *task_choice.INPUT_SIZE)
    with torch.no_grad():
        logits = model(torch.cat([x, x.flip(-1)]))
    assert logits.shape == (2, len(CLASSIFIER_TASKS))
    model.save_pretrained(str(tmp_path / "clf"))
    assert (tmp_path / "clf" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = task_choice.load_task_classifier(tmp_path / "clf")
    assert loaded.class_names == list(CLASSIFIER_TASKS) and loaded.config.width == 8
    with torch.no_grad():
        assert torch.allclose(loaded(torch.cat([x, x.flip(-1)])), logits, atol=1e-6)
    choice = choose_task(np.clip(photo, 40, 215).astype(np.uint8), classifier=loaded, threshold=0.0)
    assert choice.task in CLASSIFIER_TASKS
    assert sum(choice.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_training_runs_and_saves(tmp_path: Path) -> None:
    t0 = time.time()
    model = task_choice.train_task_classifier(tmp_path / "clf", num_per_task=2, steps=3, photos="procedural",
                                              batch_size=8, width=8, log=None)
    assert time.time() - t0 < 20
    assert (tmp_path / "clf" / "config.json").is_file()
    assert not model.training
    assert TaskClassifier.from_pretrained(str(tmp_path / "clf")).class_names == list(CLASSIFIER_TASKS)


def test_training_samples_are_seeded_and_labelled() -> None:
    x1, y1 = task_choice.make_classifier_data(1, 5, ["procedural"])
    x2, _ = task_choice.make_classifier_data(1, 5, ["procedural"])
    x3, _ = task_choice.make_classifier_data(1, 6, ["procedural"])
    # none, rsc + its global-shutter truth (none), rotation, lens + its rectilinear truth (none)
    assert x1.shape == (6, 3, *task_choice.INPUT_SIZE) and list(y1) == [0, 1, 0, 2, 3, 0]
    assert np.array_equal(x1, x2) and not np.array_equal(x1, x3)
    assert task_choice.TRAIN_SEED != task_choice.TEST_SEED


def test_bundled_classifier_loads() -> None:
    from stablemotion.model.catalog import bundled_task_classifier_path

    folder = bundled_task_classifier_path()
    assert sum(p.stat().st_size for p in folder.iterdir()) < 1_000_000
    assert task_choice.load_task_classifier().class_names == list(CLASSIFIER_TASKS)


# --------------------------------------------------------------------------- rectify --task auto
def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def test_rectify_auto_stitched_uses_bundled_sir(photo: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import stablemotion.cli._options as options

    loaded: list[object] = []
    real = options.load_model
    monkeypatch.setattr(options, "load_model", lambda model, task, *a, **k: loaded.append((model, task)) or real(
        model, task, *a, **k))
    monkeypatch.setattr(task_choice, "load_task_classifier", lambda *a: pytest.fail("the SIR rule must decide"))
    save_image(_notched(photo), tmp_path / "in" / "pano.png")
    save_image(_notched(photo[:, ::-1].copy()), tmp_path / "in" / "pano2.png")
    out = tmp_path / "out"
    code, text = _run(["rectify", str(tmp_path / "in"), "--task", "auto", "--out", str(out)], capsys)
    assert code == 0, text
    assert "pano: task sir (100%): flat empty border" in text
    assert loaded == [(None, "sir")]  # one model for the batch: the bundled SIR one
    assert "rectified 2 images" in text
    assert load_image(out / "pano.png").shape == photo.shape


def test_rectify_auto_undecided_fails_that_file(photo: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(image: np.ndarray, classifier: object = None, threshold: float = 0.6) -> TaskChoice:
        if (image == 0).any(axis=-1).mean() > 0.005:
            return TaskChoice("sir", 1.0, "flat empty border", {"sir": 1.0}, "sir")
        return TaskChoice(None, 0.41, "classifier unsure", {"rotation": 0.41, "lens": 0.39}, "rotation")

    monkeypatch.setattr(task_choice, "choose_task", fake)
    save_image(np.clip(photo, 40, 215).astype(np.uint8), tmp_path / "in" / "plain.png")
    save_image(_notched(photo), tmp_path / "in" / "pano.png")
    out = tmp_path / "out"
    code, text = _run(["rectify", str(tmp_path / "in"), "--task", "auto", "--out", str(out)], capsys)
    assert code == 1, text
    assert "plain: task undecided (41%)" in text
    assert "failed plain: cannot tell the task (best guess rotation at 41%): pass --task sir|rsc|" in text
    assert "rectified 1 image" in text and (out / "pano.png").is_file() and not (out / "plain.png").exists()


def test_rectify_auto_task_without_bundled_model(photo: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(task_choice, "choose_task",
                        lambda image, classifier=None, threshold=0.6: TaskChoice("lens", 0.9, "classifier (lens)",
                                                                                 {"lens": 0.9}, "lens"))
    save_image(np.clip(photo, 40, 215).astype(np.uint8), tmp_path / "in" / "fish.png")
    code, text = _run(["rectify", str(tmp_path / "in" / "fish.png"), "--task", "auto", "--out",
                       str(tmp_path / "out")], capsys)
    assert code == 0 and "using the bundled stablemotion-mini-multi model" in text, text  # lens: the multi-task mini
    from stablemotion.model import catalog
    monkeypatch.setattr(catalog, "BUNDLED_MODELS", {"sir": "stablemotion-mini-sir", "rsc": "stablemotion-mini-rsc"})
    code, text = _run(["rectify", str(tmp_path / "in" / "fish.png"), "--task", "auto", "--out",
                       str(tmp_path / "out2")], capsys)
    assert code == 1, text
    assert "failed fish:" in text and "no lens model is bundled; pass --model" in text

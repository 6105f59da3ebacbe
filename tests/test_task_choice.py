"""Automatic task choice (:mod:`stablemotion.model.task_choice`) and ``rectify --task auto``."""

from __future__ import annotations

import json
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
    choose_threshold,
    decide,
    expected_calibration_error,
    fit_temperature,
)


class _Stub:
    """A classifier that answers fixed (calibrated) probabilities and counts its calls."""

    def __init__(self, probs: dict[str, float], threshold: float | None = None) -> None:
        self.probs = probs
        self.calls = 0
        if threshold is not None:
            self.threshold = threshold

    def predict_proba(self, image: np.ndarray) -> dict[str, float]:
        self.calls += 1
        return self.probs


def _notched(photo: np.ndarray) -> np.ndarray:
    img = np.clip(photo, 40, 215).astype(np.uint8)
    img[:12, :40] = 0  # a flat black notch at the corner: 480 of 12288 pixels (3.9%)
    return img


def _plain(photo: np.ndarray) -> np.ndarray:
    return np.clip(photo, 40, 215).astype(np.uint8)


def test_sir_rule_flat_black_notch(photo: np.ndarray) -> None:
    stub = _Stub({"rsc": 1.0})
    choice = choose_task(_notched(photo), classifier=stub)
    assert choice.task == "sir" and choice.confidence == 1.0
    assert "empty black border" in choice.reason
    assert stub.calls == 0  # the detector decides; the classifier is not asked


def test_stitched_sample_is_sir(monkeypatch: pytest.MonkeyPatch) -> None:
    from stablemotion.data.synthesis import make_sample

    monkeypatch.setattr(task_choice, "load_task_classifier", lambda *a: pytest.fail("the detector must decide"))
    for style in ("panorama", "stitched"):
        image = make_sample("rectangling", 3, 0, (96, 128), ["procedural"], style=style).input
        choice = choose_task(image)
        assert choice.task == "sir" and choice.probabilities == {"sir": 1.0}, (style, choice)
        assert task_choice.empty_fraction(image) > 0.01


def test_astronaut_is_none_with_the_shipped_classifier() -> None:
    from skimage import data

    choice = choose_task(data.astronaut())  # the black helmet is no stitched border
    assert choice.task == "none", choice
    assert 0.0 <= choice.confidence <= 1.0 and choice.reason
    assert set(choice.probabilities) == set(CLASSIFIER_TASKS)
    assert sum(choice.probabilities.values()) == pytest.approx(1.0, abs=1e-4)


def test_no_border_goes_to_classifier(photo: np.ndarray) -> None:
    stub = _Stub({"none": 0.02, "sir": 0.0, "rsc": 0.03, "rotation": 0.95})
    choice = choose_task(_plain(photo), classifier=stub, threshold=0.9)
    assert stub.calls == 1
    assert choice.task == "rotation" and choice.confidence == pytest.approx(0.95)
    assert choice.best == "rotation" and choice.probabilities["rsc"] == pytest.approx(0.03)


@pytest.mark.parametrize(("top", "threshold", "task"), [(0.55, 0.6, "none"), (0.65, 0.6, "lens"), (0.65, 0.7, "none")])
def test_threshold_leaves_unsure_images_alone(photo: np.ndarray, top: float, threshold: float, task: str) -> None:
    rest = (1 - top) / 4
    stub = _Stub({"none": rest, "sir": rest, "rsc": rest, "rotation": rest, "lens": top})
    choice = choose_task(_plain(photo), classifier=stub, threshold=threshold)
    assert choice.best == "lens" and choice.task == task
    if task == "none":  # not sure enough: copied unchanged, with the best guess in the reason
        assert choice.confidence == pytest.approx(rest)
        assert "best guess lens" in choice.reason and f"threshold {threshold:.0%}" in choice.reason


def test_threshold_defaults_to_the_classifier_s(photo: np.ndarray) -> None:
    probs = {"none": 0.1, "sir": 0.0, "rsc": 0.0, "rotation": 0.0, "lens": 0.9}
    assert choose_task(_plain(photo), classifier=_Stub(probs, threshold=0.95)).task == "none"
    assert choose_task(_plain(photo), classifier=_Stub(probs, threshold=0.85)).task == "lens"
    assert choose_task(_plain(photo), classifier=_Stub(probs)).task == "none"  # DEFAULT_THRESHOLD 0.9: not above
    with pytest.raises(ValueError, match="threshold must be in"):
        choose_task(_plain(photo), classifier=_Stub(probs), threshold=1.5)


def test_decide_none_wins_even_when_sure() -> None:
    assert decide({"none": 0.6, "lens": 0.4}, 0.0)[0] == "none"
    assert decide({"none": 0.3, "lens": 0.7}, 0.0)[0] == "lens"


# --------------------------------------------------------------------------- calibration
class _FakeClassifier:
    """A tiny classifier of 2-D points "trained" on its own split (class means and priors of
    Gaussian blobs, the Bayes rule), with its logits multiplied by ``sharpness``: overconfident."""

    def __init__(self, feats: np.ndarray, labels: np.ndarray, sharpness: float) -> None:
        self.means = np.stack([feats[labels == k].mean(0) for k in range(3)])
        self.log_prior = np.log(np.bincount(labels, minlength=3) / len(labels))
        self.k = sharpness

    def logits(self, feats: np.ndarray) -> np.ndarray:
        var = 0.9**2
        return (feats @ self.means.T / var - (self.means**2).sum(1) / (2 * var) + self.log_prior) * self.k


def _blobs(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    centres = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])  # none, task a, task b
    y = rng.choice(3, n, p=[0.5, 0.25, 0.25])
    return centres[y] + rng.normal(0, 0.9, (n, 2)), y


def test_calibration_and_threshold_on_held_out_data() -> None:
    rng = np.random.default_rng(0)
    xtr, ytr = _blobs(rng, 3000)
    clf = _FakeClassifier(xtr, ytr, sharpness=4.0)
    xc, yc = _blobs(np.random.default_rng(1), 4000)  # calibration: not used in training
    xt, yt = _blobs(np.random.default_rng(2), 4000)  # test
    t = fit_temperature(clf.logits(xc), yc)
    assert 3.0 < t < 5.0  # the overconfident logits are softened back to about the Bayes rule's
    raw = torch.softmax(torch.from_numpy(clf.logits(xt)), -1).numpy()
    cal = torch.softmax(torch.from_numpy(clf.logits(xt)) / t, -1).numpy()
    assert expected_calibration_error(cal, yt) < 0.03 < expected_calibration_error(raw, yt)

    pc = torch.softmax(torch.from_numpy(clf.logits(xc)) / t, -1).numpy()
    thr = choose_threshold(pc, yc, max_warped=0.02)

    def warped(p: np.ndarray, y: np.ndarray, threshold: float) -> float:
        none = p[y == 0]
        return float(((none.argmax(1) != 0) & (none.max(1) > threshold)).mean())

    assert warped(pc, yc, thr) <= 0.02  # by construction on the calibration split
    assert warped(pc, yc, thr - 1e-3) > 0.02  # and the least such threshold
    assert warped(cal, yt, thr) <= 0.035  # carries over to the test split (sampling noise only)
    # the decision rule agrees with the counting above
    chosen = [decide(dict(zip(("none", "a", "b"), row, strict=True)), thr)[0] for row in cal[yt == 0]]
    assert np.mean([c != "none" for c in chosen]) == pytest.approx(warped(cal, yt, thr))


def test_choose_threshold_edge_cases() -> None:
    p = np.array([[0.9, 0.1], [0.8, 0.2]])
    assert choose_threshold(p, np.array([0, 0])) == 0.0  # argmax is none everywhere: nothing to hold back
    with pytest.raises(ValueError, match="class none"):
        choose_threshold(p, np.array([1, 1]))


# --------------------------------------------------------------------------- saving and loading
def test_round_trip_is_weights_only(tmp_path: Path, photo: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = TaskClassifier(widths=(4, 8, 8, 8, 8), temperature=1.7, threshold=0.8).eval()
    model.save(tmp_path / "clf")
    assert sorted(p.name for p in (tmp_path / "clf").iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert config["class_names"] == list(CLASSIFIER_TASKS) and config["temperature"] == 1.7
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("no pickle: safetensors only"))
    loaded = task_choice.load_task_classifier(tmp_path / "clf")
    assert loaded.threshold == 0.8 and loaded.temperature == 1.7 and not loaded.training
    expected = {k: float(v) for k, v in model.half().float().predict_proba(photo).items()}  # saved as fp16
    assert loaded.predict_proba(photo) == pytest.approx(expected, abs=1e-4)


def test_corrupt_weights_name_the_file(tmp_path: Path) -> None:
    TaskClassifier(widths=(4, 4, 4, 4, 4)).save(tmp_path / "clf")
    weights = tmp_path / "clf" / "model.safetensors"
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"task classifier weights .*model\.safetensors.*not a readable safetensors"):
        task_choice.load_task_classifier(tmp_path / "clf")
    TaskClassifier(widths=(4, 4, 4, 4, 8)).save(tmp_path / "other")
    weights.write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())  # a different shape
    with pytest.raises(ValueError, match=r"model\.safetensors do not fit its config"):
        task_choice.load_task_classifier(tmp_path / "clf")
    (tmp_path / "clf" / "config.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"config .*config\.json: not readable JSON"):
        task_choice.load_task_classifier(tmp_path / "clf")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        task_choice.load_task_classifier(tmp_path / "missing")


def test_training_runs_calibrates_and_saves(tmp_path: Path) -> None:
    from stablemotion.model.task_choice_training import train_task_classifier

    t0 = time.time()
    model = train_task_classifier(tmp_path / "clf", num_per_class=2, num_calibration=2, steps=3, photos="procedural",
                                  batch_size=8, widths=(4, 4, 8, 8, 8), log=None)
    assert time.time() - t0 < 60
    assert not model.training and model.temperature > 0 and 0.0 <= model.threshold <= 1.0
    assert task_choice.load_task_classifier(tmp_path / "clf").class_names == list(CLASSIFIER_TASKS)


def test_training_samples_are_seeded_and_labelled() -> None:
    from stablemotion.model.task_choice_training import (
        TEST_SEED,
        TRAIN_SEED,
        held_out_photos,
        make_classifier_data,
    )

    counts = {"none": 2, "rotation": 1, "lens": 1}
    x1, y1, m1 = make_classifier_data(counts, 5, ["procedural"])
    x2, _, _ = make_classifier_data(counts, 5, ["procedural"])
    x3, _, _ = make_classifier_data(counts, 6, ["procedural"])
    assert x1.shape == (4, *task_choice.INPUT_SIZE, 3) and x1.dtype == np.uint8
    assert list(y1) == [0, 0, 3, 4] and m1[0] == 0 and 1 <= m1[2] <= 12 and 0.05 <= m1[3] <= 0.35
    assert np.array_equal(x1, x2) and not np.array_equal(x1, x3)
    assert TRAIN_SEED != TEST_SEED
    files = [{p for p in held_out_photos(s) if "." in p} for s in ("calibration", "test")]
    assert files[0] and files[1] and not files[0] & files[1]


def test_bundled_classifier_loads() -> None:
    from stablemotion.model.catalog import bundled_task_classifier_path

    folder = bundled_task_classifier_path()
    assert sum(p.stat().st_size for p in folder.iterdir()) < 4_000_000
    clf = task_choice.load_task_classifier()
    assert clf.class_names == list(CLASSIFIER_TASKS) and 0.5 < clf.threshold < 1.0 and clf.temperature > 0


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
    assert "pano: task sir (100%): empty black border" in text
    assert loaded == [(None, "sir")]  # one model for the batch: the bundled SIR one
    assert "rectified 2 images" in text
    assert load_image(out / "pano.png").shape == photo.shape


def test_rectify_auto_none_copies_that_file_unchanged(photo: np.ndarray, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(image: np.ndarray, classifier: object = None, threshold: float | None = None) -> TaskChoice:
        if (image == 0).any(axis=-1).mean() > 0.005:
            return TaskChoice("sir", 1.0, "empty black border", {"sir": 1.0}, "sir")
        return TaskChoice("none", 0.2, "no task is sure enough: best guess rotation at 41% <= threshold 80%",
                          {"none": 0.2, "rotation": 0.41, "lens": 0.39}, "rotation")

    monkeypatch.setattr(task_choice, "choose_task", fake)
    plain = np.clip(photo, 40, 215).astype(np.uint8)
    save_image(plain, tmp_path / "in" / "plain.png")
    save_image(_notched(photo), tmp_path / "in" / "pano.png")
    out = tmp_path / "out"
    code, text = _run(["rectify", str(tmp_path / "in"), "--task", "auto", "--out", str(out)], capsys)
    assert code == 0, text
    assert "plain: task none (20%): no task is sure enough: best guess rotation at 41%" in text
    assert (out / "pano.png").is_file() and np.array_equal(load_image(out / "plain.png"), plain)  # unchanged


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

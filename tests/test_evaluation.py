"""Evaluation, scoring and the two studies on tiny synthetic test splits (no downloads)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from stablemotion.data.synth import write_rectangling_dataset, write_rolling_shutter_dataset
from stablemotion.evaluation import (
    EvalSettings,
    evaluate,
    open_eval_set,
    optional_metrics,
    score_folders,
    shard_names,
    study_ensemble,
    study_steps,
)
from stablemotion.io.images import load_image, save_image
from stablemotion.model import tiny_pipeline


@pytest.fixture(scope="module")
def dird(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dird")
    write_rectangling_dataset(root, 3, size=(32, 48), split="testing", seed=0)
    return root


@pytest.fixture(scope="module")
def sir_pipe():
    pipe = tiny_pipeline("sir", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class CountingPipe:
    """Wraps a pipeline and counts its calls (resume must skip finished images)."""

    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.pipe(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.pipe, name)


def _skimage_scores(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    return (peak_signal_noise_ratio(gt, pred, data_range=255),
            structural_similarity(gt, pred, data_range=255, channel_axis=2, win_size=7))


def _csv_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {r["name"]: r for r in csv.DictReader(f)}


def test_open_eval_set_detects_layouts(dird: Path, tmp_path: Path) -> None:
    es = open_eval_set(dird, "sir")
    assert es.kind == "dird" and len(es) == 3
    s = es.get(es.names[0])
    assert s.image.shape == (32, 48, 3) and s.image.dtype == np.uint8
    # the mask as the file reads (DIR-D: a 3-channel JPEG), fed to the model as its mask_encoding says
    assert np.array_equal(s.mask, load_image(dird / "testing" / "mask" / f"{s.name}.jpg"))
    # uint8 samples are the files themselves (lossless round trip through the dataset tensors)
    assert np.array_equal(s.gt, load_image(dird / "testing" / "gt" / f"{s.name}.jpg"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        open_eval_set(tmp_path / "nowhere")
    with pytest.raises(KeyError, match="zzz"):
        es.get("zzz")


def test_evaluate_matches_scikit_image_and_identity(dird: Path, sir_pipe, tmp_path: Path) -> None:
    es = open_eval_set(dird, "sir")
    out = tmp_path / "run"
    summary = evaluate(sir_pipe, es, out, EvalSettings(seed=3), model_name="tiny")
    assert summary is not None and len(summary.rows) == 3
    rows = _csv_rows(out / "per_image.csv")
    assert set(rows) == set(es.names) | {"mean"}
    ps, ss = [], []
    for name in es.names:
        pred = load_image(out / "results" / f"{name}.png")
        gt = load_image(dird / "testing" / "gt" / f"{name}.jpg")
        inp = load_image(dird / "testing" / "input" / f"{name}.jpg")
        p, s = _skimage_scores(pred, gt)
        ip, iss = _skimage_scores(inp, gt)
        assert float(rows[name]["psnr"]) == pytest.approx(p, abs=1e-5)
        assert float(rows[name]["ssim"]) == pytest.approx(s, abs=1e-5)
        assert float(rows[name]["identity_psnr"]) == pytest.approx(ip, abs=1e-5)
        assert float(rows[name]["identity_ssim"]) == pytest.approx(iss, abs=1e-5)
        assert float(rows[name]["seconds"]) > 0
        ps.append(p)
        ss.append(s)
    assert summary.mean_psnr == pytest.approx(np.mean(ps), abs=1e-5)
    assert float(rows["mean"]["psnr"]) == pytest.approx(np.mean(ps), abs=1e-5)
    md = (out / "summary.md").read_text()
    assert "Input (identity)" in md and "StableMotion" in md and f"{np.mean(ss):.4f}" in md


def test_resume_skips_finished_images_and_refuses_other_settings(dird: Path, sir_pipe, tmp_path: Path) -> None:
    es = open_eval_set(dird, "sir")
    out = tmp_path / "run"
    first = CountingPipe(sir_pipe)
    evaluate(first, es, out, EvalSettings(), limit=2)
    assert first.calls == 2
    before = {n: (out / "results" / f"{n}.png").stat().st_mtime_ns for n in es.names[:2]}
    again = CountingPipe(sir_pipe)
    summary = evaluate(again, es, out, EvalSettings())  # all three: only the new one runs
    assert again.calls == 1 and len(summary.rows) == 3
    assert before == {n: (out / "results" / f"{n}.png").stat().st_mtime_ns for n in es.names[:2]}
    assert all(not math.isnan(r["seconds"]) for r in summary.rows)  # timings of the first run kept
    with pytest.raises(ValueError, match="another run"):
        evaluate(sir_pipe, es, out, EvalSettings(steps=2))


def test_sharded_runs_merge_to_the_single_process_result(dird: Path, sir_pipe, tmp_path: Path) -> None:
    es = open_eval_set(dird, "sir")
    assert shard_names(es.names, 0, 2) + shard_names(es.names, 1, 2) != []
    assert sorted(shard_names(es.names, 0, 2) + shard_names(es.names, 1, 2)) == sorted(es.names)
    single = evaluate(sir_pipe, es, tmp_path / "one", EvalSettings(seed=5))
    # Two "processes" with a no-op barrier: rank 1 first (it returns None), then rank 0 merges.
    assert evaluate(sir_pipe, es, tmp_path / "two", EvalSettings(seed=5), rank=1, world=2) is None
    merged = evaluate(sir_pipe, es, tmp_path / "two", EvalSettings(seed=5), rank=0, world=2)
    assert [r["name"] for r in merged.rows] == [r["name"] for r in single.rows]
    for a, b in zip(merged.rows, single.rows, strict=True):
        assert a["psnr"] == pytest.approx(b["psnr"], abs=1e-9) and a["ssim"] == pytest.approx(b["ssim"], abs=1e-9)
    assert sorted(p.name for p in (tmp_path / "two" / "shards").iterdir()) == ["rank0.csv", "rank1.csv"]


def test_rs_real_layout_is_scored_at_full_resolution(tmp_path: Path) -> None:
    write_rolling_shutter_dataset(tmp_path / "rs", 2, size=(40, 40), split="test", seed=0, npz_size=(32, 32))
    es = open_eval_set(tmp_path / "rs", "rsc")
    assert es.kind == "rsreal" and es.full_res
    pipe = tiny_pipeline("rsc", seed=1)
    summary = evaluate(pipe, es, tmp_path / "out", EvalSettings())
    name = es.names[0]
    pred = load_image(tmp_path / "out" / "results" / f"{name}.png")
    gt = load_image(tmp_path / "rs" / "test" / "jpg_gt" / f"{name}.jpg")
    assert pred.shape == gt.shape == (40, 40, 3)
    assert summary.rows[0]["psnr"] == pytest.approx(_skimage_scores(pred, gt)[0], abs=1e-5)


def test_score_folders_with_identity_baseline(tmp_path: Path, photo: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    gt = photo[:48, :64]
    inp = np.clip(gt.astype(int) + rng.integers(-40, 40, gt.shape), 0, 255).astype(np.uint8)
    res = np.clip(gt.astype(int) + rng.integers(-10, 10, gt.shape), 0, 255).astype(np.uint8)
    save_image(gt, tmp_path / "gt" / "a.jpg")
    save_image(inp, tmp_path / "in" / "a.png")
    save_image(res, tmp_path / "res" / "a.png")
    summ = score_folders(tmp_path / "res", tmp_path / "gt", inputs=tmp_path / "in")
    gt_loaded = load_image(tmp_path / "gt" / "a.jpg")
    assert summ.rows[0]["psnr"] == pytest.approx(_skimage_scores(res, gt_loaded)[0], abs=1e-6)
    assert summ.rows[0]["identity_psnr"] == pytest.approx(_skimage_scores(inp, gt_loaded)[0], abs=1e-6)
    assert summ.rows[0]["psnr"] > summ.rows[0]["identity_psnr"]
    save_image(res, tmp_path / "res" / "b.png")
    with pytest.raises(ValueError, match="no ground truth .* for result b"):
        score_folders(tmp_path / "res", tmp_path / "gt")


def test_optional_metrics_say_what_is_missing(dird: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "lpips", None)  # "not installed"
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path / "hub"))
    res = optional_metrics(["fid", "lpips"], open_eval_set(dird, "sir"), tmp_path, [])
    assert "pip install lpips" in res["lpips"]["note"]
    assert "not computed" in res["fid"]["note"]
    assert "pytorch-fid" in res["fid"]["note"] or "pt_inception" in res["fid"]["note"]
    with pytest.raises(ValueError, match="unknown extra metric"):
        optional_metrics(["topiq"], open_eval_set(dird, "sir"), tmp_path, [])


def test_study_steps_writes_rows_table_and_plot(dird: Path, sir_pipe, tmp_path: Path) -> None:
    es = open_eval_set(dird, "sir")
    res = study_steps(sir_pipe, es, tmp_path / "st", steps=(1, 2), limit=2)
    assert [r["steps"] for r in res.rows] == [1, 2]
    with open(res.csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["steps"]) for r in rows] == [1, 2] and all(int(r["images"]) == 2 for r in rows)
    # each row is the mean of its own evaluation
    one = _csv_rows(tmp_path / "st" / "steps_1" / "per_image.csv")
    assert float(rows[0]["psnr"]) == pytest.approx(float(one["mean"]["psnr"]), abs=1e-5)
    assert res.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 2 |" in res.markdown.read_text()


def test_study_ensemble_rows_per_mode_and_size(dird: Path, sir_pipe, tmp_path: Path) -> None:
    es = open_eval_set(dird, "sir")
    res = study_ensemble(sir_pipe, es, tmp_path / "en", sizes=(1, 2), modes=("image", "latent"), limit=1)
    assert [(r["mode"], r["size"]) for r in res.rows] == [("image", 1), ("image", 2), ("latent", 1), ("latent", 2)]
    assert res.rows[0]["psnr"] == res.rows[2]["psnr"]  # size 1 is one shared run
    assert sorted(p.name for p in (tmp_path / "en").iterdir() if p.is_dir()) == ["aes_1", "aes_image_2", "aes_latent_2"]
    assert res.plot.is_file() and res.csv.read_text().startswith("mode,size,psnr,ssim,seconds_per_image,images")


def test_evaluate_runs_the_chosen_task_of_a_multi_task_model(tmp_path: Path) -> None:
    from stablemotion.data.synth import write_dataset

    write_dataset("lens", tmp_path / "lens", 2, size=(32, 32), split="test", seed=0)
    multi = tiny_pipeline(["sir", "lens"], seed=0)
    multi.set_progress_bar_config(disable=True)
    seen = []

    class Spy(CountingPipe):
        def __call__(self, *args, **kwargs):
            seen.append(kwargs.get("task"))
            return super().__call__(*args, **kwargs)

    es = open_eval_set(tmp_path / "lens", "lens", split="test", kind="folder")
    summary = evaluate(Spy(multi), es, tmp_path / "run", EvalSettings(task="lens"))
    assert summary is not None and seen == ["lens", "lens"]  # the lens prompt, no mask needed
    with pytest.raises(ValueError, match="serves"):
        evaluate(multi, es, tmp_path / "run2", EvalSettings(task="rsc"))


def test_score_table_is_the_one_result_table(tmp_path: Path) -> None:
    from stablemotion.core.metrics import EvaluationResult, ScoreTable
    from stablemotion.data.labelling import LabelReport
    from stablemotion.evaluation import EvalSummary
    from stablemotion.evaluation.score import ScoreItem, score

    assert EvalSummary is ScoreTable and EvaluationResult is ScoreTable and issubclass(LabelReport, ScoreTable)
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 255, (16, 16, 3)).astype(np.uint8)
    out = np.clip(gt.astype(int) + 9, 0, 255).astype(np.uint8)
    flow_gt = np.zeros((16, 16, 2), np.float32)
    table = score([ScoreItem("a", out, gt, flow_gt + np.float32([3, 4]), flow_gt, input=gt),
                   ScoreItem("b", gt, gt, flow_gt, flow_gt + np.float32([0, 2]))])
    a, b = table.rows
    assert a["psnr"] == pytest.approx(_skimage_scores(out, gt)[0]) and a["epe"] == pytest.approx(5.0)
    assert a["identity_psnr"] == math.inf and a["identity_epe"] == 0.0 and "identity_psnr" not in b
    assert table.mean_epe == pytest.approx(3.5) and table.mean_psnr == math.inf
    assert LabelReport(rows=table.rows).mean_psnr == pytest.approx(a["psnr"])  # labelling's means skip inf
    table.write_csv(tmp_path / "t.csv")
    rows = _csv_rows(tmp_path / "t.csv")
    assert list(rows["a"]) == ["name", "psnr", "ssim", "epe", "identity_psnr", "identity_ssim", "identity_epe"]
    assert float(rows["mean"]["epe"]) == pytest.approx(3.5)
    with pytest.raises(ValueError, match="size mismatch"):
        score([ScoreItem("c", out[:8], gt)])


def test_evaluate_reports_epe_over_the_protocols_region(tmp_path: Path) -> None:
    import dataclasses

    from stablemotion.cli import main
    from stablemotion.core.metrics import epe
    from stablemotion.tasks import get_protocol

    assert main(["synth", "rotation", str(tmp_path / "rot"), "--num", "2", "--size", "32x48", "--split", "test",
                 "--workers", "1"]) == 0
    for f in sorted((tmp_path / "rot" / "test" / "flow").glob("*.npy")):  # the left columns look outside the frame
        g = np.zeros((32, 48, 2), np.float32)
        g[:, :6, 0] = -1000.0
        np.save(f, g)
    es = open_eval_set(tmp_path / "rot", "rotation")  # the protocol's layout and split
    assert es.kind == "folder" and es.has_flows and es.protocol == get_protocol("rotation")
    pipe = tiny_pipeline("rotation", seed=0)
    scores = {}
    for region in ("all", "valid"):
        es.protocol = dataclasses.replace(es.protocol, epe_region=region)
        out = tmp_path / region
        summary = evaluate(pipe, es, out, EvalSettings())
        for row in summary.rows:
            flow = np.load(out / "flows" / f"{row['name']}.npy")
            gt = es.get(row["name"]).flow_gt
            assert row["epe"] == pytest.approx(epe(flow, gt, region), rel=1e-6)
        assert summary.settings["epe_region"] == region and "EPE (px)" in (out / "summary.md").read_text()
        scores[region] = summary.mean_epe
    assert scores["all"] > scores["valid"] + 100  # the outside columns count only over "all"


def test_rs_real_epe_is_scored_on_the_valid_region(tmp_path: Path) -> None:
    write_rolling_shutter_dataset(tmp_path / "rs", 2, size=(40, 40), split="test", seed=0, npz_size=(32, 32))
    es = open_eval_set(tmp_path / "rs", "rsc")
    assert es.protocol.epe_region == "valid" and es.has_flows
    summary = evaluate(tiny_pipeline("rsc", seed=1), es, tmp_path / "out", EvalSettings())
    assert summary.settings["epe_region"] == "valid"
    assert all(math.isfinite(r["epe"]) and math.isfinite(r["identity_epe"]) for r in summary.rows)

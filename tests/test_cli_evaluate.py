"""``stablemotion evaluate`` / ``study`` / ``score`` end to end on a tiny model and a synthetic split."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

from stablemotion.cli import main
from stablemotion.data.synth import write_rectangling_dataset
from stablemotion.io.images import load_image, save_image


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli_eval")
    assert main(["tiny-model", "--task", "sir", "--out", str(root / "model")]) == 0
    write_rectangling_dataset(root / "dird", 2, size=(32, 48), split="testing", seed=2)
    return {"model": root / "model", "data": root / "dird"}


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out + cap.err


def test_evaluate_writes_results_csv_summary_and_resumes(env: dict[str, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "ev"
    argv = ["evaluate", "--model", str(env["model"]), "--dataset", str(env["data"]), "--task", "sir", "--out", str(out)]
    code, text = _run(argv, capsys)
    assert code == 0, text
    assert "2 images  PSNR" in text and "identity" in text
    with open(out / "per_image.csv", newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    for name in ("00000", "00001"):
        pred = load_image(out / "results" / f"{name}.png")
        gt = load_image(env["data"] / "testing" / "gt" / f"{name}.jpg")
        assert float(rows[name]["psnr"]) == pytest.approx(peak_signal_noise_ratio(gt, pred, data_range=255), abs=1e-5)
    assert "| Input (identity) |" in (out / "summary.md").read_text()
    mtime = (out / "results" / "00000.png").stat().st_mtime_ns
    code, text = _run(argv, capsys)  # resume: nothing left to do, same summary
    assert code == 0 and (out / "results" / "00000.png").stat().st_mtime_ns == mtime
    code, text = _run([*argv, "--steps", "2"], capsys)
    assert code == 2 and "another run" in text and "Traceback" not in text


def test_evaluate_errors_name_the_problem(env: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, text = _run(["evaluate", "--model", str(env["model"]), "--dataset", str(tmp_path / "missing"),
                       "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "missing" in text
    code, text = _run(["evaluate", "--model", str(env["model"]), "--dataset", str(env["data"]), "--task", "rsc",
                       "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "'sir' model" in text


def test_study_commands_write_csv_markdown_and_plot(env: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    base = ["--model", str(env["model"]), "--dataset", str(env["data"]), "--limit", "1"]
    code, text = _run(["study", "steps", *base, "--steps", "1", "2", "--out", str(tmp_path / "s")], capsys)
    assert code == 0, text
    lines = (tmp_path / "s" / "steps.csv").read_text().splitlines()
    assert lines[0].startswith("steps,psnr,ssim") and [x.split(",")[0] for x in lines[1:]] == ["1", "2"]
    assert (tmp_path / "s" / "steps.png").stat().st_size > 1000
    code, text = _run(["study", "ensemble", *base, "--sizes", "1", "2", "--modes", "flow", "latent",
                       "--out", str(tmp_path / "e")], capsys)
    assert code == 0, text
    with open(tmp_path / "e" / "ensemble.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["mode"], r["size"]) for r in rows] == [("flow", "1"), ("flow", "2"), ("latent", "1"), ("latent", "2")]
    assert (tmp_path / "e" / "ensemble.md").read_text().count("\n| ") == 5  # header + 4 rows


def test_score_with_identity_baseline_and_markdown(tmp_path: Path, photo: np.ndarray,
                                                   capsys: pytest.CaptureFixture) -> None:
    gt = photo[:48, :64]
    save_image(gt, tmp_path / "gt" / "x.png")
    save_image(np.roll(gt, 3, axis=1), tmp_path / "in" / "x.png")
    save_image(np.roll(gt, 1, axis=1), tmp_path / "res" / "x.png")
    code, text = _run(["score", str(tmp_path / "res"), str(tmp_path / "gt"), "--inputs", str(tmp_path / "in"),
                       "--markdown", str(tmp_path / "s.md"), "--csv", str(tmp_path / "s.csv")], capsys)
    assert code == 0, text
    ident = peak_signal_noise_ratio(gt, np.roll(gt, 3, axis=1), data_range=255)
    assert f"identity: PSNR {ident:.4f} dB" in text
    assert "| Input (identity) |" in (tmp_path / "s.md").read_text()
    assert (tmp_path / "s.csv").read_text().startswith("name,psnr,ssim,identity_psnr,identity_ssim")


def test_evaluate_data_parallel_two_processes(env: dict[str, Path], tmp_path: Path) -> None:
    """Two CPU processes (torchrun, as `accelerate launch` starts them): one shard each, merged once."""
    out = tmp_path / "dp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "stablemotion", "evaluate", "--model", str(env["model"]), "--dataset", str(env["data"]),
           "--out", str(out), "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["rank0.csv", "rank1.csv"]
    for shard in ("rank0.csv", "rank1.csv"):  # each process scored exactly one image
        assert len((out / "shards" / shard).read_text().splitlines()) == 2
    assert proc.stdout.count("2 images  PSNR") == 1  # only the main process reports
    with open(out / "per_image.csv", newline="") as f:
        assert [r["name"] for r in csv.DictReader(f)] == ["00000", "00001", "mean"]


def test_evaluate_reports_epe_on_a_synth_task_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import json

    assert main(["synth", "lens", str(tmp_path / "lens"), "--num", "2", "--size", "32x48", "--split", "test",
                 "--workers", "1"]) == 0
    assert main(["tiny-model", "--task", "lens", "--out", str(tmp_path / "model")]) == 0
    out = tmp_path / "ev"
    code, text = _run(["evaluate", "--model", str(tmp_path / "model"), "--dataset", str(tmp_path / "lens"),
                       "--out", str(out)], capsys)
    assert code == 0, text
    assert "2 images  PSNR" in text and " px" in text and "EPE" in text
    with open(out / "per_image.csv", newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert float(rows["mean"]["epe"]) >= 0 and float(rows["mean"]["identity_epe"]) > 0
    assert sorted(p.name for p in (out / "flows").iterdir()) == ["00000.npy", "00001.npy"]
    assert "EPE (px)" in (out / "summary.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["means"]["epe"] == pytest.approx(float(rows["mean"]["epe"]), abs=1e-5)
    assert summary["settings"]["epe_region"] == "all"

"""The inference benchmark runs end to end in its --quick mode (tiny components; not timed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_inference_benchmark_quick_mode(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "inference.py"), "--quick", "--no-write", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    assert set(doc["matmul_rate"]) == {"fp32", "bf16"} and all(v > 0 for v in doc["matmul_rate"].values())
    keys = {(r["task"], r["dtype"], r["steps"], r["ensemble"], r["mode"], r["decode_scale"], r["variant"]) for r in rows}
    for task in ("sir", "rsc"):
        for dt in ("fp32", "bf16"):
            assert (task, dt, 1, 1, "image", 1, "default") in keys
            assert (task, dt, 50, 1, "image", 1, "default") in keys  # derived 50-step row
        assert (task, "bf16", 1, 8, "latent", 1, "default") in keys
        assert (task, "bf16", 1, 1, "image", 2, "default") in keys
    for r in rows:
        parts = r["encode_s"] + r["unet_s"] + r["decode_s"] + r["warp_s"] + r["other_s"]
        assert abs(parts - r["total_s"]) < 1e-6 + 1e-3 * r["total_s"]
        assert r["tflop"] > 0 and r["floor_s"] > 0 and r["x_floor"] > 0
        if r["steps"] == 50:
            assert r["derived"]  # never run end to end: measured 1-step row + 49 UNet steps
        if r["steps"] == 1:
            assert not r["derived"]
    # FLOPs add up: the latent AES mode decodes once, the image mode once per member
    one = next(r for r in rows if r["task"] == "sir" and r["dtype"] == "bf16" and r["steps"] == 1 and r["ensemble"] == 1
               and r["decode_scale"] == 1 and r["variant"] == "default")
    four = next(r for r in rows if r["task"] == "sir" and r["ensemble"] == 4 and r["mode"] == "image")
    assert four["tflop"] > 2 * one["tflop"]
    assert [q[2] for q in doc["decode_scale_quality"]][:3] == [1, 2, 4]
    assert "Targets (SIR" in proc.stdout


def test_mini_models_benchmark_scores_every_row(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "mini_models.py"), "--tasks", "sir", "--num", "2", "--no-write",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["method"]: r for r in json.loads(out.read_text())}
    assert rows["identity"]["gain_db"] == 0.0
    exact = rows["exact flow (the gt flow)"]
    assert exact["gain_db"] > 15 and exact["epe"] == 0.0  # exact synthetic flows re-warp at ~40 dB
    assert rows["identity"]["epe"] > 2.0  # the mean gt motion, pixels
    for steps in ("1 step", "4 steps", "AES-4"):
        assert f"stablemotion-mini-sir, {steps}" in rows
    assert rows["stablemotion-mini-sir, 1 step"]["gain_db"] > 3
    assert rows["stablemotion-mini-sir, 1 step"]["epe"] < rows["identity"]["epe"]


def _load_benchmark(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mini_models_targets_are_computed_from_the_rows() -> None:
    targets = _load_benchmark("mini_models").targets

    def row(task: str, method: str, psnr: float, ident: float) -> dict:
        return {"task": task, "method": method, "psnr": psnr, "gain_db": psnr - ident}

    rows = [row("sir", "identity", 13.0, 13.0), row("sir", "m, 1 step", 23.5, 13.0),
            row("sir", "regression ablation (same size, data, budget)", 24.0, 13.0),
            row("rsc", "identity", 22.0, 22.0), row("rsc", "exact flow (the gt flow)", 21.8, 22.0),
            row("rsc", "m, 1 step", 22.1, 22.0)]
    text = targets(rows)
    assert "- sir: gain +10.50 dB (target >= +10: met); vs the regression ablation -0.50 dB (target >= -1: met)" in text
    assert "- rsc: gain +0.10 dB (target >= +2: missed); the exact gt flow itself scores -0.20 dB" in text
    rows[1] = row("sir", "m, 1 step", 22.5, 13.0)
    assert "(target >= +10: missed); vs the regression ablation -1.50 dB (target >= -1: missed)" in targets(rows)

"""The inference benchmark runs end to end in its --quick mode (tiny components; not timed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

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


def _run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True, timeout=300,
        cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )


def test_rsc_realistic_benchmark_scores_identity_exact_flow_and_model(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    proc = _run("rsc_realistic.py", "--num", "4", "--no-write", "--json", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["method"]: r for r in json.loads(out.read_text())}
    ident, exact = rows["identity (zero motion)"], rows["exact flow (the gt flow)"]
    assert ident["epe_ratio"] == 1.0 and ident["spread"] == 0.0 and exact["epe"] == 0.0
    assert exact["psnr_seen"] > ident["psnr_seen"] + 5  # on the pixels the camera saw, the exact flow wins
    assert exact["spread"] > 0.3  # the camera motions differ between samples
    assert any(k.startswith("stablemotion-mini-rsc, 1 step") for k in rows)


def test_rsc_realistic_measures() -> None:
    import numpy as np

    bench = _load_benchmark("rsc_realistic")
    a = np.zeros((4, 5, 3), np.uint8)
    b = a.copy()
    b[0, 0] = 255
    valid = np.ones((4, 5), bool)
    assert bench.masked_psnr(a, a, valid) > 90
    valid[0, 0] = False
    assert bench.masked_psnr(a, b, valid) > 90  # the differing pixel is not scored
    f = np.zeros((3, 2, 2), np.float32)
    assert bench.spread([f, f]) == 0.0
    assert abs(bench.spread([f, f + np.array([3.0, 4.0], np.float32)]) - 2.5) < 1e-6  # std of {0, 5} is 2.5


def test_panoramas_benchmark_stitches_and_scores(tmp_path: Path) -> None:
    import numpy as np

    bench = _load_benchmark("panoramas")
    empty = np.zeros((20, 30), bool)
    empty[:, :5] = True
    zero = np.zeros((20, 30, 2), np.float32)
    assert bench.border_left(empty, zero) > 0.1  # the left strip samples the empty area
    shift = zero.copy()
    shift[..., 0] = 6.0  # sample 6 px to the right: the output no longer sees the empty strip
    assert bench.border_left(empty, shift) == 0.0
    ramp = np.stack(np.meshgrid(np.arange(30.0), np.arange(20.0)), -1)
    band, centre = bench.laplacian_roughness(ramp)
    assert band < 1e-9 and centre < 1e-9  # an affine flow has no curvature
    pano = bench.make_panorama(np.asarray(_photo(), np.uint8), np.random.default_rng(0))
    assert pano is not None
    image, empty = pano
    assert image.shape[:2] == empty.shape and 0.0 < empty.mean() < 0.6
    proc = _run("panoramas.py", "--per-photo", "1", "--max-photos", "1", "--no-write", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 panoramas" in proc.stdout


def _photo():
    from stablemotion.data.synth import bundled_photo_paths
    from stablemotion.io.images import load_image

    return load_image(bundled_photo_paths("bundled-test")[1])


def test_multi_task_benchmark_compares_single_and_multi_task_models(tmp_path: Path) -> None:
    from stablemotion.model.tiny import tiny_pipeline

    tiny = {"default_processing_resolution": [96, 128]}
    tiny_pipeline(["sir", "rsc", "rotation", "lens"], seed=0, **tiny).save_pretrained(tmp_path / "multi")
    tiny_pipeline("lens", seed=1, **tiny).save_pretrained(tmp_path / "single_lens")
    out = tmp_path / "rows.json"
    proc = _run("multi_task.py", "--multi", str(tmp_path / "multi"), "--single", str(tmp_path / "single_{task}"),
                "--tasks", "lens", "rsc", "--num", "2", "--opencv-lens", "1", "--opencv-size", "48x64", "--no-write",
                "--json", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    lens = [r["method"].split(" (")[0] for r in rows if r["task"] == "lens"]
    assert lens == ["identity", "single-task", "multi-task"]
    rsc = [r["method"].split(" (")[0] for r in rows if r["task"] == "rsc"]
    assert rsc == ["identity", "bundled stablemotion-mini-rsc", "multi-task"]  # no single-task folder for rsc
    assert all(np.isfinite(r["psnr"]) and r["epe"] >= 0 for r in rows)
    cv = [r["method"].split(" (")[0] for r in rows if r["task"] == "lens (OpenCV)"]
    assert cv == ["identity", "single-task", "multi-task"]
    assert "- lens: multi-task" in proc.stdout and "rsc: multi-task" not in proc.stdout


def test_wide_panoramas_benchmark_measures_and_quick_run(tmp_path: Path) -> None:
    bench = _load_benchmark("wide_panoramas")
    valid = np.ones((30, 40), bool)
    valid[:4] = False  # an empty band along the top
    assert bench.largest_rectangle(valid) == (4, 0, 30, 40)
    zero = np.zeros((30, 40, 2), np.float32)
    assert bench.content_kept(valid, zero) == 1.0 and abs(bench.empty_share(valid, zero) - 4 / 30) < 1e-9
    down = zero.copy()
    down[..., 1] = 5.0  # every output pixel samples 5 px lower: no empty pixel, content row 4 (of 4-29) unseen
    assert bench.empty_share(valid, down) == 0.0 and abs(bench.content_kept(valid, down) - 25 / 26) < 1e-9
    out = tmp_path / "rows.json"
    proc = _run("wide_panoramas.py", "--quick", "--no-write", "--json", str(out), "--pictures", str(tmp_path / "pics"),
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    rows = {(r["aspect"], r["method"], r["mask"]): r for r in doc["rows"]}
    for method in ("windows", "squeeze", "crop", "inpaint"):
        assert ("4:1", method, "derived") in rows and ("4:3", method, "derived") in rows
    assert ("4:1", "windows", "true") in rows
    inpaint, crop = rows[("4:1", "inpaint", "derived")], rows[("4:1", "crop", "derived")]
    assert inpaint["invented"] > 0.05 and crop["kept"] < 1.0 and not np.isfinite(crop["psnr"])
    assert rows[("4:1", "windows", "derived")]["mb_mp"] > 0 and rows[("4:1", "crop", "derived")]["mb_mp"] >= 0
    gt = rows[("4:1", "gt flow", "derived")]  # the reference: the exact flow reaches nearly all content
    assert gt["kept"] > 0.97 and gt["psnr"] > rows[("4:1", "squeeze", "derived")]["psnr"]
    assert len(doc["targets"]) == 1 and doc["targets"][0].startswith("- 4:1: content kept")
    assert len(list((tmp_path / "pics").glob("*.jpg"))) == 2


def test_full_resolution_benchmark_measures_a_small_panorama() -> None:
    """The per-file path on a made panorama in a fresh process: peak memory and the 16-bit output."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import full_resolution

    rec = full_resolution.measure(96, 384, 16, None, 1)
    assert rec["dtype"] == "uint16" and not rec["unchanged"]
    assert rec["peak"] >= rec["base"] > 0 and rec["seconds"] > 0
    assert rec["work"] == [96, 384]

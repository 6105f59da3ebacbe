"""Pseudo-flow labelling: mesh fit, composition, recovery of known synthetic flows, folder runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stablemotion.core.flow import read_flow
from stablemotion.data.labelling import (
    LabelConfig,
    compose_flows,
    dis_flow,
    estimate_flow,
    fit_mesh_flow,
    label_flows,
    warp_numpy,
)
from stablemotion.data.synth import (
    bundled_photo_paths,
    make_rectangling_sample,
    make_rolling_shutter_sample,
    random_photo_crop,
    rolling_shutter_margin,
    sample_rng,
    write_rectangling_dataset,
)
from stablemotion.io.images import load_image

SIZE = (96, 128)


def _bilinear_mesh_flow(verts: np.ndarray, h: int, w: int) -> np.ndarray:
    t = torch.from_numpy(verts).permute(2, 0, 1)[None].double()
    return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=True)[0].permute(1, 2, 0).numpy()


def test_fit_mesh_flow_recovers_a_mesh_flow_exactly():
    rng = np.random.default_rng(0)
    verts = rng.normal(0, 3, size=(4, 5, 2))
    flow = _bilinear_mesh_flow(verts, 48, 64).astype(np.float32)
    fitted, dense = fit_mesh_flow(flow, rows=3, cols=4, smoothness=0.0, irls=1)
    assert np.abs(fitted - verts).max() < 1e-3
    assert np.abs(dense - flow).max() < 1e-3


def test_fit_mesh_flow_is_robust_and_uses_weights():
    rng = np.random.default_rng(1)
    verts = rng.normal(0, 3, size=(4, 5, 2))
    truth = _bilinear_mesh_flow(verts, 48, 64).astype(np.float32)
    noisy = truth.copy()
    bad = rng.random((48, 64)) < 0.15
    noisy[bad] += rng.normal(0, 30, size=(int(bad.sum()), 2)).astype(np.float32)
    _, plain = fit_mesh_flow(noisy, rows=3, cols=4, smoothness=0.0, irls=1)
    _, robust = fit_mesh_flow(noisy, rows=3, cols=4, smoothness=0.0, irls=5)
    _, weighted = fit_mesh_flow(noisy, weight=(~bad).astype(float), rows=3, cols=4, smoothness=0.0, irls=1)
    epe = lambda f: float(np.linalg.norm(f - truth, axis=-1).mean())  # noqa: E731
    assert epe(robust) < 0.5 * epe(plain)
    assert epe(weighted) < 1e-3
    # Smoothness pulls a noisy fit towards a plane.
    _, smooth = fit_mesh_flow(truth, rows=3, cols=4, smoothness=100.0, irls=1)
    assert epe(smooth) > 0.1


def test_compose_flows_adds_translations():
    a = np.zeros((16, 20, 2), np.float32)
    a[..., 0] = 1.5
    b = np.zeros((16, 20, 2), np.float32)
    b[..., 1] = -2.0
    c = compose_flows(a, b)
    assert np.allclose(c[4:-4, 4:-4], [1.5, -2.0], atol=1e-5)


def test_dis_flow_finds_a_translation():
    photo = random_photo_crop(load_image(bundled_photo_paths()[0]), (100, 140), np.random.default_rng(0))
    src, dst = photo[:96, 4:132], photo[2:98, :128]  # src(p) = dst(p + (4, -2))
    flow = dis_flow(src, dst)
    assert flow.shape == (96, 128, 2)
    med = np.median(flow[10:-10, 10:-10].reshape(-1, 2), axis=0)
    assert np.allclose(med, [4.0, -2.0], atol=0.25)
    with pytest.raises(ValueError, match="differ in size"):
        dis_flow(src, dst[:50])


def _rect(seed: int):
    rng = sample_rng(seed, 0, "rectangling")
    photo = random_photo_crop(load_image(bundled_photo_paths()[seed]), SIZE, rng, prefilter_sigma=0.7)
    return make_rectangling_sample(photo, rng)


def _epe(flow: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> float:
    err = np.linalg.norm(flow - truth, axis=-1)
    return float(err[valid].mean() if valid is not None else err.mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_estimate_flow_recovers_rectangling_flow(seed):
    s = _rect(seed)
    res = estimate_flow(s.input, s.gt, s.mask)
    truth_mag = float(np.linalg.norm(s.flow, axis=-1).mean())
    epe = _epe(res.flow, s.flow)
    print(f"rectangling seed {seed}: |flow| {truth_mag:.2f} px, EPE {epe:.3f} px, "
          f"PSNR {res.psnr:.2f} dB vs identity {res.identity_psnr:.2f} dB ({res.method})")
    assert res.flow.shape == (*SIZE, 2) and res.flow.dtype == np.float32
    assert epe < 0.3 * truth_mag and epe < 1.0
    assert res.psnr > res.identity_psnr + 12.0
    assert res.psnr > 28.0
    # The reported score is the score of the returned flow.
    from stablemotion.core.metrics import psnr

    assert psnr(warp_numpy(s.input, res.flow), s.gt) == pytest.approx(res.psnr)


def test_estimate_flow_recovers_rolling_shutter_flow():
    rng = sample_rng(4, 0, "rolling_shutter")
    my, mx = rolling_shutter_margin(SIZE)
    scene = random_photo_crop(load_image(bundled_photo_paths()[2]), (SIZE[0] + 2 * my, SIZE[1] + 2 * mx), rng,
                              prefilter_sigma=0.7)
    s = make_rolling_shutter_sample(scene, rng, size=SIZE)
    res = estimate_flow(s.rs, s.gs, None, LabelConfig(padding="border"))
    epe = _epe(res.flow, s.flow, s.valid)
    mag = float(np.linalg.norm(s.flow, axis=-1)[s.valid].mean())
    print(f"rolling shutter: |flow| {mag:.2f} px, EPE {epe:.3f} px, PSNR {res.psnr:.2f} vs {res.identity_psnr:.2f} dB")
    assert epe < 0.3 * mag and epe < 1.0
    assert res.psnr > res.identity_psnr + 8.0


def test_mesh_only_config_and_validation():
    s = _rect(2)
    res = estimate_flow(s.input, s.gt, s.mask, LabelConfig(select_margin=math.inf))
    assert res.method == "mesh"
    assert res.psnr > res.identity_psnr + 10.0
    with pytest.raises(ValueError, match="preset"):
        LabelConfig(preset="slow")
    with pytest.raises(ValueError, match="same|differ"):
        estimate_flow(s.input, s.gt[:50], None)


def test_label_flows_folder_is_resumable(tmp_path):
    data = tmp_path / "dird"
    write_rectangling_dataset(data, 3, size=SIZE, ext="png", seed=3)
    out = tmp_path / "flows"
    rows_seen: list[int] = []

    def progress(it, total):
        rows_seen.append(total)
        return it

    rep = label_flows(data, out, workers=2, progress=progress)
    assert rows_seen == [3]
    assert sorted(p.name for p in out.glob("*.npy")) == ["00000.npy", "00001.npy", "00002.npy"]
    assert len(rep) == 3 and all(not r["skipped"] for r in rep.rows)
    assert rep.mean_psnr > rep.mean_identity_psnr + 10.0
    summary = json.loads((out / "labelling_report.json").read_text())
    assert summary["images"] == 3 and summary["mean_psnr"] == pytest.approx(rep.mean_psnr)
    lines = (out / "labelling_report.csv").read_text().splitlines()
    assert lines[0].startswith("name,psnr,ssim") and len(lines) == 4
    # Labels recover the exact synthetic flows written next to the images.
    for name in ("00000", "00001", "00002"):
        truth = read_flow(data / "training" / "flow" / f"{name}.npy")
        assert _epe(read_flow(out / f"{name}.npy"), truth) < 1.5

    # Resume: finished flows are skipped (and only scored); a deleted one is redone.
    before = (out / "00000.npy").stat().st_mtime_ns
    (out / "00001.npy").unlink()
    rep2 = label_flows(data / "training", out, workers=1)
    skipped = {r["name"]: r["skipped"] for r in rep2.rows}
    assert skipped == {"00000": True, "00001": False, "00002": True}
    assert (out / "00000.npy").stat().st_mtime_ns == before
    assert rep2.mean_psnr == pytest.approx(rep.mean_psnr, abs=0.5)
    rep3 = label_flows(data, out, workers=1, overwrite=True, limit=1)
    assert len(rep3) == 1 and not rep3.rows[0]["skipped"]
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporaries


def test_label_flows_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no input/ and gt/"):
        label_flows(tmp_path, tmp_path / "out")
    data = tmp_path / "d"
    write_rectangling_dataset(data, 2, size=(48, 64), ext="png")
    (data / "training" / "gt" / "00001.png").unlink()
    with pytest.raises(ValueError, match="00001: missing gt"):
        label_flows(data, tmp_path / "out")

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from stablemotion.core import metrics


def _pair(rng, h=37, w=53):
    a = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    noise = rng.integers(-30, 31, size=a.shape)
    b = np.clip(a.astype(int) + noise, 0, 255).astype(np.uint8)
    return a, b


def test_psnr_ssim_equal_scikit_image(rng):
    for _ in range(3):
        gt, pred = _pair(rng)
        assert metrics.psnr(pred, gt) == peak_signal_noise_ratio(gt, pred, data_range=255)
        assert metrics.ssim(pred, gt) == structural_similarity(gt, pred, data_range=255, channel_axis=2)
    assert metrics.psnr(gt, gt) == math.inf


def test_torch_versions_match_scikit_image(rng):
    pairs = [_pair(rng, 40, 44) for _ in range(3)]
    gt = torch.stack([torch.from_numpy(g).permute(2, 0, 1) for g, _ in pairs]).double()
    pred = torch.stack([torch.from_numpy(p).permute(2, 0, 1) for _, p in pairs]).double()
    p_t = metrics.psnr_torch(pred, gt, data_range=255)
    s_t = metrics.ssim_torch(pred, gt, data_range=255)
    assert p_t.shape == (3,) and s_t.shape == (3,)
    for i, (g, p) in enumerate(pairs):
        assert p_t[i].item() == pytest.approx(metrics.psnr(p, g), abs=1e-9)
        assert s_t[i].item() == pytest.approx(metrics.ssim(p, g), abs=1e-9)
    # SSIM is scale-invariant given the matching data range (not shift-invariant).
    s_01 = metrics.ssim_torch(pred / 255, gt / 255, data_range=1.0)
    assert torch.allclose(s_01, s_t, atol=1e-9)
    assert torch.allclose(metrics.psnr_torch(pred / 127.5 - 1, gt / 127.5 - 1, data_range=2.0), p_t, atol=1e-9)


def test_metric_input_validation(rng):
    gt, pred = _pair(rng)
    with pytest.raises(ValueError, match="uint8"):
        metrics.psnr(pred.astype(np.float32), gt)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        metrics.ssim(pred[..., 0], gt[..., 0])
    with pytest.raises(ValueError, match="differs"):
        metrics.psnr(pred[:-1], gt)
    with pytest.raises(ValueError, match="same shape"):
        metrics.psnr_torch(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match="at least 7x7"):
        metrics.ssim_torch(torch.zeros(1, 3, 5, 8), torch.zeros(1, 3, 5, 8))


def _write_folder(folder, images, ext=".png"):
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in images.items():
        Image.fromarray(arr).save(folder / f"{name}{ext}")


def test_evaluate_folder_matches_direct_scores(tmp_path, rng):
    gts, preds = {}, {}
    for i in range(3):
        gts[f"{i:05d}"], preds[f"{i:05d}"] = _pair(rng, 30, 40)
    _write_folder(tmp_path / "gt", gts, ".png")
    _write_folder(tmp_path / "res", preds, ".png")
    result = metrics.evaluate_folder(tmp_path / "res", tmp_path / "gt")
    assert [r["name"] for r in result.rows] == ["00000", "00001", "00002"]
    for r in result.rows:
        assert r["psnr"] == peak_signal_noise_ratio(gts[r["name"]], preds[r["name"]], data_range=255)
    assert result.mean_psnr == pytest.approx(np.mean([r["psnr"] for r in result.rows]))
    out = result.write_csv(tmp_path / "scores.csv")
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["name", "psnr", "ssim"] and rows[-1][0] == "mean" and len(rows) == 5


def test_evaluate_folder_reports_missing_extra_and_size(tmp_path, rng):
    a, b = _pair(rng, 20, 20)
    _write_folder(tmp_path / "gt", {"x": a, "y": a})
    _write_folder(tmp_path / "res", {"x": b, "z": b})
    with pytest.raises(ValueError, match=r"no result .* y.*no ground truth .* z"):
        metrics.evaluate_folder(tmp_path / "res", tmp_path / "gt")
    result = metrics.evaluate_folder(tmp_path / "res", tmp_path / "gt", strict=False)
    assert [r["name"] for r in result.rows] == ["x"]
    _write_folder(tmp_path / "res2", {"x": b[:10], "y": b})
    with pytest.raises(ValueError, match="size mismatch for 'x'"):
        metrics.evaluate_folder(tmp_path / "res2", tmp_path / "gt")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        metrics.evaluate_folder(tmp_path / "nowhere", tmp_path / "gt")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"not a png")
    (tmp_path / "broken" / "y.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot decode image .*x.png"):
        metrics.evaluate_folder(tmp_path / "broken", tmp_path / "gt")


def test_match_folders_ignores_rectify_side_files_only_next_to_their_result(tmp_path, rng):
    a, b = _pair(rng, 20, 20)
    grey = np.zeros((20, 20, 3), np.uint8)
    # rectify's layout: NAME.png plus NAME_flow.png, NAME_mask.png, NAME_uncertainty.png (and .npy/.flo)
    _write_folder(tmp_path / "res", {"x": b, "x_flow": grey, "x_mask": grey, "x_uncertainty": grey,
                                     "y": b, "y_flow": grey, "z_mask": grey, "w_flow": b})
    np.save(tmp_path / "res" / "x_flow.npy", np.zeros((20, 20, 2), np.float32))
    _write_folder(tmp_path / "gt", {"x": a, "y": a, "w_flow": a})
    # z_mask has no z result: it is a result of its own (and has no ground truth).
    with pytest.raises(ValueError, match=r"no ground truth in .* for result z_mask"):
        metrics.match_folders(tmp_path / "res", tmp_path / "gt")
    (tmp_path / "res" / "z_mask.png").unlink()
    results, gts, common = metrics.match_folders(tmp_path / "res", tmp_path / "gt")
    assert common == ["w_flow", "x", "y"]  # w_flow is a ground-truth name: kept
    assert set(results) == {"w_flow", "x", "y"}
    assert [r["name"] for r in metrics.evaluate_folder(tmp_path / "res", tmp_path / "gt").rows] == ["w_flow", "x", "y"]


def test_epe_is_the_torch_end_point_error_over_all_or_valid_pixels(rng):
    import torch

    from stablemotion.core.flow import end_point_error, valid_mask

    pred = rng.normal(0, 3, (12, 10, 2)).astype(np.float32)
    gt = rng.normal(0, 3, (12, 10, 2)).astype(np.float32)
    gt[:, :2, 0] = -50.0  # looks outside the frame
    t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None]  # noqa: E731
    assert metrics.epe(pred, gt) == pytest.approx(float(end_point_error(t(pred), t(gt))[0]))
    keep = valid_mask(t(gt)[0])
    assert metrics.epe(pred, gt, "valid") == pytest.approx(float(end_point_error(t(pred), t(gt), keep[None])[0]))
    err = np.linalg.norm(pred - gt, axis=-1)
    assert not keep[0, :, :2].any() and metrics.epe(pred, gt, "valid") == pytest.approx(float(err[keep[0].numpy()].mean()), rel=1e-5)
    with pytest.raises(ValueError, match="region"):
        metrics.epe(pred, gt, "inside")
    with pytest.raises(ValueError, match=r"\(H, W, 2\)"):
        metrics.epe(pred[:, :5], gt)
    scores = metrics.score_pair(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8), metrics=("ssim",))
    assert scores == {"ssim": 1.0}

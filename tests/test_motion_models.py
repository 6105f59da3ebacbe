"""The motion families of core.motion_models: known parameters are recovered, outliers do not
dominate, a zero flow has zero parameters, and the families fit the generators' flows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stablemotion.core.motion_models import (
    MOTION_MODELS,
    fill_scale,
    fit_motion_model,
    motion_model_flow,
    straighten_flow,
)
from stablemotion.tasks import MOTION_MODEL_NAMES, get_task

SIZE = (48, 64)


def _radial_flow(size: tuple[int, int], k: tuple[float, float, float]) -> np.ndarray:
    """``M(p) = c + (p - c) (k0 + k1 r^2 + k2 r^4)``, r over the half diagonal: flow = M(p) - p."""
    h, w = size
    gx, gy = np.meshgrid(np.arange(w) - (w - 1) / 2, np.arange(h) - (h - 1) / 2)
    r2 = (gx**2 + gy**2) / (((w - 1) / 2) ** 2 + ((h - 1) / 2) ** 2)
    g = k[0] + k[1] * r2 + k[2] * r2**2
    return np.stack((gx * (g - 1), gy * (g - 1)), -1).astype(np.float32)


def _with_outliers(flow: np.ndarray, share: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = flow.copy()
    hit = rng.random(flow.shape[:2]) < share
    out[hit] = rng.uniform(-30, 30, (int(hit.sum()), 2))
    return out


def test_the_task_specs_name_the_families() -> None:
    assert set(MOTION_MODEL_NAMES) == set(MOTION_MODELS)
    assert [get_task(t).motion_model for t in ("sir", "rsc", "rotation", "lens")] == [
        None, "rolling_shutter", "rotation", "lens"]


def test_rolling_shutter_parameters_are_recovered() -> None:
    rng = np.random.default_rng(1)
    params = rng.normal(0, 2, 12)
    flow = motion_model_flow("rolling_shutter", params, SIZE)
    fit = fit_motion_model(flow, "rolling_shutter")
    assert np.allclose(fit.params, params, atol=1e-4)
    assert fit.residual < 1e-4 and fit.magnitude > 1
    # t is the row, x the column: a0 of u shifts everything, a1 of v grows down the rows
    p = np.zeros(12)
    p[7] = 1.0
    f = motion_model_flow("rolling_shutter", p, SIZE)
    assert np.allclose(f[0, :, 1], -1) and np.allclose(f[-1, :, 1], 1) and not f[..., 0].any()


@pytest.mark.parametrize("angle", [-7.0, 0.3, 4.0, 15.0])
def test_a_straighten_flow_gives_back_its_angle(angle: float) -> None:
    flow = straighten_flow(SIZE, angle)
    fit = fit_motion_model(flow, "rotation")
    assert fit.derived["angle_deg"] == pytest.approx(angle, abs=1e-4)
    assert fit.derived["scale"] == pytest.approx(fill_scale(SIZE, angle))
    assert fit.residual < 1e-3 and np.abs(fit.flow - flow).max() < 1e-3


def test_straighten_keeps_the_frame_filled_and_follows_the_generator_sign() -> None:
    h, w = SIZE
    for angle in (3.0, -10.0, 25.0):
        src = straighten_flow(SIZE, angle) + np.stack(np.meshgrid(np.arange(w), np.arange(h)), -1)
        assert src[..., 0].min() >= -1e-3 and src[..., 0].max() <= w - 1 + 1e-3
        assert src[..., 1].min() >= -1e-3 and src[..., 1].max() <= h - 1 + 1e-3
        slack = min(src[..., 0].min(), src[..., 1].min(), w - 1 - src[..., 0].max(), h - 1 - src[..., 1].max())
        assert slack < 1e-2  # the largest zoom that fits: the output touches the input's edge
    # the centre rotates like the generator's map there (rotation.py: M = c + R(-angle) (p - c) at w = 1)
    from stablemotion.data.synthesis.rotation import rotation_correction_map
    near = (h // 2, w // 2 + 3)
    gen = rotation_correction_map(SIZE, 6.0)[near] - np.array([near[1], near[0]])
    ours = straighten_flow(SIZE, 6.0)[near]
    assert np.sign(gen[1]) == np.sign(ours[1]) != 0
    assert fill_scale(SIZE, 0.0) == 1.0 and fill_scale(SIZE, 10.0) < 1.0


def test_a_radial_flow_gives_back_its_coefficients() -> None:
    k = (0.9, 0.08, -0.02)
    fit = fit_motion_model(_radial_flow(SIZE, k), "lens")
    assert (fit.derived["k0"], fit.derived["k1"], fit.derived["k2"]) == pytest.approx(k, abs=1e-5)
    assert np.abs(fit.params[3:]).max() < 1e-5 and fit.residual < 1e-4


@pytest.mark.parametrize("kind", sorted(MOTION_MODELS))
def test_twenty_percent_outliers_do_not_dominate(kind: str) -> None:
    if kind == "rotation":
        clean = straighten_flow(SIZE, 5.0)
    elif kind == "lens":
        clean = _radial_flow(SIZE, (0.92, 0.05, 0.0))
    else:
        clean = motion_model_flow(kind, np.random.default_rng(2).normal(0, 2, 12), SIZE)
    noisy = _with_outliers(clean, 0.2)
    robust = fit_motion_model(noisy, kind)
    plain = fit_motion_model(noisy, kind, iters=1)
    err_robust = np.linalg.norm(robust.flow - clean, axis=-1).mean()
    err_plain = np.linalg.norm(plain.flow - clean, axis=-1).mean()
    assert err_robust < 0.05 and err_robust < 0.2 * err_plain
    if kind == "rotation":
        assert robust.derived["angle_deg"] == pytest.approx(5.0, abs=0.02)


@pytest.mark.parametrize("kind", sorted(MOTION_MODELS))
def test_a_zero_flow_has_zero_parameters(kind: str) -> None:
    fit = fit_motion_model(torch.zeros(2, 2, *SIZE), kind)
    assert fit.params.shape == (2, MOTION_MODELS[kind] if kind != "rotation" else 1)
    assert float(fit.params.abs().max()) == 0.0 and float(fit.flow.abs().max()) == 0.0
    assert fit.residual.tolist() == [0.0, 0.0] and fit.magnitude.tolist() == [0.0, 0.0]


def test_batched_torch_matches_numpy_and_weights_ignore_a_region() -> None:
    a, b = straighten_flow(SIZE, 3.0), straighten_flow(SIZE, -8.0)
    batch = torch.from_numpy(np.stack([a, b])).permute(0, 3, 1, 2)
    fit = fit_motion_model(batch, "rotation")
    assert fit.flow.shape == batch.shape and fit.flow.dtype == torch.float32
    assert fit.derived["angle_deg"].tolist() == pytest.approx([3.0, -8.0], abs=1e-4)
    assert fit_motion_model(b, "rotation").derived["angle_deg"] == pytest.approx(-8.0, abs=1e-4)
    spoiled = a.copy()
    spoiled[:, :20] = 25.0  # garbage on the left, weighted out
    weights = np.ones(SIZE, np.float32)
    weights[:, :20] = 0
    assert fit_motion_model(spoiled, "rotation", weights=weights).derived["angle_deg"] == pytest.approx(3.0, abs=1e-3)


def test_bad_arguments_are_one_clear_line() -> None:
    with pytest.raises(ValueError, match="unknown motion model 'affine'"):
        fit_motion_model(np.zeros((4, 4, 2), np.float32), "affine")
    with pytest.raises(ValueError, match="weights must be"):
        fit_motion_model(np.zeros((4, 4, 2), np.float32), "lens", weights=np.ones((3, 3)))
    with pytest.raises(ValueError, match="a lens motion has 9 parameters"):
        motion_model_flow("lens", [0.0, 1.0], (4, 4))


def test_the_families_fit_the_generators_flows() -> None:
    """What docs/method.md quotes: the rolling-shutter family explains camera-motion RSC flows to a
    few percent of their size; the lens family (radial + a moved centre) the lens generator's."""
    from stablemotion.data.synthesis import make_sample

    rel = {"rsc": [], "lens": []}
    for i in range(4):
        s = make_sample("rsc", 0, i, (96, 128), photos=["procedural"], motion_model="camera")
        fit = fit_motion_model(s.flow, "rolling_shutter")
        rel["rsc"].append(fit.residual / fit.magnitude)
        s = make_sample("lens", 0, i, (96, 128), photos=["procedural"])
        fit = fit_motion_model(s.flow, "lens")
        rel["lens"].append(fit.residual / fit.magnitude)
    assert np.mean(rel["rsc"]) < 0.15 and np.mean(rel["lens"]) < 0.05, rel


def test_a_fit_is_fast() -> None:
    import time

    flow = torch.randn(1, 2, 384, 512)
    fit_motion_model(flow, "rolling_shutter")
    t0 = time.perf_counter()
    fit_motion_model(flow, "rolling_shutter")
    assert time.perf_counter() - t0 < 0.5  # a few ms to tens of ms on one core; generous for a shared machine
    assert math.isfinite(float(fit_motion_model(flow, "lens").residual[0]))

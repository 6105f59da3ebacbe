"""The correction gate ("do no harm"): a prediction without support leaves the image unchanged with
a one-line reason, ``always_correct`` overrides, and the CLI, the service and the app honour it.

The tiny random-weight pipeline's own flows are noise, so the tests replace its member flows
(``StableMotionPipeline.estimate_flows``) with flows of a known kind.
"""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from stablemotion.cli import main
from stablemotion.core.motion_models import fit_motion_model, motion_model_flow, straighten_flow
from stablemotion.io.images import load_image, save_image
from stablemotion.model.correction_gate import MIN_FLOW_PX, assess_members, check_gate, gate_reason
from stablemotion.model.pipeline import StableMotionPipeline
from stablemotion.model.service import rectify_image
from stablemotion.model.tiny import tiny_pipeline
from stablemotion.tasks import get_task

H, W = 48, 64


@pytest.fixture
def fixed_flow(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """Every member flow the pipeline estimates becomes ``state.flow`` ((h, w, 2) numpy at the
    processing size, resized) plus ``state.noise`` px of member-to-member noise."""
    state = SimpleNamespace(flow=np.zeros((H, W, 2), np.float32), noise=0.0)

    def fake(self, images, conds, size, settings, *args, **kwargs):
        n, e = images.shape[0], settings["ensemble_size"]
        f = torch.from_numpy(state.flow).permute(2, 0, 1)[None].float()
        f = torch.nn.functional.interpolate(f, size=tuple(size), mode="bilinear", align_corners=True)
        f = f * torch.tensor([size[1] / state.flow.shape[1], size[0] / state.flow.shape[0]]).view(1, 2, 1, 1)
        members = f.expand(n * e, -1, -1, -1).clone()
        members += state.noise * torch.randn(members.shape, generator=torch.Generator().manual_seed(0))
        return members.unflatten(0, (n, e))

    monkeypatch.setattr(StableMotionPipeline, "estimate_flows", fake)
    return state


def _image() -> np.ndarray:
    return np.random.default_rng(0).random((H, W, 3), dtype=np.float32)


def test_a_zero_flow_is_left_unchanged_with_a_reason_and_always_correct_overrides(fixed_flow) -> None:
    pipe = tiny_pipeline("rsc")
    image = _image()
    out = pipe(image, correction_gate=0.5, show_progress_bar=False, output_type="np")
    assert out.confidence == [0.0] and out.settings["correction_gate"] == 0.5
    assert out.gate_reason == [f"left unchanged: the predicted flow (0.00 px mean) is below {MIN_FLOW_PX:g} px: "
                               "nothing to correct"]
    assert not out.flow.any() and np.array_equal(out.image[0], image)
    forced = pipe(image, correction_gate=0.5, always_correct=True, show_progress_bar=False)
    assert forced.gate_reason == [""] and forced.confidence == [0.0] and forced.settings["correction_gate"] == 0.0
    off = pipe(image, show_progress_bar=False)  # the config's default: off
    assert off.gate_reason == [""] and off.settings["correction_gate"] == 0.0


def test_a_tiny_flow_is_nothing_to_correct_and_a_real_one_is_corrected(fixed_flow) -> None:
    pipe = tiny_pipeline("rsc")
    fixed_flow.flow = np.zeros((H, W, 2), np.float32)
    fixed_flow.flow[..., 0] = 0.025  # 0.2 px at 384x512 (the magnitude is measured at that size)
    out = pipe(_image(), correction_gate=0.5, processing_resolution=0, show_progress_bar=False)
    assert out.gate_reason[0].startswith("left unchanged: the predicted flow (0.20 px mean) is below 0.5 px")
    p = np.zeros(12)
    p[0], p[7] = 1.5, 0.8  # a shift and a vertical stretch over the readout: rolling shutter
    fixed_flow.flow = motion_model_flow("rolling_shutter", p, (H, W))
    out = pipe(_image(), correction_gate=0.5, show_progress_bar=False)
    assert out.gate_reason == [""] and out.confidence[0] > 0.9 and out.flow.abs().mean() > 0.5


def test_a_flow_that_is_no_camera_motion_is_left_unchanged(fixed_flow) -> None:
    rng = np.random.default_rng(3)
    fixed_flow.flow = rng.normal(0, 3, (H, W, 2)).astype(np.float32)
    out = tiny_pipeline("rsc")(_image(), correction_gate=0.5, show_progress_bar=False)
    reason = out.gate_reason[0]
    assert reason.startswith("left unchanged: the predicted flow disagrees with a rolling-shutter camera motion "
                             "(residual "), reason
    assert out.confidence[0] < 0.5 and not out.flow.any()


def test_rotation_below_half_a_degree_and_disagreeing_members(fixed_flow) -> None:
    pipe = tiny_pipeline("rotation")
    fixed_flow.flow = straighten_flow((H, W), 0.2)
    out = pipe(_image(), correction_gate=0.5, show_progress_bar=False)
    assert out.gate_reason == ["left unchanged: the predicted rotation (0.2 deg) is below 0.5 deg"]
    fixed_flow.flow = straighten_flow((H, W), 6.0)
    assert pipe(_image(), correction_gate=0.5, show_progress_bar=False).gate_reason == [""]
    fixed_flow.noise = 20.0  # members far apart
    out = pipe(_image(), correction_gate=0.5, ensemble_size=3, ensemble_mode="flow", show_progress_bar=False)
    assert out.gate_reason[0].startswith("left unchanged: the ensemble members disagree (spread ")


def test_flow_projection_replaces_the_flow_by_the_family_fit(fixed_flow) -> None:
    p = np.random.default_rng(4).normal(0, 1.5, 12)
    clean = motion_model_flow("rolling_shutter", p, (H, W))
    fixed_flow.flow = clean + np.random.default_rng(5).normal(0, 0.5, clean.shape).astype(np.float32)
    pipe = tiny_pipeline("rsc")
    raw = pipe(_image(), processing_resolution=0, show_progress_bar=False, output_type="np").flow[0]
    proj = pipe(_image(), processing_resolution=0, flow_projection="motion_model", show_progress_bar=False,
                output_type="np")
    assert proj.settings["flow_projection"] == "motion_model"
    assert np.abs(proj.flow[0] - clean).mean() < 0.3 * np.abs(raw - clean).mean()
    assert np.allclose(proj.flow[0], fit_motion_model(proj.flow[0], "rolling_shutter").flow, atol=1e-3)
    sir = tiny_pipeline("sir")  # no family: the projection keeps the flow
    kw = {"mask": np.ones((H, W), np.float32), "processing_resolution": 0, "show_progress_bar": False}
    assert torch.equal(sir(_image(), **kw).flow, sir(_image(), flow_projection="motion_model", **kw).flow)
    with pytest.raises(ValueError, match="flow_projection must be one of"):
        pipe(_image(), flow_projection="affine", show_progress_bar=False)
    with pytest.raises(ValueError, match=r"correction_gate must be in \[0, 1\]"):
        pipe(_image(), correction_gate=2.0, show_progress_bar=False)


def test_the_rule_and_the_mesh_agreement_of_sir() -> None:
    assert check_gate(None) == 0.0
    flows = torch.zeros(2, 1, 2, 32, 32)
    flows[0, 0, 0] = torch.linspace(0, 6, 32).view(1, 32)  # smooth: a mesh warp
    flows[1] = torch.randn(1, 2, 32, 32, generator=torch.Generator().manual_seed(0)) * 4
    smooth, noise = assess_members(flows, get_task("sir"), (4, 4))
    assert smooth.family == "mesh" and smooth.confidence > 0.9 and gate_reason(smooth, 0.5) == ""
    assert noise.weakest == "model" and "a smooth mesh warp" in gate_reason(noise, 0.5)


def test_the_service_reports_the_gate_and_always_correct_overrides(fixed_flow) -> None:
    pipe = tiny_pipeline("rsc")
    image = (np.random.default_rng(1).random((H, W, 3)) * 255).astype(np.uint8)
    res = rectify_image(pipe, image, task="rsc", correction_gate=0.5)
    assert res.unchanged and res.reason.startswith("left unchanged: the predicted flow") and res.confidence == 0.0
    assert np.array_equal(res.image, image) and not res.flow.any() and res.task == "rsc"
    forced = rectify_image(pipe, image, task="rsc", correction_gate=0.5, always_correct=True)
    assert not forced.unchanged and forced.reason == "" and forced.confidence == 0.0
    assert not rectify_image(pipe, image, task="rsc").unchanged  # None: the model's default (off)


def test_the_cli_gates_by_default_and_always_correct_overrides(fixed_flow, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    model = tmp_path / "rsc"
    assert main(["tiny-model", "--task", "rsc", "--out", str(model)]) == 0
    image = (np.random.default_rng(2).random((H, W, 3)) * 255).astype(np.uint8)
    save_image(image, tmp_path / "in" / "a.png")
    capsys.readouterr()
    assert main(["rectify", str(tmp_path / "in"), "--model", str(model), "--out", str(tmp_path / "o"),
                 "--save-flow"]) == 0
    text = "".join(capsys.readouterr())
    assert "rectified 1 image" in text and "1 of them left unchanged" in text, text
    assert "unchanged a: left unchanged: the predicted flow (0.00 px mean) is below 0.5 px" in text
    assert np.array_equal(load_image(tmp_path / "o" / "a.png"), image)
    assert main(["rectify", str(tmp_path / "in"), "--model", str(model), "--out", str(tmp_path / "f"),
                 "--always-correct", "--flow-projection", "motion_model"]) == 0
    text = "".join(capsys.readouterr())
    assert "left unchanged" not in text and "rectified 1 image" in text, text
    assert main(["rectify", str(tmp_path / "in"), "--model", str(model), "--out", str(tmp_path / "g"),
                 "--correction-gate", "0"]) == 0
    assert "left unchanged" not in "".join(capsys.readouterr())
    with pytest.raises(SystemExit):
        main(["rectify", str(tmp_path / "in"), "--out", str(tmp_path / "h"), "--correction-gate", "2"])
    assert "--correction-gate: must be a number in [0, 1]" in "".join(capsys.readouterr())


def test_the_app_field_turns_the_gate_off(fixed_flow, tmp_path: Path) -> None:
    from stablemotion.app.server import create_app

    image = (np.random.default_rng(3).random((H, W, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    app = create_app({"rsc": tiny_pipeline("rsc")}, result_root=tmp_path, allowed_hosts=["testserver"])
    with TestClient(app) as client:
        files = {"image": ("a.png", buf.getvalue(), "image/png")}
        gated = client.post("/api/rectify", data={"task": "rsc"}, files=files).json()
        assert gated["unchanged"] is True and gated["reason"].startswith("left unchanged: the predicted flow")
        assert gated["confidence"] == 0.0 and gated["always_correct"] is False
        out = np.array(Image.open(io.BytesIO(client.get(gated["urls"]["rectified.png"]).content)))
        assert np.array_equal(out, image)
        forced = client.post("/api/rectify", data={"task": "rsc", "always_correct": "on"}, files=files).json()
        assert forced["unchanged"] is False and forced["reason"] == "" and forced["always_correct"] is True
        bad = client.post("/api/rectify", data={"task": "rsc", "always_correct": "maybe"}, files=files)
        assert bad.status_code == 400 and "always_correct must be" in bad.json()["detail"]

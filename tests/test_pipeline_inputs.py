"""The input steps of StableMotionPipeline (stablemotion.model.pipeline_inputs): check_inputs validates
only, prepare_inputs converts, check_prepared_inputs checks the converted tensors, and __call__ is
these steps in sequence (CPU, offline, tiny random components)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stablemotion.model.pipeline import StableMotionPipeline
from stablemotion.model.pipeline_inputs import PipelineInputsMixin, check_choice, merge_mask
from stablemotion.model.tiny import tiny_pipeline


@pytest.fixture(scope="module")
def pipe() -> StableMotionPipeline:
    p = tiny_pipeline("sir", seed=0)
    p.set_progress_bar_config(disable=True)
    return p


def _inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.random((24, 32, 3), dtype=np.float32)
    mask = np.ones((24, 32), np.float32)
    mask[:3] = 0
    return image, mask


def test_the_pipeline_has_the_input_steps(pipe: StableMotionPipeline) -> None:
    assert isinstance(pipe, PipelineInputsMixin)


def test_check_inputs_validates_only(pipe: StableMotionPipeline) -> None:
    # arguments fine: None comes back and nothing is converted (the image is not even looked at)
    assert pipe.check_inputs({"mask": object()}, 1, 1, "image", None, "pt") is None
    with pytest.raises(ValueError, match="ensemble_mode must be one of"):
        pipe.check_inputs({"mask": object()}, 1, 1, "median", None, "pt")
    with pytest.raises(ValueError, match="needs the condition 'mask'"):
        pipe.check_inputs({}, 1, 1, "image", None, "pt")
    with pytest.raises(ValueError, match="return_members needs decoded members"):
        pipe.check_inputs({"mask": object()}, 1, 2, "latent", None, "pt", return_members=True)
    with pytest.raises(ValueError, match=r"decode_scale must be an int >= 1 \(1 = full-resolution"):
        pipe.check_inputs({"mask": object()}, 1, 1, "image", None, "pt", decode_scale=0)


def test_prepare_inputs_converts(pipe: StableMotionPipeline) -> None:
    image, mask = _inputs()
    images, conds, proc = pipe.prepare_inputs(image, {"mask": mask})
    assert images.shape == (1, 3, 24, 32) and images.dtype == torch.float32
    assert set(conds) == {"mask"} and conds["mask"].shape == (1, 1, 24, 32)
    assert proc is None
    with pytest.raises(TypeError, match="mask must be a PIL image"):
        pipe.prepare_inputs(image, {"mask": object()})


def test_check_prepared_inputs(pipe: StableMotionPipeline) -> None:
    image, mask = _inputs()
    images, conds, _ = pipe.prepare_inputs(image, {"mask": mask})
    assert pipe.check_prepared_inputs(images, conds, None, [32, 32], 1) is None
    with pytest.raises(ValueError, match="must be pixel-aligned"):
        pipe.check_prepared_inputs(images, {"mask": conds["mask"][..., :16]}, None, [32, 32], 1)
    with pytest.raises(ValueError, match="has no valid pixel"):
        pipe.check_prepared_inputs(images, {"mask": torch.zeros_like(conds["mask"])}, None, [32, 32], 1)
    with pytest.raises(ValueError, match="one per sample"):
        pipe.check_prepared_inputs(images, conds, None, [32, 32], 2, generator=[torch.Generator()])
    assert pipe.resolve_processing_size(images, None, 0) == (24, 32)
    assert pipe.resolve_processing_size(images, torch.zeros(1, 3, 16, 16), [32, 32]) == (16, 16)


def test_resolve_settings_fills_the_config_defaults(pipe: StableMotionPipeline) -> None:
    s = pipe.resolve_settings(pipe.task, ensemble_size=3, border_band=5.0)
    assert list(s) == ["num_inference_steps", "ensemble_size", "ensemble_mode", "processing_resolution", "final_step",
                       "decode_scale", "mask_encoding", "border_band", "ensemble_rounding", "flow_regularization",
                       "flow_projection", "correction_gate", "aspect_mode", "task"]
    assert (s["num_inference_steps"], s["ensemble_size"], s["ensemble_mode"], s["border_band"]) == (1, 3, "image", 5.0)
    assert s["processing_resolution"] == [32, 32] and s["task"] == "sir"


def test_call_is_the_sequence_of_its_steps(pipe: StableMotionPipeline) -> None:
    image, mask = _inputs()
    out = pipe(image, mask=mask, ensemble_size=2, generator=torch.Generator().manual_seed(3))
    s = pipe.resolve_settings(pipe.task, ensemble_size=2)
    images, conds, proc = pipe.prepare_inputs(image, {"mask": mask})
    size = pipe.resolve_processing_size(images, proc, s["processing_resolution"])
    flows_lr = pipe.estimate_flows(images, conds, size, s, generator=torch.Generator().manual_seed(3),
                                   show_progress_bar=False)
    flow, rect, uncertainty, _ = pipe.ensemble(images, flows_lr, s["ensemble_mode"], s["border_band"])
    torch.testing.assert_close(out.flow, flow.cpu(), rtol=0, atol=0)
    torch.testing.assert_close(out.image, rect.cpu(), rtol=0, atol=0)
    torch.testing.assert_close(out.uncertainty, uncertainty.cpu(), rtol=0, atol=0)
    assert out.settings["processing_resolution"] == list(size)


def test_helpers() -> None:
    check_choice("x", "a", ("a", "b"))
    with pytest.raises(ValueError, match=r"x must be one of \('a', 'b'\), got 'c'"):
        check_choice("x", "c", ("a", "b"))
    assert merge_mask(None, None) == {}
    assert set(merge_mask(1, {"image": 2})) == {"image", "mask"}
    with pytest.raises(ValueError, match="either as mask= or in conditions"):
        merge_mask(1, {"mask": 2})

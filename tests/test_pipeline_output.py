"""The pipeline's output (stablemotion.model.pipeline_output): the layouts of "pt", "np" and "pil",
and the names' old home (stablemotion.model.pipeline) still serving them."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from stablemotion.model import pipeline, pipeline_output
from stablemotion.model.pipeline_output import OUTPUT_TYPES, StableMotionOutput, format_output


def test_old_home_still_serves_the_names() -> None:
    assert pipeline.StableMotionOutput is pipeline_output.StableMotionOutput
    assert pipeline.OUTPUT_TYPES is OUTPUT_TYPES == ("pt", "np", "pil")
    import stablemotion

    assert stablemotion.StableMotionOutput is StableMotionOutput


def _tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    flow = torch.randn(2, 2, 4, 6, generator=torch.Generator().manual_seed(0))
    rect = torch.rand(2, 3, 4, 6, generator=torch.Generator().manual_seed(1))
    return flow, rect, flow.norm(dim=1, keepdim=True), torch.stack([flow, flow], dim=1)


def test_pt_layout() -> None:
    flow, rect, unc, members = _tensors()
    out = format_output(flow, rect, unc, members, {"a": 1}, "pt", output_flow_colored=True)
    assert isinstance(out, StableMotionOutput)
    assert out.flow.shape == (2, 2, 4, 6) and out.image.shape == (2, 3, 4, 6) and out.uncertainty.shape == (2, 1, 4, 6)
    assert out.flow_colored.shape == (2, 3, 4, 6) and out.flow_colored.dtype == torch.uint8
    assert out.members.shape == (2, 2, 2, 4, 6) and out.settings == {"a": 1}


def test_np_and_pil_layouts() -> None:
    flow, rect, unc, _ = _tensors()
    out = format_output(flow, rect, unc, None, {}, "np", output_flow_colored=True)
    assert out.flow.shape == (2, 4, 6, 2) and out.flow.dtype == np.float32
    assert out.image.shape == (2, 4, 6, 3) and out.uncertainty.shape == (2, 4, 6, 1)
    assert out.flow_colored.shape == (2, 4, 6, 3) and out.flow_colored.dtype == np.uint8
    np.testing.assert_array_equal(out.flow, flow.permute(0, 2, 3, 1).numpy())
    pil = format_output(flow, rect, None, None, {}, "pil", output_flow_colored=True)
    assert all(isinstance(im, Image.Image) and im.size == (6, 4) for im in pil.image + pil.flow_colored)
    assert pil.uncertainty is None and pil.members is None


def test_tuple() -> None:
    flow, rect, unc, _ = _tensors()
    got = format_output(flow, rect, unc, None, {}, "pt", return_dict=False)
    assert isinstance(got, tuple) and len(got) == 4 and got[2] is None

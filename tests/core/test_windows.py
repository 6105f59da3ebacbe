"""Windows along the long side of wide images and the blend of their flows (core/windows, model/windows)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stablemotion.core.windows import blend_window_flows, crop_windows, window_layout, window_weights
from stablemotion.model.tiny import tiny_pipeline
from stablemotion.model.windows import plan_windows
from stablemotion.tasks import get_task


@pytest.mark.parametrize("size", [(100, 600), (240, 1440), (90, 200), (600, 100), (37, 411)])
def test_windows_cover_the_long_side_with_the_network_aspect(size: tuple[int, int]) -> None:
    layout = window_layout(size, (96, 128))
    assert layout is not None
    long_side = size[layout.axis]
    assert layout.starts[0] == 0 and layout.starts[-1] + layout.length == long_side
    strides = np.diff(layout.starts)
    assert (strides > 0).all() and (strides <= layout.length * 0.5 + 1).all()  # at least half overlap
    short = size[1 - layout.axis]
    aspect = layout.length / short if layout.axis == 1 else short / layout.length
    assert abs(aspect - 128 / 96) < 0.02 or layout.length == long_side


def test_no_windows_near_the_network_aspect_and_for_global_motion() -> None:
    assert window_layout((300, 400), (96, 128)) is None
    assert window_layout((384, 512), (32, 32)) is None  # 4:3 on a square network: resized whole, as before
    assert plan_windows((100, 600), (96, 128), "squeeze", get_task("sir")) is None
    assert plan_windows((100, 600), (96, 128), "auto", get_task("rotation")) is None
    assert plan_windows((100, 600), (96, 128), "windows", get_task("rotation")) is not None
    with pytest.raises(ValueError, match="aspect_mode"):
        plan_windows((100, 600), (96, 128), "stretch", get_task("sir"))


def test_blend_reproduces_a_flow_its_windows_were_cut_from() -> None:
    """Windows cut from one smooth flow blend back into it (weights sum to one, spans placed exactly)."""
    h, w = 24, 160
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    flow = torch.stack([3 * xs + ys, torch.sin(6 * xs) * 2])[None]
    layout = window_layout((h, w), (24, 32))
    blended = blend_window_flows(crop_windows(flow, layout), layout, (h, w))
    assert torch.allclose(blended, flow, atol=1e-5)
    weights = [window_weights(layout, k) for k in range(len(layout))]
    assert all(float(wt.min()) > 0 for wt in weights)


def test_blend_of_disagreeing_windows_has_no_seam() -> None:
    layout = window_layout((8, 64), (8, 8))
    flows = torch.arange(len(layout), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 2, 8, 8).clone()
    blended = blend_window_flows(flows, layout, (8, 64))[0, 0, 0]
    steps = blended.diff().abs()
    assert float(steps.max()) < 0.5  # a ramp from window to window, never a jump of a whole window's value
    assert float(blended[0]) == 0.0 and float(blended[-1]) == len(layout) - 1


def test_pipeline_runs_a_wide_panorama_in_windows() -> None:
    pipe = tiny_pipeline("sir")
    rng = np.random.default_rng(0)
    image = rng.random((32, 192, 3)).astype(np.float32)
    mask = np.full((32, 192), 255, np.uint8)
    mask[:3, 40:90] = 0
    gen = torch.Generator().manual_seed(0)
    out = pipe(image, mask=mask, output_type="np", generator=gen, show_progress_bar=False, processing_resolution=32)
    assert out.settings["windows"] == 11 and out.flow.shape == (1, 32, 192, 2)
    assert np.isfinite(out.flow).all()
    squeezed = pipe(image, mask=mask, output_type="np", generator=torch.Generator().manual_seed(0),
                    show_progress_bar=False, processing_resolution=32, aspect_mode="squeeze")
    assert squeezed.settings["windows"] == 0
    assert not np.allclose(out.flow, squeezed.flow)
    batch = pipe([image, image], mask=mask, output_type="np", generator=torch.Generator().manual_seed(0),
                 show_progress_bar=False, processing_resolution=32, ensemble_size=2, ensemble_mode="flow")
    assert batch.flow.shape == (2, 32, 192, 2) and np.isfinite(batch.flow).all()


def test_rectify_takes_the_aspect_mode(tmp_path) -> None:
    import argparse

    from stablemotion.cli._options import add_inference_options, inference_kwargs

    p = argparse.ArgumentParser()
    add_inference_options(p)
    p.add_argument("--model", default=None)
    p.add_argument("--task", default="rsc")
    assert "aspect_mode" not in inference_kwargs(p.parse_args([]))  # unset: old settings records unchanged
    assert inference_kwargs(p.parse_args(["--aspect-mode", "squeeze"]))["aspect_mode"] == "squeeze"
    with pytest.raises(SystemExit):
        p.parse_args(["--aspect-mode", "stretch"])


def test_windows_with_mesh_keep_the_frame_on_content(monkeypatch: pytest.MonkeyPatch) -> None:
    """One mesh over the whole frame, snapped onto the content: the output's border samples content even
    where the blend of the windows would not reach into a deep notch at a panorama's end."""
    from stablemotion.core.flow import warp

    pipe = tiny_pipeline("sir")
    rng = np.random.default_rng(1)
    h, w = 32, 192
    image = rng.random((h, w, 3)).astype(np.float32)
    mask = np.full((h, w), 255, np.uint8)
    mask[:4, :] = 0
    mask[-3:, 60:150] = 0
    mask[h // 2:, 170:] = 0  # a deep notch at the right end
    image[mask == 0] = 0

    def still(images, conds, size, settings, *args, **kwargs):  # windows that ask for no motion at all
        return torch.zeros(images.shape[0], settings["ensemble_size"], 2, *size)

    monkeypatch.setattr(pipe, "estimate_flows", still)
    out = pipe(image, mask=mask, output_type="pt", generator=torch.Generator().manual_seed(0),
               show_progress_bar=False, processing_resolution=32, flow_regularization="mesh")
    assert out.settings["windows"] > 1
    valid = torch.from_numpy((mask > 0).astype(np.float32))[None, None]

    def frame_on_content(flow: torch.Tensor) -> float:
        seen = warp(valid, flow.float(), padding="zeros")[0, 0]
        frame = torch.cat([seen[0], seen[-1], seen[:, 0], seen[:, -1]])
        return float((frame > 0.5).float().mean())

    assert frame_on_content(torch.zeros_like(out.flow)) < 0.6  # the blend alone: the notches stay in the frame
    assert frame_on_content(out.flow) > 0.95

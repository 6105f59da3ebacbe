"""The one pixel grid: coordinates, grid_sample normalisation, and that every warp uses it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stablemotion.core import flow as fl
from stablemotion.core import grid


@pytest.mark.parametrize("size", [1, 2, 5, 64])
def test_pixel_centres_0_and_size_minus_1_are_the_edges(size: int) -> None:
    got = grid.normalize_coords(torch.tensor([0.0, float(size - 1)], dtype=torch.float64), size)
    assert got.tolist() == ([-1.0, -1.0] if size == 1 else [-1.0, 1.0])


def test_torch_and_numpy_grids_agree() -> None:
    t = grid.pixel_grid(3, 4, dtype=torch.float64)
    assert t.shape == (1, 2, 3, 4)
    np.testing.assert_array_equal(t[0].permute(1, 2, 0).numpy(), grid.pixel_grid_np(3, 4))
    assert grid.pixel_grid_np(3, 4)[2, 1].tolist() == [1.0, 2.0]  # (x, y) of row 2, column 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_zero_flow_samples_every_pixel_at_its_centre(dtype: torch.dtype) -> None:
    image = torch.rand(1, 3, 5, 7, dtype=torch.float64)
    g = grid.sample_grid(torch.zeros(1, 2, 5, 7), dtype)
    assert g.shape == (1, 5, 7, 2) and g.dtype == dtype
    out = F.grid_sample(image, g.double(), mode="bilinear", align_corners=True)
    assert torch.allclose(out, image, atol=1e-6 if dtype == torch.float32 else 1e-12)


def test_sample_grid_moves_with_the_flow() -> None:
    flow = torch.zeros(1, 2, 3, 5)
    flow[:, 0] = 2.0  # 2 px right = half of the normalised width (5 - 1 px = 2)
    g = grid.sample_grid(flow)
    assert torch.allclose(g[0, 0, :, 0], torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0]))  # x along a row
    assert torch.allclose(g[0, :, 0, 1], torch.tensor([-1.0, 0.0, 1.0]))  # y down a column, unmoved


def test_warp_and_the_strip_warp_share_the_grid() -> None:
    """The strip-wise large-image warp and ``warp`` sample the same points (one convention)."""
    from stablemotion.core.large_image import warp_strips

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    flow = rng.normal(0, 3, (20, 30, 2)).astype(np.float32)
    ref = fl.warp(torch.from_numpy(image).permute(2, 0, 1).float() / 255, torch.from_numpy(flow).permute(2, 0, 1))
    ref = (ref.clamp(0, 1) * 255).round().permute(1, 2, 0).to(torch.uint8).numpy()
    got = warp_strips(image, flow, "border", strip_pixels=30 * 3)
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1

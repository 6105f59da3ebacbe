"""AES rules on hand-made ensemble members (pure torch)."""

from __future__ import annotations

import pytest
import torch

from stablemotion.core.ensemble import (
    border_band_mask,
    border_band_width,
    ensemble_flows,
    ensemble_images,
    flow_uncertainty,
    median,
)


def test_median_odd_and_even() -> None:
    x = torch.tensor([[3.0, 1.0, 2.0], [9.0, -1.0, 4.0]])
    assert torch.equal(median(x, dim=1), torch.tensor([2.0, 4.0]))
    y = torch.tensor([[4.0, 1.0, 2.0, 10.0]])
    assert torch.equal(median(y, dim=1), torch.tensor([3.0]))  # mean of the two middle values


def test_band_width_is_20px_at_384x512_and_scales() -> None:
    assert border_band_width(384, 512) == (20, 20)
    assert border_band_width(768, 1024) == (40, 40)
    assert border_band_width(192, 256) == (10, 10)
    assert border_band_width(384, 1024) == (20, 40)  # per axis
    assert border_band_width(384, 512, band=10) == (10, 10)
    assert border_band_width(384, 512, band=0) == (0, 0)
    assert border_band_width(8, 8) == (1, 1)  # a positive band never vanishes
    with pytest.raises(ValueError, match="border band"):
        border_band_width(10, 10, band=-1)


def test_band_mask() -> None:
    m = border_band_mask(6, 8, (1, 2))
    expected = torch.zeros(6, 8, dtype=torch.bool)
    expected[0], expected[-1] = True, True
    expected[:, :2], expected[:, -2:] = True, True
    assert torch.equal(m, expected)


def test_released_rule_median_inside_min_in_band() -> None:
    h, w = 6, 8
    values = torch.tensor([0.9, 0.2, 0.5])  # per member
    members = values.view(1, 3, 1, 1, 1).expand(1, 3, 3, h, w).clone()
    # Make the members disagree per pixel: swap members at one interior and one band pixel.
    members[0, 0, :, 3, 4], members[0, 2, :, 3, 4] = 0.5, 0.9
    members[0, 1, :, 0, 0], members[0, 2, :, 0, 0] = -0.7, 0.2
    out = ensemble_images(members, band=(1, 2))
    band = border_band_mask(h, w, (1, 2))
    assert out.shape == (1, 3, h, w)
    assert torch.allclose(out[0, :, ~band], torch.tensor(0.5))
    inside_band = out[0, :, band]
    assert torch.allclose(out[0, :, 0, 0], torch.tensor(-0.7))
    assert torch.allclose(inside_band[:, 1:], torch.tensor(0.2))


def test_released_rule_even_members_and_single_member() -> None:
    a = torch.rand(2, 1, 3, 10, 12)
    assert torch.equal(ensemble_images(a), a[:, 0])
    b = torch.stack([torch.zeros(3, 10, 12), torch.ones(3, 10, 12)]).unsqueeze(0)  # (1, 2, 3, H, W)
    out = ensemble_images(b, band=0)
    assert torch.allclose(out, torch.full_like(out, 0.5))
    out = ensemble_images(b, band=(2, 2))
    assert float(out[0, :, :2].max()) == 0.0 and float(out[0, :, 4, 4].min()) == 0.5


def test_flow_median_and_uncertainty() -> None:
    flows = torch.zeros(1, 3, 2, 4, 5)
    flows[0, 2, 0] = 3.0  # one outlier member moves 3 px right
    flows[0, 1, 1] = -1.0
    med = ensemble_flows(flows)
    assert torch.equal(med, torch.zeros(1, 2, 4, 5))
    unc = flow_uncertainty(flows)
    assert unc.shape == (1, 1, 4, 5)
    assert torch.allclose(unc, torch.full_like(unc, (0 + 1 + 3) / 3))
    assert torch.equal(flow_uncertainty(flows[:, :1]), torch.zeros(1, 1, 4, 5))


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match=r"\(B, E, C, H, W\)"):
        ensemble_images(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="2 channels"):
        ensemble_flows(torch.zeros(1, 2, 3, 4, 4))

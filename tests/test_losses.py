from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from stablemotion.core.flow import warp
from stablemotion.training import losses


@pytest.fixture
def alphas() -> torch.Tensor:
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction")
    return sched.alphas_cumprod


def test_v_target_matches_diffusers_and_x0_inverts_it(alphas):
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    g = torch.Generator().manual_seed(0)
    z0, eps = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([0, 250, 600, 999])
    v = losses.v_target(z0, eps, alphas, t)
    assert torch.allclose(v, sched.get_velocity(z0, eps, t), atol=1e-6)
    z_t = sched.add_noise(z0, eps, t)
    assert torch.allclose(losses.x0_from_v(z_t, v, alphas, t), z0, atol=1e-5)


def test_pyramid_noise_statistics_and_annealing():
    x = torch.zeros(3, 4, 48, 64)
    g = torch.Generator().manual_seed(0)
    n = losses.pyramid_noise_like(x, strength=torch.tensor([0.0, 0.45, 0.9]), generator=g)
    assert n.shape == x.shape and n.dtype == x.dtype
    assert torch.allclose(n.flatten(1).std(1), torch.ones(3), atol=1e-4)
    # Low-frequency energy grows with strength: compare 8x8 block means.
    low = torch.nn.functional.avg_pool2d(n, 8).flatten(1).var(1)
    assert low[0] < low[2]
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(losses.pyramid_noise_like(x, 0.9, generator=g1), losses.pyramid_noise_like(x, 0.9, generator=g2))
    with pytest.raises(ValueError, match="one entry per sample"):
        losses.pyramid_noise_like(x, strength=torch.ones(2))


def test_warp_loss_zero_for_true_flow_and_gradient_direction():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, 24, 32, generator=g) * 2 - 1
    flow_gt = torch.zeros(2, 2, 24, 32)
    flow_gt[:, 0] = 2.0
    target = warp(img, flow_gt)
    assert losses.warp_loss(img, flow_gt, target) < 1e-10
    flow = torch.zeros(2, 2, 24, 32, requires_grad=True)
    loss = losses.warp_loss(img, flow, target)
    loss.backward()
    assert loss > 1e-3 and flow.grad is not None and flow.grad.abs().sum() > 0


def test_valid_region_weights_ignore_outside():
    img = torch.rand(1, 3, 16, 16) * 2 - 1
    flow_gt = torch.zeros(1, 2, 16, 16)
    flow_gt[:, 0] = 4.0  # the right 4 columns sample outside
    valid = losses.gt_valid_region(flow_gt)
    assert valid[0, 0, :, :12].min() == 1 and valid[0, 0, :, 13:].max() == 0
    target = warp(img, flow_gt, padding="zeros")
    target[..., 13:] = 5.0  # garbage where the gt cannot be filled
    assert losses.warp_loss(img, flow_gt, target, padding="zeros", valid=valid) < 1e-10
    assert losses.warp_loss(img, flow_gt, target, padding="zeros") > 1.0


def test_mask_loss_penalises_sampling_outside_content():
    mask = -torch.ones(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1.0  # content in the centre
    # Off the integer grid: at exact integers the bilinear slope is one-sided and may be 0.
    zero = torch.full((1, 2, 16, 16), 0.3, requires_grad=True)
    inward = torch.zeros(1, 2, 16, 16)
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    inward[0, 0] = (4 + xs * 7 / 15) - xs  # map the whole output into the content square
    inward[0, 1] = (4 + ys * 7 / 15) - ys
    assert losses.mask_loss(mask, inward) < 1e-8
    loss = losses.mask_loss(mask, zero)
    assert loss > 1.0
    loss.backward()
    assert zero.grad.abs().sum() > 0


def test_perceptual_loss_random_weights_and_clear_errors(tmp_path):
    p = losses.PerceptualLoss(weights=None)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    assert p(x, x) == 0
    y = x.clone().requires_grad_(True)
    out = p(y, torch.zeros_like(x))
    out.backward()
    assert out > 0 and y.grad.abs().sum() > 0
    assert not any(q.requires_grad for q in p.parameters())
    # A local weights file (full VGG16 state dict layout) is accepted.
    state = {f"features.{k}": v for k, v in p.features.state_dict().items()}
    torch.save(state, tmp_path / "vgg.pth")
    q = losses.PerceptualLoss(weights=tmp_path / "vgg.pth")
    assert torch.allclose(q(x, torch.zeros_like(x)), p(x, torch.zeros_like(x)))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        losses.PerceptualLoss(weights=tmp_path / "nope.pth")
    torch.save({"foo": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="conv1_1"):
        losses.PerceptualLoss(weights=tmp_path / "bad.pth")


def test_perceptual_loss_offline_message(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    from torchvision.models import VGG16_Weights

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(type(VGG16_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(RuntimeError, match="vgg16-397923af.pth.*loss.vgg_weights"):
        losses.PerceptualLoss(weights="imagenet")


def test_loss_weights_overrides():
    w = losses.LossWeights.from_mapping({"v": 1, "warp": 8, "mask": 8, "vgg": 0.1}, {"vgg": 0})
    assert w == losses.LossWeights(v=1, warp=8, mask=8, vgg=0)
    with pytest.raises(ValueError, match="unknown loss terms"):
        losses.LossWeights.from_mapping({"l1": 1})


# --------------------------------------------------------------------------- codec smoothness
def test_flow_laplacian_is_the_five_point_stencil_with_replicate_border():
    ys, xs = torch.meshgrid(torch.arange(6.0), torch.arange(8.0), indexing="ij")
    quad = torch.stack([xs**2, 3 * ys**2])[None]  # Laplacian 2 and 6 inside
    lap = losses.flow_laplacian(quad)
    assert lap.shape == quad.shape
    assert torch.allclose(lap[0, 0, 1:-1, 1:-1], torch.full((4, 6), 2.0))
    assert torch.allclose(lap[0, 1, 1:-1, 1:-1], torch.full((4, 6), 6.0))
    assert lap[0, 0, 0, 0] == (1 - 0)  # replicate padding: one-sided difference at the corner
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        losses.flow_laplacian(quad[0])


def test_flow_smoothness_loss_matches_a_smooth_gt_and_charges_noise_in_pixels():
    g = torch.Generator().manual_seed(0)
    ys, xs = torch.meshgrid(torch.arange(24.0), torch.arange(32.0), indexing="ij")
    gt = torch.stack([0.01 * (xs - 16) ** 2 + 0.2 * ys, -0.02 * (ys - 12) ** 2 + 0.1 * xs])[None].repeat(2, 1, 1, 1)
    assert losses.flow_smoothness_loss(gt, gt) == 0
    assert losses.flow_smoothness_loss(gt + 3.5, gt) < 1e-5  # an offset is the flow MSE's business
    # Not biased towards zero motion: the curved gt itself is cheaper than a flat flow.
    assert losses.flow_smoothness_loss(torch.zeros_like(gt), gt) > 0.02
    # High-frequency noise (a 0.1 px checkerboard, the upsampler's typical artefact) costs ~8 x 0.1 px
    # per component inside: the loss is in pixels, sum of u and v.
    checker = 0.1 * (((xs + ys) % 2) * 2 - 1)
    noisy = gt + checker
    loss = losses.flow_smoothness_loss(noisy, gt)
    assert 1.2 < float(loss) < 1.61
    # Random noise: monotone in its amplitude.
    n = torch.randn(gt.shape, generator=g)
    small, big = (losses.flow_smoothness_loss(gt + a * n, gt) for a in (0.01, 0.1))
    assert 0 < small < big and torch.isclose(big / small, torch.tensor(10.0), rtol=1e-3)
    with pytest.raises(ValueError, match="same shape"):
        losses.flow_smoothness_loss(gt, gt[:, :, :-1])


def test_flow_smoothness_loss_gradient_reaches_the_flow():
    gt = torch.zeros(1, 2, 16, 16)
    flow = (torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(1)) * 0.1).requires_grad_(True)
    loss = losses.flow_smoothness_loss(flow, gt)
    loss.backward()
    assert flow.grad is not None and flow.grad.abs().sum() > 0
    with torch.no_grad():  # a step against the gradient smooths the flow
        after = losses.flow_smoothness_loss(flow - 1e-3 * flow.grad / flow.grad.abs().max(), gt)
    assert after < loss


def test_loss_weights_know_flow_smooth_and_default_it_off():
    assert losses.LossWeights().flow_smooth == 0.0
    assert losses.LossWeights.from_mapping({"v": 1.0}, {"flow_smooth": 2}).flow_smooth == 2.0
    with pytest.raises(ValueError, match="flow_smooth"):
        losses.LossWeights.from_mapping({"flow_smoth": 1.0})

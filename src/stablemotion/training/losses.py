"""Training losses and noise of StableMotion (docs/method.md, "Training").

* :func:`pyramid_noise_like` - Marigold's annealed multi-resolution noise.
* :func:`v_target` / :func:`x0_from_v` - v-prediction target and the one-shot x0 estimate
  through which the task losses reach the UNet.
* :func:`warp_loss`, :func:`mask_loss` - condition losses on images in [-1, 1] (``warp_loss``
  with ``norm="l1"`` is the end-to-end objective's photometric term).
* :func:`flow_epe_loss` - the end-to-end objective's flow term: end-point error (pixels) in the
  valid region.
* :func:`flow_laplacian`, :func:`flow_smoothness_loss` - the codec's smoothness term: L1
  between the discrete Laplacians of a decoded and a ground-truth flow (pixels).
* :class:`PerceptualLoss` - VGG16 ``features[:9]`` (up to relu2_2) feature MSE.
* :class:`LossWeights` - per-task weights, overridable.

All functions are pure torch and know nothing of the trainer.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..core.flow import end_point_error, warp

__all__ = [
    "LossWeights",
    "pyramid_noise_like",
    "v_target",
    "x0_from_v",
    "warp_loss",
    "flow_epe_loss",
    "mask_loss",
    "flow_laplacian",
    "flow_smoothness_loss",
    "PerceptualLoss",
    "VGG16_RELU2_2_LAYERS",
]

#: ``torchvision.models.vgg16().features[:9]``: conv1_1 .. relu2_2.
VGG16_RELU2_2_LAYERS = 9
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_VGG16_FILE = "vgg16-397923af.pth"  # torchvision's IMAGENET1K_V1 checkpoint name


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms. ``0`` disables a term (and skips its compute).

    ``flow`` and ``image`` weigh the VAE (codec) stage's flow-reconstruction MSE (gamma
    units: 1 px = 1/gamma) and image-reconstruction MSE. ``flow_smooth`` weighs the
    codec's smoothness term (:func:`flow_smoothness_loss`, pixels; VAE stage only, off by
    default): it makes the decoder reproduce the ground truth's second differences, so a
    smooth flow comes back smooth, at the border as in the centre.

    ``epe`` and ``photo`` weigh the end-to-end objective's terms (``loss.objective: e2e``, UNet
    stage only; off by default): the end-point error of the one-step flow (pixels,
    :func:`flow_epe_loss`) and the L1 between the input warped with it and the ground truth
    (:func:`warp_loss` with ``norm="l1"``, images in [-1, 1]); both on the task's valid region.
    """

    v: float = 1.0
    warp: float = 0.0
    mask: float = 0.0
    vgg: float = 0.0
    flow: float = 1.0
    image: float = 1.0
    flow_smooth: float = 0.0
    epe: float = 0.0
    photo: float = 0.0

    @classmethod
    def from_mapping(cls, weights: Mapping[str, float], overrides: Mapping[str, float] | None = None) -> LossWeights:
        merged = {**dict(weights), **dict(overrides or {})}
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = set(merged) - set(names)
        if unknown:
            raise ValueError(f"unknown loss terms {sorted(unknown)}; use {', '.join(names)}")
        return cls(**{k: float(v) for k, v in merged.items()})


# --------------------------------------------------------------------------- noise
def pyramid_noise_like(
    x: torch.Tensor,
    strength: float | torch.Tensor = 0.9,
    max_levels: int = 10,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Annealed multi-resolution ("pyramid") Gaussian noise shaped like ``x``.

    Level ``i`` adds bilinearly upsampled noise drawn at a resolution divided by a
    random factor ``r ~ U[2, 4)`` per level (compounding), weighted by ``strength**i``,
    until a side reaches 1 px or ``max_levels`` levels; each sample is then renormalised
    to unit standard deviation. With the method's annealing, pass
    ``strength = 0.9 * t / 1000`` per sample (t = 0 gives plain Gaussian noise).

    Args:
        x: (B, C, H, W) latents (only shape, dtype and device are used).
        strength: scalar or (B,) tensor in [0, 1].
        generator: for reproducible noise.

    Returns:
        (B, C, H, W) noise, same dtype/device as ``x``.
    """
    b, c, h, w = x.shape
    dev = x.device
    noise = torch.randn((b, c, h, w), generator=generator, device=dev, dtype=torch.float32)
    s = torch.as_tensor(strength, dtype=torch.float32, device=dev).reshape(-1, 1, 1, 1)
    if s.shape[0] not in (1, b):
        raise ValueError(f"strength must be a scalar or have one entry per sample ({b}), got {s.shape[0]}")
    lh, lw = h, w
    for i in range(1, max_levels):
        r = float(torch.rand(1, generator=generator, device=generator.device if generator else dev)) * 2 + 2
        lh, lw = max(1, int(lh / r)), max(1, int(lw / r))
        level = torch.randn((b, c, lh, lw), generator=generator, device=dev, dtype=torch.float32)
        noise = noise + F.interpolate(level, size=(h, w), mode="bilinear", align_corners=False) * s**i
        if lh == 1 or lw == 1:
            break
    noise = noise / noise.flatten(1).std(dim=1).view(-1, 1, 1, 1)
    return noise.to(x.dtype)


# --------------------------------------------------------------------------- v-prediction
def _alphas(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a = alphas_cumprod.to(like.device)[timesteps.to(like.device).long()].float().view(-1, 1, 1, 1)
    return a.sqrt().to(like.dtype), (1 - a).sqrt().to(like.dtype)


def v_target(z0: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """v-prediction target ``v = sqrt(a_t) * eps - sqrt(1 - a_t) * z0``; all (B, C, h, w)."""
    sa, sb = _alphas(alphas_cumprod, timesteps, z0)
    return sa * noise - sb * z0


def x0_from_v(z_t: torch.Tensor, v_hat: torch.Tensor, alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """One-shot clean-latent estimate ``z0_hat = sqrt(a_t) * z_t - sqrt(1 - a_t) * v_hat``."""
    sa, sb = _alphas(alphas_cumprod, timesteps, z_t)
    return sa * z_t - sb * v_hat


# --------------------------------------------------------------------------- task losses
def warp_loss(
    image: torch.Tensor,
    flow: torch.Tensor,
    target: torch.Tensor,
    padding: str = "border",
    valid: torch.Tensor | None = None,
    norm: str = "l2",
) -> torch.Tensor:
    """MSE (``norm="l2"``) or mean absolute error (``"l1"``) between ``warp(image, flow)`` and ``target``.

    Args:
        image, target: (B, C, H, W) in [-1, 1].
        flow: (B, 2, H, W), pixels (predicted).
        valid: optional (B, 1, H, W) weights in [0, 1] (RSC: ``warp(1, flow_gt)``, the
            region the ground-truth flow can fill); the error is averaged over it only.
        norm: ``"l2"`` (squared error) or ``"l1"`` (absolute error).

    Returns:
        scalar loss.

    Example:
        >>> image = torch.linspace(-1, 1, 8).expand(1, 3, 8, 8).contiguous()
        >>> round(float(warp_loss(image, torch.zeros(1, 2, 8, 8), image, norm="l1")), 6)  # zero flow: the input
        0.0
    """
    if norm not in ("l1", "l2"):
        raise ValueError(f"warp_loss norm must be 'l1' or 'l2', got {norm!r}")
    pred = warp(image, flow, padding=padding, check_finite=False, fill=-1.0)  # zeros padding: black, as released
    diff = pred.float() - target.float()
    err = diff.abs() if norm == "l1" else diff.pow(2)
    if valid is None:
        return err.mean()
    w = valid.float().expand_as(err)
    return (err * w).sum() / w.sum().clamp_min(1.0)


def flow_epe_loss(flow: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean end-point error of a predicted flow, in pixels: the batch mean of
    :func:`stablemotion.core.flow.end_point_error` (per sample, over ``valid``).

    Args:
        flow, target: (B, 2, H, W), pixels.
        valid: optional (B, 1, H, W) weights in [0, 1] (see :func:`gt_valid_region`).

    Returns:
        scalar loss (pixels).

    Example:
        >>> target = torch.zeros(2, 2, 4, 4)
        >>> float(flow_epe_loss(target + torch.tensor([3.0, 4.0]).view(1, 2, 1, 1), target))
        5.0
    """
    return end_point_error(flow, target, valid).mean()


def gt_valid_region(flow_gt: torch.Tensor) -> torch.Tensor:
    """``warp(1, flow_gt)`` with zeros padding: (B, 1, H, W) soft weights of where the
    ground-truth flow samples inside the input (the released RSC masking)."""
    ones = torch.ones_like(flow_gt[:, :1])
    return warp(ones, flow_gt, padding="zeros", check_finite=False)


def mask_loss(mask: torch.Tensor, flow: torch.Tensor, padding: str = "border", threshold: float = 0.5) -> torch.Tensor:
    """SIR boundary loss: the warped validity mask should be all valid.

    ``MSE(1, m)`` with ``m = warp(mask, flow)`` where values above ``threshold`` count as
    fully valid (set to 1, no gradient); only pixels that clearly sample outside the
    stitched content are penalised, which pushes the rectangle's border outwards onto
    content without fighting bilinear blur at the mask edge.

    Args:
        mask: (B, 1, H, W) in [-1, 1], 1 = valid content.
        flow: (B, 2, H, W), pixels.
    """
    m = warp(mask, flow, padding=padding, check_finite=False, fill=-1.0).float()  # outside = empty
    m = torch.where(m > threshold, torch.ones_like(m), m)
    return (1.0 - m).pow(2).mean()


def flow_laplacian(flow: torch.Tensor) -> torch.Tensor:
    """5-point discrete Laplacian of each channel, (B, C, H, W) -> (B, C, H, W).

    The border is replicate-padded, so on the outermost rows and columns it is the one-sided
    second difference (``f[1] - f[0]`` plus the along-edge terms): every pixel, the border
    band included, is constrained.
    """
    if flow.ndim != 4:
        raise ValueError(f"flow_laplacian expects (B, C, H, W), got {tuple(flow.shape)}")
    f = F.pad(flow, (1, 1, 1, 1), mode="replicate")
    return f[:, :, 1:-1, 2:] + f[:, :, 1:-1, :-2] + f[:, :, 2:, 1:-1] + f[:, :, :-2, 1:-1] - 4 * f[:, :, 1:-1, 1:-1]


def flow_smoothness_loss(flow: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean L1 distance between the Laplacians of ``flow`` and ``target`` (both (B, 2, H, W), px).

    Zero when the decoded flow has the ground truth's curvature, whatever its offset (and,
    away from the outermost rows and columns, where the replicate padding makes the term a
    first difference, whatever its slope): those are the flow MSE's job. A smooth ground
    truth is matched, not flattened, so the term does not bias the decoder towards zero
    motion. High-frequency decoder noise, e.g. checkerboards of the upsampling or ripples at
    the border, is charged in pixels (sum over the two components, mean over pixels).
    """
    if flow.shape != target.shape:
        raise ValueError(f"flow {tuple(flow.shape)} and target {tuple(target.shape)} must have the same shape")
    return (flow_laplacian(flow.float()) - flow_laplacian(target.float())).abs().sum(1).mean()


class PerceptualLoss(torch.nn.Module):
    """VGG16 relu2_2 feature MSE on images in [-1, 1] (mapped to [0, 1], ImageNet-normalised).

    Args:
        weights: ``"imagenet"`` (torchvision's IMAGENET1K_V1, from the local torch hub
            cache or downloaded when online), a path to a ``.pth``/``.safetensors`` file
            with VGG16 (full or ``features``) weights, or ``None`` for random weights
            (tests and smoke runs only).
    """

    def __init__(self, weights: str | os.PathLike | None = "imagenet") -> None:
        super().__init__()
        from torchvision.models.vgg import make_layers

        # VGG16 ("D") up to relu2_2: the same modules and indices as vgg16().features[:9],
        # without building the 120M-parameter classifier.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # random weights (tests) are the same in every run
            net = make_layers([64, 64, "M", 128, 128])
        if weights is not None:
            net.load_state_dict(self._load_state(weights, net))
        net.eval().requires_grad_(False)
        self.features = net
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @staticmethod
    def _load_state(weights: str | os.PathLike, net: torch.nn.Module) -> dict[str, torch.Tensor]:
        if str(weights) == "imagenet":
            cache = Path(torch.hub.get_dir()) / "checkpoints" / _VGG16_FILE
            if cache.is_file():
                path = cache
            else:
                try:
                    from torchvision.models import VGG16_Weights

                    state = VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
                except Exception as exc:  # offline, proxy, ...
                    raise RuntimeError(
                        f"the VGG16 ImageNet weights for the perceptual loss are not in the torch hub cache "
                        f"({cache}) and could not be downloaded ({type(exc).__name__}: {exc}). Download "
                        f"{_VGG16_FILE} once on a machine with internet and either copy it to {cache} or pass its "
                        "path as the perceptual weights (config key loss.vgg_weights); or set the vgg loss weight to 0."
                    ) from exc
                return PerceptualLoss._features_only(state, weights)
        else:
            path = Path(weights)
            if not path.is_file():
                raise FileNotFoundError(f"VGG16 weights file not found: {path}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        return PerceptualLoss._features_only(state, path)

    @staticmethod
    def _features_only(state: Mapping[str, torch.Tensor], source: object) -> dict[str, torch.Tensor]:
        keep = {f"{i}.{p}" for i in (0, 2, 5, 7) for p in ("weight", "bias")}
        out = {}
        for k, v in state.items():
            key = k[len("features.") :] if k.startswith("features.") else k
            if key in keep:
                out[key] = v
        if set(out) != keep:
            raise ValueError(f"{source} does not hold VGG16 conv1_1..conv2_2 weights (missing {sorted(keep - set(out))})")
        return out

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred, target: (B, 3, H, W) in [-1, 1]. Returns a scalar."""
        dtype = self.features[0].weight.dtype

        def feats(x: torch.Tensor) -> torch.Tensor:
            x = ((x.to(dtype) + 1.0) / 2.0 - self.mean.to(dtype)) / self.std.to(dtype)
            return self.features(x)

        return F.mse_loss(feats(pred).float(), feats(target).float())

"""Adaptive Ensemble Strategy (AES): combining the members of a sampled ensemble.

Three rules are offered (see docs/method.md, "Inference"):

* ``"image"`` -- the released rule. Every member's flow warps the input; the result is the
  per-pixel, per-channel **median** of the warped images, except inside a band along the
  image border where the per-pixel **minimum** is used (it suppresses bright/edge leakage
  from members that pull in content from outside the image). The band is 20 px at the
  released 384x512 resolution and scales with the image size (per axis).
* ``"flow"`` -- the median of the member flows (per component), then one warp.
* ``"latent"`` -- the median of the members' x0 latents (per element), decoded once and
  applied with one warp: the fast mode (one VAE decode instead of E; no member flows, so
  no uncertainty map). The pipeline implements it; this module only provides :func:`median`.

The median of an even number of members is the mean of the two middle values (the
``numpy.median`` convention), so 2 members give their mean.

Rounding: the released ``aes.py`` works on the members' saved 8-bit images and truncates
the median to ``uint8`` (``np.median(...).astype(np.uint8)``), where this package keeps
floats and rounds once when an image is written. ``ensemble_images(..., rounding="release")``
reproduces the release (members rounded to 8 bits, median, truncated); the difference is
at most 1/255 per pixel.

This module is pure torch and knows nothing about models.
"""

from __future__ import annotations

import torch

from .constants import ENSEMBLE_MODES

__all__ = [
    "ENSEMBLE_MODES",
    "ENSEMBLE_ROUNDINGS",
    "REFERENCE_BAND",
    "REFERENCE_SIZE",
    "border_band_width",
    "border_band_mask",
    "median",
    "ensemble_images",
    "ensemble_flows",
    "flow_uncertainty",
]

#: How :func:`ensemble_images` rounds: ``"none"`` (float median) or ``"release"`` (8-bit, truncated).
ENSEMBLE_ROUNDINGS = ("none", "release")
#: Border band width (px) of the released rule at :data:`REFERENCE_SIZE`.
REFERENCE_BAND = 20
#: (H, W) at which the released band width was chosen (DIR-D).
REFERENCE_SIZE = (384, 512)


def border_band_width(height: int, width: int, band: float | None = None) -> tuple[int, int]:
    """Width of the minimum band ``(rows, cols)`` in pixels for an ``height x width`` image.

    Args:
        height, width: image size in pixels.
        band: band width in pixels at the reference size 384x512; ``None`` uses the released
            20 px. It is scaled per axis: rows ``round(band * H / 384)``, columns
            ``round(band * W / 512)``. ``0`` disables the band (pure median).

    Returns:
        ``(band_rows, band_cols)``: how many rows at the top and bottom, and columns at
        the left and right, use the minimum. Never more than half the size.

    Example:
        >>> border_band_width(384, 512), border_band_width(768, 512), border_band_width(8, 8, band=0)
        ((20, 20), (40, 20), (0, 0))
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    band = REFERENCE_BAND if band is None else float(band)
    if band < 0:
        raise ValueError(f"border band must be >= 0 px, got {band}")
    rows = int(round(band * height / REFERENCE_SIZE[0]))
    cols = int(round(band * width / REFERENCE_SIZE[1]))
    if band > 0:
        rows, cols = max(rows, 1), max(cols, 1)
    return min(rows, (height + 1) // 2), min(cols, (width + 1) // 2)


def border_band_mask(
    height: int, width: int, band: tuple[int, int] | float | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Bool (H, W), ``True`` inside the border band.

    ``band`` is either ``(rows, cols)`` in pixels of this image, or a reference width passed
    to :func:`border_band_width`.

    Example:
        >>> border_band_mask(4, 5, band=(1, 2)).int().tolist()
        [[1, 1, 1, 1, 1], [1, 1, 0, 1, 1], [1, 1, 0, 1, 1], [1, 1, 1, 1, 1]]
    """
    rows, cols = band if isinstance(band, tuple) else border_band_width(height, width, band)
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    if rows > 0:
        mask[:rows] = True
        mask[height - rows :] = True
    if cols > 0:
        mask[:, :cols] = True
        mask[:, width - cols :] = True
    return mask


def median(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Median along ``dim``; for an even count the mean of the two middle values.

    Example:
        >>> median(torch.tensor([[3.0, 1.0, 2.0], [4.0, 1.0, 2.0]]), dim=0).tolist()
        [3.5, 1.0, 2.0]
    """
    n = x.shape[dim]
    if n == 0:
        raise ValueError("median of an empty ensemble")
    s = x.sort(dim=dim).values
    lo = s.narrow(dim, (n - 1) // 2, 1)
    hi = s.narrow(dim, n // 2, 1)
    return ((lo + hi) / 2).squeeze(dim)


def _check_members(x: torch.Tensor, name: str, channels: int | None = None) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 5:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be (B, E, C, H, W) (batch, ensemble members, ...), got {shape}")
    if channels is not None and x.shape[2] != channels:
        raise ValueError(f"{name} must have {channels} channels (B, E, {channels}, H, W), got {tuple(x.shape)}")
    if x.shape[1] < 1:
        raise ValueError(f"{name} has no ensemble members")


def ensemble_images(
    warped: torch.Tensor, band: tuple[int, int] | float | None = None, rounding: str = "none"
) -> torch.Tensor:
    """The released AES rule on warped member images.

    Args:
        warped: (B, E, C, H, W), the input warped by each of the E member flows (any value
            range; the minimum is taken per channel, so in [-1, 1] or [0, 1] it picks the
            darkest value). ``rounding="release"`` needs [0, 1].
        band: border band, ``(rows, cols)`` in pixels or a reference width (see
            :func:`border_band_width`; ``None`` = released 20 px at 384x512).
        rounding: ``"none"`` (float result) or ``"release"``: members rounded to 8 bits,
            the median truncated to 8 bits, as the released ``aes.py`` (result still in [0, 1]).

    Returns:
        (B, C, H, W): per-pixel median, per-pixel minimum inside the border band.

    Example:
        >>> members = torch.stack([torch.full((1, 3, 3), v) for v in (0.25, 0.5, 0.75)])[None]  # (1, 3, 1, 3, 3)
        >>> ensemble_images(members, band=(1, 1))[0, 0].tolist()  # minimum on the border, median inside
        [[0.25, 0.25, 0.25], [0.25, 0.5, 0.25], [0.25, 0.25, 0.25]]
    """
    _check_members(warped, "warped")
    if rounding not in ENSEMBLE_ROUNDINGS:
        raise ValueError(f"rounding must be one of {ENSEMBLE_ROUNDINGS}, got {rounding!r}")
    h, w = warped.shape[-2:]
    if rounding == "release":
        warped = (warped.float().clamp(0, 1) * 255.0).round()
    med = median(warped, dim=1)
    if warped.shape[1] > 1:
        low = warped.min(dim=1).values
        mask = border_band_mask(h, w, band, device=warped.device)
        med = torch.where(mask, low, med)
    if rounding == "release":
        med = med.floor() / 255.0
    return med


def ensemble_flows(flows: torch.Tensor) -> torch.Tensor:
    """Flow-space AES: per-pixel, per-component median of the member flows.

    Args:
        flows: (B, E, 2, H, W), pixels.

    Returns:
        (B, 2, H, W), pixels.

    Example:
        >>> flows = torch.tensor([1.0, 2.0, 9.0]).view(1, 3, 1, 1, 1).expand(1, 3, 2, 1, 1)
        >>> ensemble_flows(flows).flatten().tolist()
        [2.0, 2.0]
    """
    _check_members(flows, "flows", channels=2)
    return median(flows, dim=1)


def flow_uncertainty(flows: torch.Tensor, center: torch.Tensor | None = None) -> torch.Tensor:
    """Spread of the ensemble: mean end-point distance of the members from ``center``.

    Args:
        flows: (B, E, 2, H, W), pixels.
        center: (B, 2, H, W) pixels; ``None`` uses :func:`ensemble_flows`.

    Returns:
        (B, 1, H, W), pixels (0 where all members agree).

    Example:
        >>> flows = torch.zeros(1, 2, 2, 1, 1)
        >>> flows[0, 1, 0] = 3.0  # two members 3 px apart
        >>> flow_uncertainty(flows).flatten().tolist()  # each is 1.5 px from their median
        [1.5]
    """
    _check_members(flows, "flows", channels=2)
    if center is None:
        center = ensemble_flows(flows)
    dist = torch.linalg.vector_norm((flows - center.unsqueeze(1)).float(), dim=2)  # (B, E, H, W)
    return dist.mean(dim=1, keepdim=False).unsqueeze(1)

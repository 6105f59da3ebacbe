"""The pixel grid and ``grid_sample``'s coordinate normalisation, in one place.

Conventions (see docs/method.md, "Motion representation"):

* Pixel ``(x, y)`` is the centre of column ``x`` and row ``y``; ``x`` runs to the right over
  ``0 .. W-1`` and ``y`` downwards over ``0 .. H-1``.
* ``grid_sample`` with ``align_corners=True`` places pixel ``x`` at ``2 * x / (W - 1) - 1``,
  so the centres of pixels ``0`` and ``W - 1`` are the normalised edges ``-1`` and ``1``.
  A 1-pixel-wide axis (``W - 1 == 0``) divides by 1 instead: any finite scale maps it to
  its single sample.

Every warp of the package (:func:`stablemotion.core.flow.warp`, the strip-wise large-image
warp, the mesh solver) builds its coordinates here.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["normalize_coords", "pixel_grid", "pixel_grid_np", "sample_grid"]


def normalize_coords(coords: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel coordinates along an axis of ``size`` pixels -> ``grid_sample`` coordinates.

    ``x -> 2 * x / (size - 1) - 1`` (``align_corners=True``); ``size == 1`` divides by 1.

    Args:
        coords: any shape, pixels (float).
        size: number of pixels along the axis (W for x, H for y).

    Returns:
        Same shape and dtype, normalised: ``-1`` at pixel 0, ``1`` at pixel ``size - 1``.

    Example:
        >>> normalize_coords(torch.tensor([0.0, 1.5, 3.0]), 4).tolist()
        [-1.0, 0.0, 1.0]
    """
    return 2.0 * coords / max(int(size) - 1, 1) - 1.0


def pixel_grid(
    height: int,
    width: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The pixel coordinates of an ``height x width`` image as a tensor (1, 2, H, W).

    Channel 0 is ``x`` (the column), channel 1 is ``y`` (the row), in pixels, the layout of
    a flow, so ``pixel_grid(h, w) + flow`` is where a backward flow samples.

    Example:
        >>> g = pixel_grid(2, 3)
        >>> tuple(g.shape), g[0, :, 1, 2].tolist()
        ((1, 2, 2, 3), [2.0, 1.0])
    """
    ys = torch.arange(height, device=device, dtype=dtype)
    xs = torch.arange(width, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=0).unsqueeze(0)


def pixel_grid_np(height: int, width: int) -> np.ndarray:
    """The pixel coordinates of an ``height x width`` image as a float64 array (H, W, 2) of (x, y).

    The numpy (on-disk flow) layout of :func:`pixel_grid`.

    Example:
        >>> pixel_grid_np(2, 3)[1, 2].tolist()
        [2.0, 1.0]
    """
    gx, gy = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    return np.stack((gx, gy), axis=-1)


def sample_grid(flow: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised sampling grid (B, H, W, 2) for ``grid_sample`` from a backward pixel flow.

    Args:
        flow: (B, 2, H, W), pixels (channel 0 = u, channel 1 = v).
        dtype: float64 keeps the coordinate round trip within ~1e-15 px; float32 ~1e-6.

    Returns:
        (B, H, W, 2) in ``dtype``: the normalised ``(x, y)`` of ``p + flow(p)``.

    Example:
        >>> sample_grid(torch.zeros(1, 2, 3, 3))[0, :, :, 0].tolist()
        [[-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0]]
    """
    _, _, h, w = flow.shape
    coords = pixel_grid(h, w, flow.device, dtype) + flow.to(dtype)
    return torch.stack((normalize_coords(coords[:, 0], w), normalize_coords(coords[:, 1], h)), dim=-1)

"""Geometry shared by the synthetic-sample generators: flow inversion, resampling, the pixel
grid, rotation matrices."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from ...core.flow import warp
from ...core.grid import pixel_grid_np as pixel_grid  # the one pixel grid, (H, W, 2) (x, y)

__all__ = ["invert_flow", "remap", "pixel_grid", "rotations"]


def invert_flow(
    flow: torch.Tensor,
    iterations: int = 200,
    tolerance: float = 1e-4,
    damping: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert a smooth backward flow by damped fixed-point iteration.

    ``flow`` maps output pixels to input pixels, ``p -> p + f(p)``. The inverse ``g``
    maps input pixels back, ``q -> q + g(q)``, so that ``g(q) = -f(q + g(q))``; it
    exists where the map is one-to-one (``|grad f| < 1`` guarantees convergence).
    Outside the image ``f`` is extended with border values.

    Args:
        flow: (2, H, W) or (B, 2, H, W), pixels; computed in float64.
        iterations: maximum number of iterations.
        tolerance: stop when no pixel moves more than this (pixels).
        damping: step size in (0, 1]; 1 is the plain fixed point, smaller is more robust.

    Returns:
        ``(g, residual)``: g like ``flow`` (float64), pixels; residual (..., 1, H, W) =
        ``|g(q) + f(q + g(q))|`` in pixels (near 0 where the inverse is exact).

    Example:
        >>> import torch
        >>> g, residual = invert_flow(torch.full((2, 8, 8), 1.5))
        >>> round(float(g[0, 4, 4]), 3), float(residual.max()) < 1e-3
        (-1.5, True)
    """
    if not 0 < damping <= 1:
        raise ValueError(f"damping must be in (0, 1], got {damping}")
    f = flow.double()
    g = -f.clone()
    for _ in range(iterations):
        target = -warp(f, g, padding="border")
        step = target - g
        g = g + damping * step
        if float(step.abs().max()) * damping < tolerance:
            break
    residual = (g + warp(f, g, padding="border")).norm(dim=-3, keepdim=True)
    return g, residual


def remap(image: np.ndarray, coords: np.ndarray, border: int) -> np.ndarray:
    """Sample ``image`` (uint8 (H, W, C)) at ``coords`` (H', W', 2) pixels, bicubic, float32 out."""
    mx = np.ascontiguousarray(coords[..., 0], dtype=np.float32)
    my = np.ascontiguousarray(coords[..., 1], dtype=np.float32)
    out = cv2.remap(image.astype(np.float32), mx, my, interpolation=cv2.INTER_CUBIC, borderMode=border)
    return out.reshape(*coords.shape[:2], -1)


def rotations(rvec: np.ndarray) -> np.ndarray:
    """Rotation matrices (N, 3, 3) of rotation vectors (N, 3), radians (Rodrigues)."""
    theta = np.linalg.norm(rvec, axis=1)[:, None, None]
    k = rvec / np.maximum(theta[:, :, 0], 1e-12)
    cross = np.zeros((len(rvec), 3, 3))
    cross[:, 0, 1], cross[:, 0, 2], cross[:, 1, 2] = -k[:, 2], k[:, 1], -k[:, 0]
    cross = cross - cross.transpose(0, 2, 1)
    return np.eye(3)[None] + np.sin(theta) * cross + (1 - np.cos(theta)) * (cross @ cross)


"""The shape and value checks of a flow, shared by the flow, mesh and colour modules.

A flow is a floating-point tensor ``(B, 2, H, W)`` (or ``(2, H, W)``) in **pixels**, or an
``(H, W, 2)`` numpy array (the on-disk layout).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["as_batched_flow", "check_flow"]


def as_batched_flow(flow: torch.Tensor, name: str = "flow") -> tuple[torch.Tensor, bool]:
    """A (B, 2, H, W) or (2, H, W) float flow -> ``(flow (B, 2, H, W), whether a batch axis was added)``.

    Raises ``TypeError`` / ``ValueError`` (naming ``name``) for anything else.

    Example:
        >>> f, added = as_batched_flow(torch.zeros(2, 3, 4))
        >>> tuple(f.shape), added
        ((1, 2, 3, 4), True)
    """
    if not isinstance(flow, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (B, 2, H, W) in pixels, got {type(flow).__name__}")
    squeeze = flow.ndim == 3
    if squeeze:
        flow = flow.unsqueeze(0)
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"{name} must have shape (B, 2, H, W) or (2, H, W) in pixels, got {tuple(flow.shape)}")
    if not flow.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {flow.dtype}")
    return flow, squeeze


def check_flow(flow: torch.Tensor | np.ndarray, name: str = "flow") -> None:
    """Raise ``ValueError`` unless ``flow`` is a finite (B, 2, H, W) / (2, H, W) tensor or (H, W, 2) array.

    Example:
        >>> check_flow(np.zeros((3, 4, 2)))
        >>> check_flow(torch.full((2, 3, 4), float("nan")))
        Traceback (most recent call last):
        ...
        ValueError: flow contains NaN or infinite values (24 entries)
    """
    if isinstance(flow, np.ndarray):
        if flow.ndim != 3 or flow.shape[2] != 2:
            raise ValueError(f"{name} array must have shape (H, W, 2), got {flow.shape}")
        if not np.isfinite(flow).all():
            raise ValueError(f"{name} contains NaN or infinite values ({int((~np.isfinite(flow)).sum())} entries)")
        return
    flow, _ = as_batched_flow(flow, name)
    finite = torch.isfinite(flow)
    if not bool(finite.all()):
        raise ValueError(f"{name} contains NaN or infinite values ({int((~finite).sum())} entries)")

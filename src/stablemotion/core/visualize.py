"""Pictures of inference outputs (kept apart from inference): scalar maps as colours.

Flow colours are :func:`stablemotion.core.flow.flow_to_color` (the Middlebury wheel).
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["scalar_to_color"]


def scalar_to_color(values: np.ndarray, top: float | None = None) -> tuple[np.ndarray, float]:
    """A non-negative (H, W) map (e.g. the ensemble spread, pixels) -> inferno colours.

    Args:
        values: (H, W) float; NaN counts as 0.
        top: the value shown brightest; ``None`` = the map's maximum.

    Returns:
        ``(uint8 (H, W, 3) RGB, top)``.
    """
    values = np.nan_to_num(np.asarray(values, dtype=np.float32))
    if values.ndim != 2:
        raise ValueError(f"scalar_to_color expects an (H, W) map, got shape {values.shape}")
    top = float(values.max(initial=0.0)) if top is None else float(top)
    scaled = np.clip(values / top, 0, 1) if top > 0 else np.zeros_like(values)
    bgr = cv2.applyColorMap((scaled * 255).round().astype(np.uint8), cv2.COLORMAP_INFERNO)
    return np.ascontiguousarray(bgr[..., ::-1]), top

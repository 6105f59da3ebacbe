"""Pictures of inference outputs (kept apart from inference): flows and scalar maps as colours.

Flow colours use the Middlebury wheel (:func:`flow_to_color`, also importable from
:mod:`stablemotion.core.flow`); scalar maps use OpenCV's inferno map (:func:`scalar_to_color`).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from ..io.flow_files import to_hw2_array
from .flow_checks import check_flow

__all__ = ["make_colorwheel", "flow_to_color", "scalar_to_color"]


def make_colorwheel() -> np.ndarray:
    """The Middlebury / Baker et al. colour wheel (55, 3) in [0, 255].

    Segments red->yellow (15), yellow->green (6), green->cyan (4), cyan->blue (11),
    blue->magenta (13), magenta->red (6), the convention of the ``flow_vis`` package.

    Example:
        >>> wheel = make_colorwheel()
        >>> wheel.shape, wheel[0].tolist()
        ((55, 3), [255.0, 0.0, 0.0])
    """
    segments = ((15, (255, 0, 0), (255, 255, 0)), (6, (255, 255, 0), (0, 255, 0)), (4, (0, 255, 0), (0, 255, 255)),
                (11, (0, 255, 255), (0, 0, 255)), (13, (0, 0, 255), (255, 0, 255)), (6, (255, 0, 255), (255, 0, 0)))
    wheel = []
    for n, start, end in segments:
        i = np.arange(n)
        seg = np.empty((n, 3))
        for c in range(3):
            if start[c] == end[c]:
                seg[:, c] = start[c]
            elif end[c] > start[c]:
                seg[:, c] = np.floor(255 * i / n)
            else:
                seg[:, c] = 255 - np.floor(255 * i / n)
        wheel.append(seg)
    return np.concatenate(wheel, axis=0)


_WHEEL = make_colorwheel()


def flow_to_color(
    flow: np.ndarray | torch.Tensor,
    max_radius: float | None = None,
    bgr: bool = False,
) -> np.ndarray:
    """Colour-code a flow with the Middlebury wheel (hue = direction, saturation = magnitude).

    Args:
        flow: (H, W, 2) array or (2, H, W) tensor, pixels.
        max_radius: magnitude drawn at full saturation; ``None`` uses the flow's own maximum
            (as ``flow_vis``). A fixed value makes pictures of different flows comparable;
            longer vectors are drawn darker (x0.75).
        bgr: return BGR (for OpenCV) instead of RGB.

    Returns:
        uint8 image (H, W, 3).

    Example:
        >>> flow = torch.zeros(2, 1, 2)
        >>> flow[0, 0, 1] = 3.0  # one pixel still, one moving right
        >>> flow_to_color(flow).tolist()  # still is white, rightwards is red
        [[[255, 255, 255], [255, 0, 0]]]
        >>> flow_to_color(flow, bgr=True)[0, 1].tolist()
        [0, 0, 255]
    """
    flow = to_hw2_array(flow).astype(np.float64)
    check_flow(flow)
    u, v = flow[..., 0], flow[..., 1]
    rad = np.sqrt(u * u + v * v)
    if max_radius is None:
        max_radius = float(rad.max(initial=0.0))
    elif not (math.isfinite(max_radius) and max_radius > 0):
        raise ValueError(f"max_radius must be a finite number > 0 (pixels), got {max_radius}")
    eps = 1e-5
    u, v = u / (max_radius + eps), v / (max_radius + eps)
    rad = np.sqrt(u * u + v * v)
    ncols = _WHEEL.shape[0]
    angle = np.arctan2(-v, -u) / math.pi
    fk = (angle + 1) / 2 * (ncols - 1)
    k0 = np.floor(fk).astype(np.int64)
    k1 = k0 + 1
    k1[k1 == ncols] = 0
    f = fk - k0
    out = np.zeros((*u.shape, 3), np.uint8)
    inside = rad <= 1
    for c in range(3):
        col = (1 - f) * _WHEEL[k0, c] / 255.0 + f * _WHEEL[k1, c] / 255.0
        col = np.where(inside, 1 - rad * (1 - col), col * 0.75)
        out[..., 2 - c if bgr else c] = np.floor(255 * col).astype(np.uint8)
    return out


def scalar_to_color(values: np.ndarray, top: float | None = None) -> tuple[np.ndarray, float]:
    """A non-negative (H, W) map (e.g. the ensemble spread, pixels) -> inferno colours.

    Args:
        values: (H, W) float; NaN counts as 0.
        top: the value shown brightest; ``None`` = the map's maximum.

    Returns:
        ``(uint8 (H, W, 3) RGB, top)``.

    Example:
        >>> colours, top = scalar_to_color(np.array([[0.0, 1.0, np.nan]]), top=2.0)
        >>> colours.shape, top, colours[0, 0].tolist() == colours[0, 2].tolist()  # NaN is drawn as 0
        ((1, 3, 3), 2.0, True)
    """
    values = np.nan_to_num(np.asarray(values, dtype=np.float32))
    if values.ndim != 2:
        raise ValueError(f"scalar_to_color expects an (H, W) map, got shape {values.shape}")
    top = float(values.max(initial=0.0)) if top is None else float(top)
    scaled = np.clip(values / top, 0, 1) if top > 0 else np.zeros_like(values)
    bgr = cv2.applyColorMap((scaled * 255).round().astype(np.uint8), cv2.COLORMAP_INFERNO)
    return np.ascontiguousarray(bgr[..., ::-1]), top

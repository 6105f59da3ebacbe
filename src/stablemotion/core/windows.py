"""Overlapping windows along the long side of a wide (or tall) image, and the blend of their flows.

A network trained at one aspect ratio (the SIR mini at 3:4) sees a 4:1 panorama squeezed to
its processing size: faces shear and lines bend. Cut instead into windows of the network's own
aspect ratio that overlap along the long side, the panorama is seen at its true shape; the
windows' flows are blended with weights that fall linearly to their cut edges
(:func:`blend_window_flows`), so neighbouring estimates meet without seams.

Example:
    >>> from stablemotion.core.windows import window_layout
    >>> layout = window_layout((400, 1600), (96, 128))
    >>> layout.axis, layout.length, layout.starts
    (1, 533, (0, 213, 427, 640, 854, 1067))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .flow import resize_flow

__all__ = ["WINDOW_ASPECT_TOLERANCE", "WINDOW_OVERLAP", "WindowLayout", "blend_window_flows", "crop_windows",
           "window_layout", "window_weights"]

#: Windows are used only when the image is this many times longer (relative to its short side)
#: than the network's processing size; within it the image is resized as a whole.
WINDOW_ASPECT_TOLERANCE = 1.4
#: Share of a window that its neighbour also covers.
WINDOW_OVERLAP = 0.5


@dataclass(frozen=True)
class WindowLayout:
    """Where the windows lie: along ``axis`` (1 = columns of a wide image, 0 = rows of a tall one),
    each ``length`` pixels long, starting at ``starts``; the image is (H, W) ``size``."""

    axis: int
    length: int
    starts: tuple[int, ...]
    size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.starts)


def window_layout(size: tuple[int, int], processing: tuple[int, int], overlap: float = WINDOW_OVERLAP,
                  tolerance: float = WINDOW_ASPECT_TOLERANCE) -> WindowLayout | None:
    """The windows of an image of ``size`` (H, W) for a network run at ``processing`` (h, w), or
    ``None`` when the image's aspect ratio is within ``tolerance`` of the network's (then it is
    resized as a whole).

    Each window has the network's aspect ratio and the image's full short side; consecutive
    windows share at least ``overlap`` of their length, the first and last touch the image's ends.

    Example:
        >>> window_layout((300, 400), (96, 128)) is None   # 4:3 like the network: no windows
        True
        >>> window_layout((1200, 300), (96, 128)).starts   # a tall 4:1 image: windows down the rows
        (0, 108, 217, 325, 433, 542, 650, 758, 867, 975)
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    h, w = size
    ph, pw = processing
    ratio = (w / h) / (pw / ph)  # > 1: the image is wider than the network's view
    if max(ratio, 1.0 / ratio) <= tolerance:
        return None
    axis, short, long_side = (1, h, w) if ratio > 1 else (0, w, h)
    length = min(long_side, max(1, round(short * (pw / ph if axis == 1 else ph / pw))))
    count = max(1, math.ceil((long_side - length) / (length * (1.0 - overlap)))) + 1
    starts = tuple(round(k * (long_side - length) / (count - 1)) for k in range(count))
    return WindowLayout(axis=axis, length=length, starts=starts, size=(h, w))


def crop_windows(tensor: torch.Tensor, layout: WindowLayout) -> torch.Tensor:
    """The windows of ``tensor`` (B, C, H, W) as one batch (B x N, C, ...), image-major (row
    ``i * N + k`` is window ``k`` of image ``i``).

    Example:
        >>> layout = window_layout((4, 16), (4, 4))
        >>> crop_windows(torch.zeros(2, 3, 4, 16), layout).shape
        torch.Size([14, 3, 4, 4])
    """
    dim = 3 if layout.axis == 1 else 2
    parts = [tensor.narrow(dim, start, layout.length) for start in layout.starts]
    return torch.stack(parts, dim=1).flatten(0, 1)


def window_weights(layout: WindowLayout, index: int) -> torch.Tensor:
    """Blend weights along window ``index``: (length,), rising linearly from its cut edges and flat
    at the image's own ends (the first window's start, the last window's end).

    Example:
        >>> layout = window_layout((4, 16), (4, 4), overlap=0.5)
        >>> window_weights(layout, 0).tolist(), window_weights(layout, 3).tolist()
        ([2.0, 2.0, 2.0, 1.0], [1.0, 2.0, 2.0, 1.0])
    """
    n = layout.length
    pos = torch.arange(n, dtype=torch.float32)
    ramp = torch.minimum(pos + 1, n - pos)
    top = float(ramp.max())
    if index == 0:
        ramp[: (n + 1) // 2] = top
    if index == len(layout) - 1:
        ramp[n // 2:] = top
    return ramp


def blend_window_flows(flows: torch.Tensor, layout: WindowLayout, size: tuple[int, int]) -> torch.Tensor:
    """One flow of the whole image from its windows' flows.

    Args:
        flows: (B x N, C, h, w), the N windows' flows of each of B images (:func:`crop_windows`'
            order), pixels at the network's resolution (C = 2 for flows; extra leading
            dimensions may be flattened into B).
        layout: the windows (:func:`window_layout`).
        size: (H', W') of the blended flow: the whole image at the flows' scale, e.g. the image's
            size times ``h / window height``.

    Returns:
        (B, C, H', W') flow, pixels at ``size``: each window resized to its span (magnitudes
        scaled) and the windows averaged with :func:`window_weights`.

    Example:
        >>> layout = window_layout((8, 32), (8, 8))
        >>> flows = torch.ones(len(layout), 2, 8, 8)    # every window: 1 px right and down
        >>> blended = blend_window_flows(flows, layout, (8, 32))
        >>> tuple(blended.shape), round(float(blended.min()), 4), round(float(blended.max()), 4)
        ((1, 2, 8, 32), 1.0, 1.0)
    """
    n = len(layout)
    if flows.ndim != 4 or flows.shape[0] % n:
        raise ValueError(f"flows must be (B x {n} windows, C, h, w), got {tuple(flows.shape)}")
    b = flows.shape[0] // n
    scale = size[1 - layout.axis] / layout.size[1 - layout.axis]  # blended pixels per image pixel
    acc = flows.new_zeros((b, flows.shape[1], *size), dtype=torch.float32)
    total = flows.new_zeros(size[layout.axis], dtype=torch.float32)
    windows = flows.float().unflatten(0, (b, n))
    shape = (1, 1, 1, -1) if layout.axis == 1 else (1, 1, -1, 1)  # weights along the long side
    for k, start in enumerate(layout.starts):
        lo = round(start * scale)
        hi = min(size[layout.axis], max(lo + 1, round((start + layout.length) * scale)))
        span = (size[0], hi - lo) if layout.axis == 1 else (hi - lo, size[1])
        part = resize_flow(windows[:, k], span) if tuple(windows.shape[-2:]) != span else windows[:, k]
        weight = torch.nn.functional.interpolate(window_weights(layout, k)[None, None], size=hi - lo,
                                                 mode="linear", align_corners=False)[0, 0]
        acc.narrow(layout.axis + 2, lo, hi - lo).add_(part * weight.view(shape))
        total[lo:hi] += weight
    return acc / total.clamp_min(1e-6).view(shape)

"""Rectify an image of any size within bounded memory: the working size and the strip warp.

The network runs at a *working size* of at most ``max_work_pixels`` pixels (the input's
aspect ratio kept); its flow is upsampled to the input's size and the input is warped at
full size a strip of rows at a time, so the float work never holds more than a strip plus
the band of rows its flow reaches. Used by the web app and by ``stablemotion rectify``.

Example:
    >>> from stablemotion.core.large_image import working_size
    >>> working_size(4000, 6000, 1024 * 1024)
    (836, 1254)
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .flow import RELEASED_FLOW_RESIZE, check_flow, flow_to_color, resize_flow
from .grid import normalize_coords
from .image_processing import mask_valid
from .visualize import scalar_to_color

__all__ = [
    "MAX_WORK_PIXELS", "MIN_WORK_PIXELS", "STRIP_PIXELS", "CappedResult", "StripFlow", "flow_colours", "memory_bound",
    "rectify_capped", "shrink_mask", "strips", "uncertainty_colours", "upsample_flow", "upsample_spread",
    "warp_strips", "working_size",
]

#: Default cap on the pixels the pipeline works at (1024 x 1024); larger images are shrunk to it.
MAX_WORK_PIXELS = 1024 * 1024
#: Smallest accepted ``max_work_pixels`` (64 x 64).
MIN_WORK_PIXELS = 64 * 64
#: Pixels per strip of the full-size warp and colouring (64 rows of a 4096 px wide image).
STRIP_PIXELS = 1 << 18


def working_size(height: int, width: int, max_pixels: int) -> tuple[int, int]:
    """The (H, W) the pipeline runs at: the input's own size within ``max_pixels``, else the
    largest size with the input's aspect ratio (rounded down) that fits in it.

    Example:
        >>> working_size(3000, 4000, 1_000_000), working_size(300, 400, 1_000_000)
        ((866, 1154), (300, 400))
    """
    if height * width <= max_pixels:
        return height, width
    scale = math.sqrt(max_pixels / (height * width))
    return max(1, math.floor(height * scale)), max(1, math.floor(width * scale))


def memory_bound(height: int, width: int, ensemble: int, max_work_pixels: int = MAX_WORK_PIXELS) -> int:
    """Documented upper estimate of one request's peak memory above the loaded model, bytes (CPU, float32).

    ``100 B x work pixels x ensemble`` (the pipeline's member flows, warps and median at the
    working size; measured ~70 B) ``+ 60 B x H x W`` (decoded image and mask, mask
    derivation, the full-size flow and its upsampling, the output; measured ~30 B) ``+ 128 MiB``
    (strips, decoding and PNG encoding buffers, allocator slack; measured 60-100 MB). Not included: the network's own activations
    for the ensemble at its processing resolution, which do not depend on the image size.
    With the default limits (4096 x 4096, ensemble 8, 1 Mpx) this is 1.8 GiB; the measured
    peak of such a request with the bundled SIR model is 0.52-0.64 GB (README, "Web app").

    Example:
        >>> round(memory_bound(4096, 4096, 8) / 2**30, 2)  # GiB at the default limits
        1.84
    """
    work = min(height * width, max_work_pixels)
    return 100 * work * ensemble + 60 * height * width + 128 * 2**20


def strips(height: int, width: int, strip_pixels: int | None = None) -> Iterator[tuple[int, int]]:
    """Row ranges [r0, r1) of about ``strip_pixels`` (default :data:`STRIP_PIXELS`) pixels, at least
    2 rows each, covering ``height``.

    Example:
        >>> list(strips(5, 4, strip_pixels=8))
        [(0, 2), (2, 4), (4, 5)]
    """
    rows = max(2, (STRIP_PIXELS if strip_pixels is None else strip_pixels) // max(width, 1))
    for r0 in range(0, height, rows):
        yield r0, min(height, r0 + rows)


def pipeline_config(pipe: Any, key: str, default: Any) -> Any:
    """A pipeline config value (``default`` for test doubles and pipelines without a config)."""
    config = getattr(pipe, "config", None)
    return config.get(key, default) if isinstance(config, Mapping) else default


def shrink_mask(mask: np.ndarray, size: tuple[int, int], encoding: str) -> np.ndarray:
    """A uint8 mask (H, W[, 3]) shrunk to ``size`` (H', W') by area averaging.

    ``"binary"`` (the pipeline's default encoding): thresholded as the pipeline reads it
    (channel mean >= 0.5) before and after the shrink, as the pipeline's own resize does;
    ``"as_read"``: the grey levels are kept (the pipeline takes them as they are).

    Example:
        >>> mask = np.array([[255, 255, 0, 0], [255, 255, 0, 100]], np.uint8)
        >>> shrink_mask(mask, (1, 2), "binary").tolist(), shrink_mask(mask, (1, 2), "as_read").tolist()
        ([[255, 0]], [[255, 25]])
    """
    if encoding == "binary":
        mask = mask_valid(mask).astype(np.uint8) * np.uint8(255)  # the package's one mask rule
    small = cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    if encoding == "binary":
        small = np.where(small >= 128, np.uint8(255), np.uint8(0))
    return small


class StripFlow:
    """A full-size (H, W, 2) float32 flow in pixels, kept as the network's (h, w, 2) estimate and
    upsampled a strip of rows at a time (the pipeline's rule, :func:`upsample_flow`), so a
    100-megapixel image never holds its 800 MB flow: ``flow[r0:r1]`` gives rows r0..r1 as an
    array, ``np.asarray(flow)`` the whole flow (only when asked for, e.g. ``--save-flow``).

    Example:
        >>> small = np.ones((2, 2, 2), np.float32)      # 1 px at 2 x 2 ...
        >>> flow = StripFlow(small, (4, 6))
        >>> flow.shape, flow[1:3].shape, flow[0, 0].tolist()   # ... is 2 px down and 3 px across at 4 x 6
        ((4, 6, 2), (2, 6, 2), [3.0, 2.0])
        >>> bool(np.allclose(np.asarray(flow), upsample_flow(small, (4, 6))))
        True
    """

    ndim = 3
    dtype = np.dtype(np.float32)

    def __init__(self, small: np.ndarray, size: tuple[int, int]) -> None:
        small = np.ascontiguousarray(small, dtype=np.float32)
        if small.ndim != 3 or small.shape[2] != 2:
            raise ValueError(f"StripFlow needs an (h, w, 2) flow, got {small.shape}")
        self.small = small
        self.size = (int(size[0]), int(size[1]))
        self.shape = (*self.size, 2)
        self._columns: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.size[0]

    def columns(self) -> torch.Tensor:
        """The flow upsampled along the rows' length only: (2, h, W), magnitudes at full size."""
        if self._columns is None:
            h, w = self.small.shape[:2]
            height, width = self.size
            t = torch.from_numpy(self.small).permute(2, 0, 1)[None]
            if w > 1:
                t = F.interpolate(t, size=(h, width), mode="bilinear", align_corners=True)
            else:
                t = t.expand(-1, -1, -1, width)
            self._columns = t[0] * torch.tensor([width / w, height / h]).view(2, 1, 1)
        return self._columns

    def rows(self, r0: int, r1: int) -> np.ndarray:
        """Rows [r0, r1) of the full-size flow: (r1 - r0, W, 2) float32, pixels."""
        cols = self.columns()
        h, height = cols.shape[1], self.size[0]
        ys = torch.arange(r0, r1, dtype=torch.float64) * ((h - 1) / (height - 1) if height > 1 else 0.0)
        y0 = ys.floor().clamp_(0, h - 1).long()
        y1 = (y0 + 1).clamp_(max=h - 1)
        t = (ys - y0).float().view(1, -1, 1)
        part = cols[:, y0] * (1 - t) + cols[:, y1] * t  # (2, R, W)
        return part.permute(1, 2, 0).contiguous().numpy()

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice) and key.step in (None, 1):
            r0, r1, _ = key.indices(self.size[0])
            return self.rows(r0, max(r0, r1))
        return self.__array__()[key]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.empty(self.shape, np.float32)
        for r0, r1 in strips(*self.size):
            out[r0:r1] = self.rows(r0, r1)
        return out if dtype is None else out.astype(dtype)


def upsample_flow(flow: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w, 2) flow in pixels of (h, w) -> (H, W, 2) float32 in pixels of ``size``, the pipeline's rule.

    Example:
        >>> full = upsample_flow(np.ones((2, 2, 2), np.float32), (4, 4))  # 1 px at 2x2 is 2 px at 4x4
        >>> full.shape, full[0, 0].tolist()
        ((4, 4, 2), [2.0, 2.0])
    """
    small = torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float32)).permute(2, 0, 1)
    full = resize_flow(small, size, **RELEASED_FLOW_RESIZE)  # (2, H, W)
    out = np.empty((*size, 2), np.float32)
    for r0, r1 in strips(*size):  # (2, H, W) -> (H, W, 2) without a second full-size temporary
        out[r0:r1] = full[:, r0:r1].permute(1, 2, 0).numpy()
    return out


def warp_strips(image: np.ndarray, flow: np.ndarray | StripFlow, padding: str,
                strip_pixels: int | None = None) -> np.ndarray:
    """Backward-warp a uint8 or uint16 (H, W, C) image with an (H, W, 2) pixel flow (an array or a
    :class:`StripFlow`), a strip of rows at a time; the output has the input's dtype (16-bit stays 16-bit).

    The same result as the pipeline's ``warp`` of the image in [0, 1] (bilinear,
    ``align_corners=True``, ``padding``), clamped and rounded to the input's dtype, up to float32
    rounding of the sample coordinates. Each strip samples only the band of input rows its
    flow reaches (all rows for ``"reflection"`` padding when it reaches outside), so the
    float work is the strip plus that band, not the whole image.

    Example:
        >>> image = (np.arange(18, dtype=np.uint8) * 10).reshape(2, 3, 3)
        >>> flow = np.zeros((2, 3, 2), np.float32)
        >>> flow[..., 0] = 1.0  # sample one pixel to the right
        >>> image[..., 0].tolist(), warp_strips(image, flow, "border")[..., 0].tolist()
        ([[0, 30, 60], [90, 120, 150]], [[30, 60, 60], [120, 150, 150]])
    """
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"warp_strips takes a uint8 or uint16 image, got {image.dtype}")
    top = 255.0 if image.dtype == np.uint8 else 65535.0
    h, w = image.shape[:2]
    out = np.empty_like(image)
    xs = torch.arange(w, dtype=torch.float32)
    for r0, r1 in strips(h, w, strip_pixels):
        f = torch.from_numpy(flow[r0:r1])  # (R, W, 2)
        check_flow(f.permute(2, 0, 1))
        x = xs + f[..., 0]
        y = torch.arange(r0, r1, dtype=torch.float32)[:, None] + f[..., 1]
        low, high = float(y.min()), float(y.max())
        if padding == "reflection" and (low < 0 or high > h - 1):
            s0, s1 = 0, h  # reflected samples may land anywhere
        else:  # bilinear reads rows floor(y) and floor(y) + 1; rows outside [0, H) are padding anyway
            s0 = min(max(math.floor(low), 0), h - 1)
            s1 = min(max(math.floor(high) + 2, s0 + 1), h)
            if s1 - s0 < 2 <= h:
                s0, s1 = (s0, s0 + 2) if s0 + 2 <= h else (h - 2, h)
        band = torch.from_numpy(image[s0:s1].astype(np.float32)).permute(2, 0, 1).unsqueeze(0).div_(top)
        grid = torch.stack((normalize_coords(x, w), normalize_coords(y - s0, s1 - s0)), dim=-1).unsqueeze(0)
        warped = F.grid_sample(band, grid, mode="bilinear", padding_mode=padding, align_corners=True)
        out[r0:r1] = warped[0].clamp_(0, 1).mul_(top).round_().permute(1, 2, 0).numpy().astype(image.dtype)
    return out


def flow_colours(flow: np.ndarray) -> tuple[np.ndarray, float]:
    """(H, W, 2) flow -> its Middlebury colours (as the pipeline's ``flow_colored``), a strip at a time,
    and its largest magnitude in pixels.

    Example:
        >>> colours, top = flow_colours(np.array([[[0.0, 0.0], [3.0, 0.0]]], np.float32))
        >>> colours.tolist(), top
        ([[[255, 255, 255], [255, 0, 0]]], 3.0)
    """
    h, w = flow.shape[:2]
    top = 0.0
    for r0, r1 in strips(h, w):
        f = flow[r0:r1].astype(np.float64)
        top = max(top, float(np.sqrt(f[..., 0] ** 2 + f[..., 1] ** 2).max(initial=0.0)))
    out = np.empty((h, w, 3), np.uint8)
    for r0, r1 in strips(h, w):
        out[r0:r1] = flow_to_color(flow[r0:r1], max_radius=top if top > 0 else None)
    return out, top


def uncertainty_colours(spread: np.ndarray) -> tuple[np.ndarray, float]:
    """(H, W) spread in px -> inferno colours scaled to its maximum (RGB uint8), and that maximum.

    Example:
        >>> colours, top = uncertainty_colours(np.array([[0.0, 2.0]]))
        >>> colours.shape, top
        ((1, 2, 3), 2.0)
    """
    top = float(spread.max(initial=0.0))
    h, w = spread.shape
    out = np.empty((h, w, 3), np.uint8)
    for r0, r1 in strips(h, w):
        out[r0:r1] = scalar_to_color(spread[r0:r1], top)[0]
    return out, top


def upsample_spread(spread: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) ensemble spread in pixels of (h, w) -> (H, W) in pixels of ``size`` (bilinear, as the flow).

    Example:
        >>> upsample_spread(np.ones((2, 2), np.float32), (4, 4))[0].tolist()  # 1 px at 2x2 is 2 px at 4x4
        [2.0, 2.0, 2.0, 2.0]
    """
    h, w = spread.shape
    scale = (size[0] / h + size[1] / w) / 2.0  # the aspect ratio is kept: both nearly equal
    small = torch.from_numpy(np.ascontiguousarray(spread, dtype=np.float32))[None, None]
    full = F.interpolate(small, size=size, mode="bilinear", align_corners=True)[0, 0]
    return full.mul_(scale).numpy()


@dataclass
class CappedResult:
    """What :func:`rectify_capped` returns, all at the input's full size (H, W).

    Attributes:
        image: (H, W, 3) uint8, the rectified image.
        flow: (H, W, 2) float32, backward flow in pixels of the input: an array, or for an image
            larger than the working size a :class:`StripFlow` (rows on demand; ``np.asarray`` for all).
        flow_colours: (H, W, 3) uint8, the flow's Middlebury colours.
        flow_max: largest flow magnitude, pixels.
        spread: (H, W) float32 ensemble spread in pixels, or ``None`` (no ensemble).
        work_size: the (H, W) the network ran at.
        seconds: wall time of the inference and the full-size warp.
    """

    image: np.ndarray
    flow: np.ndarray | StripFlow
    flow_colours: np.ndarray
    flow_max: float
    spread: np.ndarray | None
    work_size: tuple[int, int]
    seconds: float


def rectify_capped(
    pipe: Any,
    image: np.ndarray,
    mask: np.ndarray | None,
    padding: str,
    max_work_pixels: int = MAX_WORK_PIXELS,
    warp_image: np.ndarray | None = None,
    **pipe_kwargs: Any,
) -> CappedResult:
    """Rectify a uint8 (H, W, 3) image with ``pipe``, running the network at :func:`working_size`.

    Images within ``max_work_pixels`` run as they are (the pipeline's own warp); larger ones
    are shrunk by area averaging (the mask as the pipeline reads it), the flow is upsampled
    with the pipeline's rule and the image warped at full size in strips (``padding``: the
    task's warp padding). ``pipe_kwargs`` go to the pipeline call (``generator``, ``task``,
    ``num_inference_steps``, ...); ``output_type="np"`` is set here. ``warp_image``: the image to
    warp at full size instead of ``image`` (the same picture at another bit depth, uint16 (H, W, C):
    a 16-bit input gives a 16-bit output, warped with the ensemble flow).

    Example:
        >>> import numpy as np
        >>> from stablemotion.model.tiny import tiny_pipeline
        >>> pipe = tiny_pipeline("rsc")
        >>> out = rectify_capped(pipe, np.zeros((80, 120, 3), np.uint8), None, "zeros", max_work_pixels=64 * 64)
        >>> out.image.shape, out.flow.shape, out.work_size
        ((80, 120, 3), (80, 120, 2), (52, 78))
    """
    h, w = image.shape[:2]
    if warp_image is not None and warp_image.shape[:2] != (h, w):
        raise ValueError(f"warp_image is {warp_image.shape[1]}x{warp_image.shape[0]} px but the image is {w}x{h} px")
    work = working_size(h, w, max_work_pixels)
    capped = work != (h, w)
    kwargs = dict(pipe_kwargs)
    t0 = time.perf_counter()
    if capped:
        # Area averaging on uint8 (not the pipeline's float resize_image): a float copy of a
        # 4096 x 4096 image alone would take 200 MB.
        work_image = cv2.resize(image, (work[1], work[0]), interpolation=cv2.INTER_AREA)
        work_mask = None if mask is None else shrink_mask(mask, work, pipeline_config(pipe, "mask_encoding", "binary"))
        if pipeline_config(pipe, "default_ensemble_mode", None) == "image" and "ensemble_mode" not in kwargs:
            # The same ensemble flow and spread; skips the E member warps whose image is not used here.
            kwargs["ensemble_mode"] = "flow"
    else:
        work_image, work_mask = image, mask
    kwargs.setdefault("show_progress_bar", False)
    out = pipe(work_image, mask=work_mask, output_type="np", **kwargs)
    spread = None if out.uncertainty is None else np.asarray(out.uncertainty[0, ..., 0], dtype=np.float32)
    if capped:
        flow = StripFlow(out.flow[0], (h, w))  # full size a strip at a time: never all of it at once
        del out
        rectified = warp_strips(image if warp_image is None else warp_image, flow, padding)
        if spread is not None:
            spread = upsample_spread(spread, (h, w))
    else:
        rectified = (np.clip(out.image[0], 0, 1) * 255.0).round().astype(np.uint8)
        flow = np.asarray(out.flow[0], dtype=np.float32)
        del out
        if warp_image is not None:
            rectified = warp_strips(warp_image, flow, padding)
    colours, flow_max = flow_colours(flow)
    return CappedResult(rectified, flow, colours, flow_max, spread, work, time.perf_counter() - t0)

"""Flow fields: backward warping, VAE encoding, resizing and the end-point error.

Conventions (see docs/method.md, "Motion representation"):

* A flow is a tensor ``(B, 2, H, W)`` (or ``(2, H, W)``) in **pixels**, channel 0 = ``u``
  (x, to the right), channel 1 = ``v`` (y, downwards). It warps **backward**:
  ``out(p) = image(p + flow(p))``.
* Pixel ``x`` sits at ``2 * x / (W - 1) - 1`` in ``grid_sample``'s normalised coordinates
  (``align_corners=True``), so pixel centres ``0`` and ``W - 1`` are the image edges
  (:mod:`stablemotion.core.grid`).
* On disk and in numpy a flow is ``(H, W, 2)`` float32, the layout of ``.flo`` / ``.npy``.

The rest of the flow toolbox lives next door and stays importable from here: meshes in
:mod:`stablemotion.core.mesh`, colours in :mod:`stablemotion.core.visualize`, files in
:mod:`stablemotion.io.flow_files`.

This module is pure torch/numpy and knows nothing about models.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..io.flow_files import (
    FLO_MAGIC,
    read_flo,
    read_flow,
    read_flow_png,
    write_flo,
    write_flow,
    write_flow_png,
)
from .constants import FLOW_GAMMA, PADDING_MODES
from .flow_checks import as_batched_flow as _as_batched_flow
from .flow_checks import check_flow
from .grid import pixel_grid, sample_grid
from .mesh import fit_mesh_flow, mesh_regularize, mesh_to_flow, rigid_mesh, snap_mesh_boundary
from .visualize import flow_to_color, make_colorwheel

__all__ = [
    "FLOW_GAMMA",
    "FLO_MAGIC",
    "PADDING_MODES",
    "check_flow",
    "warp",
    "valid_mask",
    "encode_flow",
    "decode_flow",
    "resize_flow",
    "RELEASED_FLOW_RESIZE",
    "rigid_mesh",
    "mesh_to_flow",
    "fit_mesh_flow",
    "mesh_regularize",
    "snap_mesh_boundary",
    "read_flow",
    "write_flow",
    "read_flo",
    "write_flo",
    "read_flow_png",
    "write_flow_png",
    "make_colorwheel",
    "flow_to_color",
    "end_point_error",
]


# --------------------------------------------------------------------------- warping
def valid_mask(flow: torch.Tensor, tolerance: float = 1e-3) -> torch.Tensor:
    """Where the backward flow samples inside the image.

    Args:
        flow: (B, 2, H, W) or (2, H, W), pixels.
        tolerance: slack in pixels, so sampling exactly at an edge counts as inside.

    Returns:
        bool tensor (B, 1, H, W) (or (1, H, W)): ``True`` where ``p + flow(p)`` lies in
        ``[0, W-1] x [0, H-1]``.

    Example:
        >>> flow = torch.zeros(2, 2, 3)
        >>> flow[0] = 1.0  # everything samples one pixel to the right
        >>> valid_mask(flow)[0].tolist()
        [[True, True, False], [True, True, False]]
    """
    flow, squeeze = _as_batched_flow(flow)
    _, _, h, w = flow.shape
    coords = pixel_grid(h, w, flow.device, torch.float32) + flow.float()
    x, y = coords[:, 0:1], coords[:, 1:2]
    mask = (x >= -tolerance) & (x <= w - 1 + tolerance) & (y >= -tolerance) & (y <= h - 1 + tolerance)
    return mask[0] if squeeze else mask


def _check_warp_options(image: torch.Tensor, padding: str, mode: str) -> None:
    if padding not in PADDING_MODES:
        raise ValueError(f"padding must be one of {PADDING_MODES}, got {padding!r}")
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor (B, C, H, W), got {type(image).__name__}")


def _warp_batches(image: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool, bool]:
    """Both inputs batched and matched: ``(image (B, C, H, W), flow (1 or B, 2, H, W), image
    was (C, H, W), flow was (2, H, W))``; a single image is expanded over a batch of flows."""
    flow, squeeze_flow = _as_batched_flow(flow)
    squeeze = image.ndim == 3
    if squeeze:
        image = image.unsqueeze(0)
    if image.ndim != 4:
        raise ValueError(f"image must have shape (B, C, H, W) or (C, H, W), got {tuple(image.shape)}")
    if image.shape[-2:] != flow.shape[-2:]:
        raise ValueError(
            f"image size {tuple(image.shape[-2:])} and flow size {tuple(flow.shape[-2:])} differ; "
            "resize the flow with resize_flow() first"
        )
    if flow.shape[0] not in (1, image.shape[0]):
        if image.shape[0] != 1:
            raise ValueError(f"batch sizes differ: image {image.shape[0]}, flow {flow.shape[0]}")
        image = image.expand(flow.shape[0], -1, -1, -1)
    return image, flow, squeeze, squeeze_flow


def _grid_sample(
    image: torch.Tensor, grid: torch.Tensor, padding: str, mode: str, fill: float
) -> torch.Tensor:
    """``grid_sample`` of ``image`` (B, C, H, W) at ``grid`` (B, H, W, 2) in the working dtype
    (float32 for integer and CPU half images, float64 with a float64 grid), the ``"zeros"``
    padding filled with ``fill``, back in ``image``'s dtype (integers rounded and clamped)."""
    in_dtype = image.dtype
    work = image
    if not image.is_floating_point():
        work = image.float()
    elif image.dtype in (torch.float16, torch.bfloat16) and image.device.type == "cpu":
        work = image.float()
    if grid.dtype == torch.float64:
        work = image.double()
    shift = float(fill) if padding == "zeros" else 0.0
    if shift:
        work = work - shift
    out = F.grid_sample(work, grid.to(work.dtype), mode=mode, padding_mode=padding, align_corners=True)
    if shift:
        out = out + shift
    if not in_dtype.is_floating_point:
        info = torch.iinfo(in_dtype)
        out = out.round().clamp(info.min, info.max)
    return out.to(in_dtype)


def warp(
    image: torch.Tensor,
    flow: torch.Tensor,
    padding: str = "border",
    mode: str = "bilinear",
    return_mask: bool = False,
    check_finite: bool = True,
    fill: float = 0.0,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Backward-warp ``image`` with ``flow``: ``out(p) = image(p + flow(p))``.

    Args:
        image: (B, C, H, W) or (C, H, W), any float dtype (half types are computed in
            float32 on CPU) or an integer dtype (computed in float32, rounded back).
            float64 inputs are warped in float64. A zero flow reproduces the image up to
            grid_sample's coordinate round trip: ~1e-15 in float64, ~1e-6 in float32,
            exactly for integer images.
        flow: (B, 2, H, W) or (2, H, W), pixels; B may be 1 to broadcast over the images.
        padding: ``"border"`` (SIR), ``"zeros"`` (RSC) or ``"reflection"``.
        mode: ``"bilinear"`` (the method's choice) or ``"nearest"``.
        return_mask: also return :func:`valid_mask` of the flow.
        check_finite: raise ``ValueError`` if the flow holds NaN/inf (costs one sync on GPU).
        fill: with ``"zeros"`` padding, the value of samples outside the frame (bilinearly
            blended at the edge exactly as ``grid_sample`` blends with 0). The released code
            warps images in [0, 1], so the empty area is black: pass ``fill=-1.0`` for an
            image in [-1, 1] to get the same result (``warp(x, f, fill=-1) ==
            2 * warp((x + 1) / 2, f) - 1``). Ignored by the other paddings.

    Returns:
        The warped image, same shape and dtype as ``image``; with ``return_mask``,
        ``(warped, mask)`` where mask is bool (B, 1, H, W).

    Example:
        >>> image = torch.arange(6.0).view(1, 2, 3)  # (C, H, W)
        >>> flow = torch.zeros(2, 2, 3)
        >>> flow[0] = 1.0  # sample one pixel to the right
        >>> warp(image, flow)[0].tolist()  # the last column repeats the border
        [[1.0, 2.0, 2.0], [4.0, 5.0, 5.0]]
        >>> out, mask = warp(image, flow, padding="zeros", return_mask=True)
        >>> out[0].tolist(), mask[0, 0].tolist()
        ([[1.0, 2.0, 0.0], [4.0, 5.0, 0.0]], [True, True, False])
    """
    _check_warp_options(image, padding, mode)
    image, flow, squeeze, squeeze_flow = _warp_batches(image, flow)
    if check_finite:
        check_flow(flow)
    grid_dtype = torch.float64 if torch.float64 in (image.dtype, flow.dtype) else torch.float32
    grid = sample_grid(flow, grid_dtype)
    if grid.shape[0] != image.shape[0]:
        grid = grid.expand(image.shape[0], -1, -1, -1)
    out = _grid_sample(image, grid, padding, mode, fill)
    if squeeze and (squeeze_flow or out.shape[0] == 1):
        out = out[0]
    if return_mask:
        mask = valid_mask(flow)
        if mask.shape[0] != image.shape[0]:
            mask = mask.expand(image.shape[0], -1, -1, -1)
        if squeeze and mask.shape[0] == 1:
            mask = mask[0]
        return out, mask
    return out


# --------------------------------------------------------------------------- VAE encoding
def encode_flow(flow: torch.Tensor, gamma: float = FLOW_GAMMA) -> torch.Tensor:
    """Flow (B, 2, H, W) pixels -> 3-channel VAE input ``[u, v, 1] / gamma`` (B, 3, H, W).

    ``gamma`` (pixels, default :data:`FLOW_GAMMA`) scales the flow into the VAE's range;
    a (2, H, W) flow gives (3, H, W).

    Example:
        >>> enc = encode_flow(torch.full((2, 1, 1), 4.0), gamma=8.0)
        >>> enc.flatten().tolist()
        [0.5, 0.5, 0.125]
        >>> decode_flow(enc, gamma=8.0).flatten().tolist()
        [4.0, 4.0]
    """
    if gamma <= 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    flow, squeeze = _as_batched_flow(flow)
    ones = torch.ones_like(flow[:, :1])
    out = torch.cat((flow, ones), dim=1) / gamma
    return out[0] if squeeze else out


def decode_flow(image: torch.Tensor, gamma: float = FLOW_GAMMA) -> torch.Tensor:
    """Inverse of :func:`encode_flow`: (B, C>=2, H, W) VAE output -> flow (B, 2, H, W) pixels.

    Only the first two channels are used (the constant third channel is discarded, as
    in the released decoder).

    Example:
        >>> decode_flow(torch.tensor([0.5, -0.25, 0.1]).view(3, 1, 1), gamma=4.0).flatten().tolist()
        [2.0, -1.0]
    """
    if gamma <= 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4) or image.shape[-3] < 2:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"decode_flow expects (B, 3, H, W) or (3, H, W) decoder output, got {shape}")
    return image[..., :2, :, :] * gamma


# --------------------------------------------------------------------------- resizing
def resize_flow(
    flow: torch.Tensor,
    size: tuple[int, int],
    mode: str = "bilinear",
    align_corners: bool = False,
    magnitude: str = "auto",
) -> torch.Tensor:
    """Resample a flow to ``size = (H', W')`` and rescale its magnitudes.

    Two rules are in use:

    * the pixel-area convention (``align_corners=False``, ``magnitude="auto"``): ``u`` is
      scaled by ``W'/W`` and ``v`` by ``H'/H``;
    * the released StableMotion rule (``upsample2d_flow_as`` of the authors' RSC code):
      bilinear with ``align_corners=True`` and ``magnitude="size"``, i.e. the samples are
      placed corner to corner but magnitudes are still scaled by ``W'/W`` and ``H'/H``.
      :data:`RELEASED_FLOW_RESIZE` holds these keywords; the pipeline uses them.

    ``magnitude="corners"`` (the default ``"auto"`` with ``align_corners=True``) scales by
    ``(W'-1)/(W-1)`` and ``(H'-1)/(H-1)``, the factors consistent with :func:`warp`'s
    corner convention.

    Args:
        flow: (B, 2, H, W) or (2, H, W), pixels of the source resolution.
        size: target (H', W').
        mode: interpolation mode of ``F.interpolate`` ("bilinear", "bicubic", "nearest").
        align_corners: ``F.interpolate``'s sample placement (ignored for "nearest").
        magnitude: ``"auto"``, ``"size"`` (``W'/W``) or ``"corners"`` (``(W'-1)/(W-1)``).

    Returns:
        (B, 2, H', W') (or (2, H', W')), pixels of the target resolution, same dtype.

    Example:
        >>> flow = torch.ones(2, 4, 4)  # one pixel right and down at 4x4
        >>> resize_flow(flow, (8, 8))[:, 0, 0].tolist()  # two pixels at 8x8
        [2.0, 2.0]
        >>> resize_flow(flow, (8, 8), **RELEASED_FLOW_RESIZE)[:, 0, 0].tolist()
        [2.0, 2.0]
        >>> resize_flow(flow, (7, 7), magnitude="corners")[:, 0, 0].tolist()  # (7 - 1) / (4 - 1)
        [2.0, 2.0]
    """
    flow, squeeze = _as_batched_flow(flow)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (H, W) with positive entries, got {size}")
    if magnitude not in ("auto", "size", "corners"):
        raise ValueError(f"magnitude must be 'auto', 'size' or 'corners', got {magnitude!r}")
    h, w = flow.shape[-2:]
    th, tw = int(size[0]), int(size[1])
    if (th, tw) == (h, w):
        return flow[0] if squeeze else flow
    kwargs = {} if mode == "nearest" else {"align_corners": align_corners}
    out = F.interpolate(flow, size=(th, tw), mode=mode, **kwargs)
    if magnitude == "corners" or (magnitude == "auto" and align_corners):
        sx = (tw - 1) / (w - 1) if w > 1 else float(tw)
        sy = (th - 1) / (h - 1) if h > 1 else float(th)
    else:
        sx, sy = tw / w, th / h
    scale = torch.tensor([sx, sy], dtype=out.dtype, device=out.device).view(1, 2, 1, 1)
    out = out * scale
    return out[0] if squeeze else out


#: :func:`resize_flow` keywords of the released code's flow upsampling (bilinear,
#: ``align_corners=True``, magnitudes scaled by ``W'/W``, ``H'/H``).
RELEASED_FLOW_RESIZE: dict[str, Any] = {"mode": "bilinear", "align_corners": True, "magnitude": "size"}


def end_point_error(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean end-point error per sample, in pixels.

    Args:
        pred, target: (B, 2, H, W) pixels.
        mask: optional (B, 1, H, W) bool/float weights; pixels with 0 are ignored.

    Returns:
        (B,) float32.

    Example:
        >>> pred, target = torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)
        >>> pred[:, 0] = 3.0
        >>> pred[:, 1] = 4.0
        >>> end_point_error(pred, target).tolist()
        [5.0]
        >>> mask = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
        >>> end_point_error(pred, torch.zeros_like(pred) + 3.0, mask).tolist()  # |(0, 1)|
        [1.0]
    """
    pred, _ = _as_batched_flow(pred, "pred")
    target, _ = _as_batched_flow(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    epe = torch.linalg.vector_norm((pred - target).float(), dim=1, keepdim=True)
    if mask is None:
        return epe.flatten(1).mean(1)
    m = mask.float().expand_as(epe)
    return (epe * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)

"""Flow fields: backward warping, VAE encoding, resizing, meshes, file I/O, colours.

Conventions (see docs/method.md, "Motion representation"):

* A flow is a tensor ``(B, 2, H, W)`` (or ``(2, H, W)``) in **pixels**, channel 0 = ``u``
  (x, to the right), channel 1 = ``v`` (y, downwards). It warps **backward**:
  ``out(p) = image(p + flow(p))``.
* Pixel ``x`` sits at ``2 * x / (W - 1) - 1`` in ``grid_sample``'s normalised coordinates
  (``align_corners=True``), so pixel centres ``0`` and ``W - 1`` are the image edges.
* On disk and in numpy a flow is ``(H, W, 2)`` float32, the layout of ``.flo`` / ``.npy``.

This module is pure torch/numpy/OpenCV and knows nothing about models.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..io.images import PathLike, atomic_path
from .constants import FLOW_GAMMA, PADDING_MODES

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

#: Magic number at the start of a Middlebury ``.flo`` file (float32).
FLO_MAGIC = 202021.25

_KITTI_SCALE = 64.0
_KITTI_OFFSET = 2**15


# --------------------------------------------------------------------------- checks
def _as_batched_flow(flow: torch.Tensor, name: str = "flow") -> tuple[torch.Tensor, bool]:
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
    """Raise ``ValueError`` unless ``flow`` is a finite (B, 2, H, W) / (2, H, W) tensor or (H, W, 2) array."""
    if isinstance(flow, np.ndarray):
        if flow.ndim != 3 or flow.shape[2] != 2:
            raise ValueError(f"{name} array must have shape (H, W, 2), got {flow.shape}")
        if not np.isfinite(flow).all():
            raise ValueError(f"{name} contains NaN or infinite values ({int((~np.isfinite(flow)).sum())} entries)")
        return
    flow, _ = _as_batched_flow(flow, name)
    finite = torch.isfinite(flow)
    if not bool(finite.all()):
        raise ValueError(f"{name} contains NaN or infinite values ({int((~finite).sum())} entries)")


# --------------------------------------------------------------------------- warping
def _base_grid(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Pixel coordinates (1, 2, H, W): channel 0 = x, channel 1 = y."""
    ys = torch.arange(h, device=device, dtype=dtype)
    xs = torch.arange(w, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=0).unsqueeze(0)


def _sample_grid(flow: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised sampling grid (B, H, W, 2) for ``grid_sample`` from a pixel flow.

    ``dtype`` float64 keeps the coordinate round trip within ~1e-15 px; float32 ~1e-6.
    """
    b, _, h, w = flow.shape
    coords = _base_grid(h, w, flow.device, dtype) + flow.to(dtype)
    # A 1-pixel-wide axis has W - 1 == 0; any finite scale maps it to the single sample.
    gx = 2.0 * coords[:, 0] / max(w - 1, 1) - 1.0
    gy = 2.0 * coords[:, 1] / max(h - 1, 1) - 1.0
    return torch.stack((gx, gy), dim=-1)


def valid_mask(flow: torch.Tensor, tolerance: float = 1e-3) -> torch.Tensor:
    """Where the backward flow samples inside the image.

    Args:
        flow: (B, 2, H, W) or (2, H, W), pixels.
        tolerance: slack in pixels, so sampling exactly at an edge counts as inside.

    Returns:
        bool tensor (B, 1, H, W) (or (1, H, W)): ``True`` where ``p + flow(p)`` lies in
        ``[0, W-1] x [0, H-1]``.
    """
    flow, squeeze = _as_batched_flow(flow)
    _, _, h, w = flow.shape
    coords = _base_grid(h, w, flow.device, torch.float32) + flow.float()
    x, y = coords[:, 0:1], coords[:, 1:2]
    mask = (x >= -tolerance) & (x <= w - 1 + tolerance) & (y >= -tolerance) & (y <= h - 1 + tolerance)
    return mask[0] if squeeze else mask


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
    """
    if padding not in PADDING_MODES:
        raise ValueError(f"padding must be one of {PADDING_MODES}, got {padding!r}")
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor (B, C, H, W), got {type(image).__name__}")
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
    if check_finite:
        check_flow(flow)
    grid_dtype = torch.float64 if torch.float64 in (image.dtype, flow.dtype) else torch.float32
    grid = _sample_grid(flow, grid_dtype)
    if grid.shape[0] != image.shape[0]:
        grid = grid.expand(image.shape[0], -1, -1, -1)

    in_dtype = image.dtype
    work = image
    if not image.is_floating_point():
        work = image.float()
    elif image.dtype in (torch.float16, torch.bfloat16) and image.device.type == "cpu":
        work = image.float()
    if grid_dtype == torch.float64:
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
    out = out.to(in_dtype)
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
    """Flow (B, 2, H, W) pixels -> 3-channel VAE input ``[u, v, 1] / gamma`` (B, 3, H, W)."""
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


# --------------------------------------------------------------------------- meshes
def rigid_mesh(rows: int, cols: int, height: int, width: int) -> np.ndarray:
    """The rigid rectangular mesh: (rows+1, cols+1, 2) control points (x, y) in pixels.

    Vertices are evenly spaced over ``[0, W-1] x [0, H-1]`` (pixel centres, matching
    :func:`warp`'s ``align_corners=True``).
    """
    if rows < 1 or cols < 1:
        raise ValueError(f"a mesh needs at least one row and column of cells, got {rows}x{cols}")
    xs = np.linspace(0.0, width - 1.0, cols + 1)
    ys = np.linspace(0.0, height - 1.0, rows + 1)
    gx, gy = np.meshgrid(xs, ys)
    return np.stack((gx, gy), axis=-1).astype(np.float64)


def _homographies(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Solve ``dst ~ H src`` for batches of 4-point correspondences.

    src, dst: (N, 4, 2). Returns (N, 3, 3) with H[2, 2] = 1.
    """
    x, y = src[..., 0], src[..., 1]
    u, v = dst[..., 0], dst[..., 1]
    zeros, ones = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack((x, y, ones, zeros, zeros, zeros, -u * x, -u * y), dim=-1)
    rows_v = torch.stack((zeros, zeros, zeros, x, y, ones, -v * x, -v * y), dim=-1)
    a = torch.cat((rows_u, rows_v), dim=1)  # (N, 8, 8)
    b = torch.cat((u, v), dim=1).unsqueeze(-1)  # (N, 8, 1)
    sol, info = torch.linalg.solve_ex(a, b)
    if bool((info != 0).any()) or not bool(torch.isfinite(sol).all()):
        raise ValueError("degenerate mesh cell: its four control points do not define a homography")
    h = torch.cat((sol.squeeze(-1), torch.ones_like(sol[:, :1, 0])), dim=1)
    return h.view(-1, 3, 3)


def mesh_to_flow(mesh: np.ndarray | torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Dense backward flow from a mesh of control points (mesh-based rectangling convention).

    The output image is covered by the rigid mesh (:func:`rigid_mesh`) of
    ``rows x cols`` cells; ``mesh`` gives where each vertex lies in the **input** image.
    Every cell's homography (output quad -> input quad) back-projects the cell's output
    pixels into the input, and the flow is that position minus the pixel's own.

    Args:
        mesh: (rows+1, cols+1, 2) or (B, rows+1, cols+1, 2), (x, y) in input pixels;
            e.g. (7, 9, 2) for a 6 x 8 mesh.
        height, width: output size in pixels.

    Returns:
        flow (2, H, W) or (B, 2, H, W), float32, pixels, for :func:`warp`.
    """
    mesh_t = torch.as_tensor(mesh, dtype=torch.float64)
    squeeze = mesh_t.ndim == 3
    if squeeze:
        mesh_t = mesh_t.unsqueeze(0)
    if mesh_t.ndim != 4 or mesh_t.shape[-1] != 2 or min(mesh_t.shape[1:3]) < 2:
        raise ValueError(f"mesh must have shape (rows+1, cols+1, 2) or (B, rows+1, cols+1, 2), got {tuple(mesh_t.shape)}")
    if not bool(torch.isfinite(mesh_t).all()):
        raise ValueError("mesh contains NaN or infinite control points")
    b, rp1, cp1, _ = mesh_t.shape
    rows, cols = rp1 - 1, cp1 - 1
    rigid = torch.from_numpy(rigid_mesh(rows, cols, height, width))

    def corners(m: torch.Tensor) -> torch.Tensor:  # (..., rows+1, cols+1, 2) -> (..., rows*cols, 4, 2)
        quad = torch.stack((m[..., :-1, :-1, :], m[..., :-1, 1:, :], m[..., 1:, 1:, :], m[..., 1:, :-1, :]), dim=-2)
        return quad.reshape(*m.shape[:-3], rows * cols, 4, 2)

    src = corners(rigid).unsqueeze(0).expand(b, -1, -1, -1).reshape(-1, 4, 2)
    dst = corners(mesh_t).reshape(-1, 4, 2)
    hom = _homographies(src, dst).view(b, rows * cols, 3, 3)

    ys = torch.arange(height, dtype=torch.float64)
    xs = torch.arange(width, dtype=torch.float64)
    # Cell index of every output pixel; the last vertex row/column belongs to the last cell.
    cy = torch.clamp(torch.searchsorted(rigid[1:, 0, 1].contiguous(), ys, right=False), max=rows - 1)
    cx = torch.clamp(torch.searchsorted(rigid[0, 1:, 0].contiguous(), xs, right=False), max=cols - 1)
    cell = (cy.view(-1, 1) * cols + cx.view(1, -1)).reshape(-1)  # (H*W,)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack((gx.reshape(-1), gy.reshape(-1), torch.ones(height * width, dtype=torch.float64)), dim=-1)
    h_pix = hom[:, cell]  # (B, H*W, 3, 3)
    mapped = torch.einsum("bnij,nj->bni", h_pix, pts)
    mapped = mapped[..., :2] / mapped[..., 2:3]
    flow = (mapped - pts[:, :2]).view(b, height, width, 2).permute(0, 3, 1, 2)
    flow = flow.float().contiguous()
    return flow[0] if squeeze else flow


def _bilinear_weights(coords: np.ndarray, n: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell index and fractional position of pixel coordinates on ``cells`` even cells over 0..n-1."""
    s = coords.astype(np.float64) * cells / max(n - 1, 1)
    i0 = np.clip(np.floor(s).astype(np.int64), 0, cells - 1)
    return i0, s - i0


def _second_differences(rows: int, cols: int) -> np.ndarray:
    """``D^T D`` for the second differences along the rows and columns of a vertex grid."""
    nv = (rows + 1) * (cols + 1)
    triples = []
    for r in range(rows + 1):
        for c in range(cols + 1):
            v = r * (cols + 1) + c
            if 0 < c < cols:
                triples.append((v - 1, v, v + 1))
            if 0 < r < rows:
                triples.append((v - (cols + 1), v, v + (cols + 1)))
    d = np.zeros((len(triples), nv))
    for k, (a, b, c) in enumerate(triples):
        d[k, a], d[k, b], d[k, c] = 1.0, -2.0, 1.0
    return d.T @ d


def _mesh_terms(ys: np.ndarray, xs: np.ndarray, h: int, w: int, rows: int, cols: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Vertex indices and bilinear weights (4 each, flattened over ys x xs) of the mesh model."""
    iy, fy = _bilinear_weights(ys, h, rows)
    ix, fx = _bilinear_weights(xs, w, cols)
    iy, fy = iy[:, None], fy[:, None]
    ix, fx = ix[None, :], fx[None, :]
    idx = [iy * (cols + 1) + ix, iy * (cols + 1) + ix + 1, (iy + 1) * (cols + 1) + ix, (iy + 1) * (cols + 1) + ix + 1]
    wts = [(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx]
    return [i.ravel() for i in idx], [wt.ravel() for wt in wts]


def fit_mesh_flow(
    flow: np.ndarray,
    weight: np.ndarray | None = None,
    rows: int = 12,
    cols: int = 16,
    smoothness: float = 0.5,
    irls: int = 3,
    huber: float = 1.0,
    stride: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Robust least-squares fit of a smooth mesh flow to a dense flow.

    The model: displacements at the ``(rows+1) x (cols+1)`` vertices of the rigid grid
    (:func:`stablemotion.core.flow.rigid_mesh`), bilinearly interpolated inside the cells
    (exactly ``F.interpolate(..., align_corners=True)`` of the vertex grid). It minimises
    ``sum_p w(p) |flow(p) - mesh(p)|^2 + lambda * sum |second differences of vertices|^2``
    with Huber re-weighting (``irls`` rounds).

    Args:
        flow: (H, W, 2) pixels.
        weight: (H, W) confidences >= 0 (None = 1).
        rows, cols: mesh cells.
        smoothness: lambda relative to the mean data weight per vertex.
        irls: re-weighting rounds (1 = plain weighted least squares).
        huber: Huber threshold, pixels.
        stride: fit on every ``stride``-th pixel in each direction (the mesh cells are
            much larger than a pixel, so 2 loses nothing and is 4x faster).

    Returns:
        ``(vertices, dense)``: vertex displacements (rows+1, cols+1, 2) and the dense
        mesh flow (H, W, 2) at every pixel, float32, pixels.
    """
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must be (H, W, 2), got {flow.shape}")
    h, w = flow.shape[:2]
    rows, cols = max(1, int(rows)), max(1, int(cols))
    stride = max(1, int(stride))
    nv = (rows + 1) * (cols + 1)
    ys, xs = np.arange(0, h, stride), np.arange(0, w, stride)
    idx, wts = _mesh_terms(ys, xs, h, w, rows, cols)
    pair_idx = [[idx[a] * nv + idx[b] for b in range(4)] for a in range(4)]
    target = flow[ys][:, xs].reshape(-1, 2).astype(np.float64)
    if weight is None:
        base = np.ones(len(target))
    else:
        base = np.clip(np.asarray(weight, dtype=np.float64)[ys][:, xs].ravel(), 0.0, None)
    reg = _second_differences(rows, cols)

    c_pix = base.copy()
    verts = np.zeros((nv, 2))
    for it in range(irls):
        normal = np.zeros(nv * nv)
        rhs = np.zeros((nv, 2))
        for a in range(4):
            ca = c_pix * wts[a]
            rhs[:, 0] += np.bincount(idx[a], weights=ca * target[:, 0], minlength=nv)
            rhs[:, 1] += np.bincount(idx[a], weights=ca * target[:, 1], minlength=nv)
            for b in range(4):
                normal += np.bincount(pair_idx[a][b], weights=ca * wts[b], minlength=nv * nv)
        normal = normal.reshape(nv, nv)
        lam = smoothness * max(float(c_pix.sum()), 1e-9) / nv
        system = normal + lam * reg + 1e-6 * max(lam, 1e-3) * np.eye(nv)
        # torch honours torch.set_num_threads (workers use 1); numpy BLAS may oversubscribe.
        verts = torch.linalg.solve(torch.from_numpy(system), torch.from_numpy(rhs)).numpy()
        if it + 1 < irls:
            fitted = sum(wts[a][:, None] * verts[idx[a]] for a in range(4))
            resid = np.linalg.norm(fitted - target, axis=1)
            c_pix = base * np.minimum(1.0, huber / np.maximum(resid, 1e-12))
    full_idx, full_wts = _mesh_terms(np.arange(h), np.arange(w), h, w, rows, cols)
    dense = sum(full_wts[a][:, None] * verts[full_idx[a]] for a in range(4))
    return (
        verts.reshape(rows + 1, cols + 1, 2).astype(np.float32),
        np.asarray(dense, dtype=np.float32).reshape(h, w, 2),
    )


def snap_mesh_boundary(
    mesh: np.ndarray,
    valid: np.ndarray,
    margin: float = 0.5,
    samples: int = 8,
    falloff: float = 0.5,
    max_shift: float = 0.25,
) -> np.ndarray:
    """Move a mesh's boundary inwards until its outline lies on valid content.

    Under per-cell homographies (:func:`mesh_to_flow`) the output frame's border samples the
    input along the polyline of the mesh's boundary vertices. Each side's segments are sampled
    and, where a sample falls on an invalid pixel (or outside the image), both vertices of the
    segment are pushed along the side's inward direction (top: +y, bottom: -y, left: +x,
    right: -x) by the smallest shift, in half-pixel steps, that puts every sample at least
    ``margin`` pixels inside valid content. The push fades out linearly over a share
    ``falloff`` of the mesh's rows (top, bottom) or columns (left, right), so many cells absorb
    it and the border does not kink.

    Args:
        mesh: (rows+1, cols+1, 2) vertex positions (x, y) in input pixels.
        valid: (H, W) bool, True where the input has content.
        margin: clearance from the invalid region, pixels.
        samples: points checked per boundary segment.
        falloff: share of the mesh's rows / columns over which a push fades to zero.
        max_shift: largest push, fraction of the image size along that direction.

    Returns:
        A new (rows+1, cols+1, 2) float64 mesh.
    """
    if mesh.ndim != 3 or mesh.shape[2] != 2 or min(mesh.shape[:2]) < 2:
        raise ValueError(f"mesh must be (rows+1, cols+1, 2) with at least one cell, got {mesh.shape}")
    if valid.ndim != 2:
        raise ValueError(f"valid must be (H, W), got {valid.shape}")
    h, w = valid.shape
    out = np.array(mesh, dtype=np.float64)

    def ok(pts: np.ndarray) -> np.ndarray:
        """(..., 2) positions -> bool: inside the image, on valid content, ``margin`` px from
        invalid content (the image's own edge is not a reason to move)."""
        x, y = pts[..., 0], pts[..., 1]
        good = (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)
        for dx, dy in ((0, 0), (margin, 0), (-margin, 0), (0, margin), (0, -margin)):
            xi = np.clip(np.rint(x + dx), 0, w - 1).astype(int)
            yi = np.clip(np.rint(y + dy), 0, h - 1).astype(int)
            good &= valid[yi, xi]
        return good

    t = np.linspace(0.0, 1.0, max(2, int(samples)))[:, None]
    for side, (line, axis, sign, extent) in {
        "top": (lambda m: m[0], 1, 1.0, h), "bottom": (lambda m: m[-1], 1, -1.0, h),
        "left": (lambda m: m[:, 0], 0, 1.0, w), "right": (lambda m: m[:, -1], 0, -1.0, w),
    }.items():
        verts = line(out)  # (n, 2), a view into ``out``'s values at the time of the call
        seg = verts[:-1, None, :] * (1 - t) + verts[1:, None, :] * t  # (n-1, samples, 2)
        shifts = np.arange(0.0, max_shift * extent + 0.5, 0.5)
        need = np.full(len(seg), np.nan)
        for s_ in shifts:  # smallest shift per segment whose samples are all valid
            moved = seg.copy()
            moved[..., axis] += sign * s_
            done = ok(moved).all(axis=1) & np.isnan(need)
            need[done] = s_
            if not np.isnan(need).any():
                break
        need = np.nan_to_num(need, nan=0.0)  # nothing valid within reach: leave it
        push = np.zeros(len(verts))
        push[:-1] = np.maximum(push[:-1], need)
        push[1:] = np.maximum(push[1:], need)
        k = max(1, int(round(falloff * (out.shape[0 if axis == 1 else 1] - 1))))
        for r in range(k):
            fade = 1.0 - r / k
            if side == "top" and r < out.shape[0]:
                out[r, :, 1] += push * fade
            elif side == "bottom" and r < out.shape[0]:
                out[-1 - r, :, 1] -= push * fade
            elif side == "left" and r < out.shape[1]:
                out[:, r, 0] += push * fade
            elif side == "right" and r < out.shape[1]:
                out[:, -1 - r, 0] -= push * fade
    return out


def mesh_regularize(
    flow: torch.Tensor,
    cells: tuple[int, int] = (12, 16),
    smoothness: float = 0.5,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Project a dense flow onto a smooth mesh of per-cell homographies (content-preserving).

    A smooth vertex mesh is fitted to the flow (:func:`fit_mesh_flow`: robust least
    squares with a second-difference smoothness term); every cell of the rigid grid is then
    mapped by the homography its four fitted vertices define (:func:`mesh_to_flow`), so
    straight lines stay straight inside a cell and nothing ripples between vertices. With
    ``valid`` (the input's content region, e.g. a stitched image's mask) the mesh's boundary
    is then moved onto the content (:func:`snap_mesh_boundary`), so the output's border does
    not sample the empty area.

    Args:
        flow: (B, 2, H, W) or (2, H, W), pixels.
        cells: mesh cells (rows, cols); (12, 16) is 32-pixel cells at 384x512.
        smoothness: weight of the smoothness term (see :func:`fit_mesh_flow`).
        valid: optional (B, H, W), (B, 1, H, W) or (H, W) bool/0-1 content mask at the flow's
            size (one per flow, or one for all).

    Returns:
        The regularised flow, same shape, float32, pixels.
    """
    batched, squeeze = _as_batched_flow(flow)
    check_flow(batched)
    h, w = batched.shape[-2:]
    rows, cols = max(1, min(int(cells[0]), h - 1)), max(1, min(int(cells[1]), w - 1))
    rigid = rigid_mesh(rows, cols, h, w)
    masks = None
    if valid is not None:
        v = valid.detach().cpu()
        v = v.reshape(-1, *v.shape[-2:]) if v.ndim >= 2 else v
        if v.shape[-2:] != (h, w) or v.shape[0] not in (1, batched.shape[0]):
            raise ValueError(f"valid must be (H, W) or (B, [1,] H, W) with H, W = {h}, {w} and B = 1 or "
                             f"{batched.shape[0]}, got {tuple(valid.shape)}")
        masks = (v >= 0.5).numpy()
    out = []
    for i, f in enumerate(batched.detach().float().cpu()):
        verts, _ = fit_mesh_flow(f.permute(1, 2, 0).numpy(), rows=rows, cols=cols, smoothness=smoothness)
        mesh = rigid + verts
        if masks is not None:
            mesh = snap_mesh_boundary(mesh, masks[i if len(masks) > 1 else 0])
        out.append(mesh_to_flow(mesh, h, w))
    result = torch.stack(out).to(device=batched.device)
    return result[0] if squeeze else result


# --------------------------------------------------------------------------- file I/O
def _tensor_to_hw2(flow: np.ndarray | torch.Tensor) -> np.ndarray:
    """A (2, H, W) / (1, 2, H, W) tensor -> (H, W, 2) array; arrays pass through."""
    if isinstance(flow, torch.Tensor):
        flow = flow.detach().cpu().float().numpy()
        if flow.ndim == 4 and flow.shape[0] == 1:
            flow = flow[0]
        if flow.ndim == 3 and flow.shape[0] == 2:
            flow = flow.transpose(1, 2, 0)
    return np.asarray(flow)


def _as_hw2(flow: np.ndarray | torch.Tensor, path: PathLike) -> np.ndarray:
    flow = _tensor_to_hw2(flow)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"cannot write {path}: flow must be (H, W, 2) array or (2, H, W) tensor, got {flow.shape}")
    if not np.isfinite(flow).all():
        raise ValueError(f"cannot write {path}: flow contains NaN or infinite values")
    return np.ascontiguousarray(flow, dtype=np.float32)


def write_flo(path: PathLike, flow: np.ndarray | torch.Tensor) -> Path:
    """Write a Middlebury ``.flo`` file atomically (magic 202021.25, width, height, float32 u/v)."""
    arr = _as_hw2(flow, path)
    h, w, _ = arr.shape
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<fii", FLO_MAGIC, w, h))
        f.write(arr.astype("<f4").tobytes())
    return Path(path)


def read_flo(path: PathLike) -> np.ndarray:
    """Read a Middlebury ``.flo`` file -> (H, W, 2) float32, pixels."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"flow file not found: {path}")
    data = path.read_bytes()
    if len(data) < 12:
        raise ValueError(f"{path} is too short to be a .flo file ({len(data)} bytes)")
    magic, w, h = struct.unpack("<fii", data[:12])
    if magic != FLO_MAGIC:
        raise ValueError(f"{path} is not a .flo file: magic number {magic!r}, expected {FLO_MAGIC}")
    if w <= 0 or h <= 0:
        raise ValueError(f"{path} has an invalid size {w}x{h}")
    expected = 12 + 8 * w * h
    if len(data) != expected:
        raise ValueError(f"{path} is truncated or padded: {len(data)} bytes, expected {expected} for {w}x{h}")
    return np.frombuffer(data, dtype="<f4", offset=12).reshape(h, w, 2).astype(np.float32)


def write_flow_png(path: PathLike, flow: np.ndarray | torch.Tensor, valid: np.ndarray | None = None) -> Path:
    """Write a 16-bit KITTI-style flow PNG: R,G = flow * 64 + 2**15, B = validity.

    Values must lie within +-511.98 px (the format's range); ``valid`` defaults to all ones.
    """
    arr = _as_hw2(flow, path)
    limit = (2**16 - 1 - _KITTI_OFFSET) / _KITTI_SCALE
    if np.abs(arr).max(initial=0.0) > limit:
        raise ValueError(f"cannot write {path}: |flow| up to {np.abs(arr).max():.1f} px exceeds the 16-bit PNG range {limit:.2f}")
    enc = np.round(arr * _KITTI_SCALE + _KITTI_OFFSET).astype(np.uint16)
    v = np.ones(arr.shape[:2], np.uint16) if valid is None else (np.asarray(valid) > 0).astype(np.uint16)
    if v.shape != arr.shape[:2]:
        raise ValueError(f"cannot write {path}: valid mask shape {v.shape} != flow size {arr.shape[:2]}")
    bgr = np.stack((v, enc[..., 1], enc[..., 0]), axis=-1)  # OpenCV stores BGR
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), bgr):
            raise OSError(f"OpenCV could not write {path}")
    return Path(path)


def read_flow_png(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a 16-bit KITTI-style flow PNG -> (flow (H, W, 2) float32 pixels, valid (H, W) bool)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"flow file not found: {path}")
    bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if bgr is None:
        raise ValueError(f"cannot decode {path} as a PNG")
    if bgr.dtype != np.uint16 or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise ValueError(f"{path} is not a 16-bit 3-channel flow PNG (dtype {bgr.dtype}, shape {bgr.shape})")
    flow = (bgr[..., [2, 1]].astype(np.float32) - _KITTI_OFFSET) / _KITTI_SCALE
    valid = bgr[..., 0] > 0
    flow[~valid] = 0.0
    return flow, valid


def read_flow(path: PathLike) -> np.ndarray:
    """Read a flow file by extension (``.flo``, ``.npy``, ``.png``) -> (H, W, 2) float32 pixels.

    ``.npy`` files may hold (H, W, 2) (the DIR-D pseudo-label layout) or (2, H, W).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".flo":
        return read_flo(path)
    if suffix == ".png":
        return read_flow_png(path)[0]
    if suffix == ".npy":
        if not path.is_file():
            raise FileNotFoundError(f"flow file not found: {path}")
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ValueError(f"cannot read {path} as a .npy array: {exc}") from exc
        if arr.ndim == 3 and arr.shape[0] == 2 and arr.shape[2] != 2:
            arr = arr.transpose(1, 2, 0)
        if arr.ndim != 3 or arr.shape[2] != 2:
            raise ValueError(f"{path} holds an array of shape {arr.shape}, expected (H, W, 2) flow in pixels")
        return np.ascontiguousarray(arr, dtype=np.float32)
    raise ValueError(f"unknown flow file type {path.suffix!r} for {path}: use .flo, .npy or .png")


def write_flow(path: PathLike, flow: np.ndarray | torch.Tensor) -> Path:
    """Write a flow by extension (``.flo``, ``.npy`` (H, W, 2) float32, ``.png`` 16-bit), atomically."""
    suffix = Path(path).suffix.lower()
    if suffix == ".flo":
        return write_flo(path, flow)
    if suffix == ".png":
        return write_flow_png(path, flow)
    if suffix == ".npy":
        arr = _as_hw2(flow, path)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, arr)
        return Path(path)
    raise ValueError(f"unknown flow file type {suffix!r} for {path}: use .flo, .npy or .png")


# --------------------------------------------------------------------------- colours
def make_colorwheel() -> np.ndarray:
    """The Middlebury / Baker et al. colour wheel (55, 3) in [0, 255].

    Segments red->yellow (15), yellow->green (6), green->cyan (4), cyan->blue (11),
    blue->magenta (13), magenta->red (6), the convention of the ``flow_vis`` package.
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
    """
    flow = _tensor_to_hw2(flow).astype(np.float64)
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


def end_point_error(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean end-point error per sample, in pixels.

    Args:
        pred, target: (B, 2, H, W) pixels.
        mask: optional (B, 1, H, W) bool/float weights; pixels with 0 are ignored.

    Returns:
        (B,) float32.
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

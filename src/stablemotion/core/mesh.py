"""Meshes of control points: the rigid mesh, per-cell homographies, and the robust mesh fit.

A mesh is ``(rows+1, cols+1, 2)`` vertex positions ``(x, y)`` in **pixels**. The output
image is covered by the rigid mesh (:func:`rigid_mesh`: vertices evenly spaced over
``[0, W-1] x [0, H-1]``, pixel centres as in :func:`stablemotion.core.flow.warp`); a mesh
says where each vertex lies in the input, and :func:`mesh_to_flow` turns it into a dense
backward flow ``(B, 2, H, W)`` in pixels. :func:`mesh_regularize` projects a dense flow onto
such a mesh (fit, then optionally snap the boundary onto the content).

Every name stays importable from :mod:`stablemotion.core.flow`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .flow_checks import as_batched_flow, check_flow
from .grid import pixel_grid

__all__ = ["rigid_mesh", "mesh_to_flow", "fit_mesh_flow", "snap_mesh_boundary", "mesh_regularize"]


def rigid_mesh(rows: int, cols: int, height: int, width: int) -> np.ndarray:
    """The rigid rectangular mesh: (rows+1, cols+1, 2) control points (x, y) in pixels.

    Vertices are evenly spaced over ``[0, W-1] x [0, H-1]`` (pixel centres, matching
    :func:`warp`'s ``align_corners=True``).

    Example:
        >>> mesh = rigid_mesh(1, 2, 3, 5)  # 1 x 2 cells over a 3 x 5 image
        >>> mesh.shape, mesh[1, 2].tolist()
        ((2, 3, 2), [4.0, 2.0])
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

    Example:
        >>> mesh = rigid_mesh(1, 1, 3, 3) + np.array([1.0, 0.0])  # every vertex 1 px to the right
        >>> flow = mesh_to_flow(mesh, 3, 3)
        >>> tuple(flow.shape), flow[0].unique().tolist(), flow[1].abs().max().item()
        ((2, 3, 3), [1.0], 0.0)
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

    gx, gy = pixel_grid(height, width, dtype=torch.float64)[0]  # (H, W) each
    # Cell index of every output pixel; the last vertex row/column belongs to the last cell.
    cy = torch.clamp(torch.searchsorted(rigid[1:, 0, 1].contiguous(), gy[:, 0].contiguous(), right=False), max=rows - 1)
    cx = torch.clamp(torch.searchsorted(rigid[0, 1:, 0].contiguous(), gx[0].contiguous(), right=False), max=cols - 1)
    cell = (cy.view(-1, 1) * cols + cx.view(1, -1)).reshape(-1)  # (H*W,)
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


def _normal_equations(
    c_pix: np.ndarray,
    target: np.ndarray,
    idx: list[np.ndarray],
    wts: list[np.ndarray],
    pair_idx: list[list[np.ndarray]],
    nv: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The data term of :func:`fit_mesh_flow` as normal equations: ``(A^T C A (nv, nv),
    A^T C target (nv, 2))`` for pixel weights ``c_pix`` (N,), targets (N, 2) in pixels, and
    the bilinear model's vertex indices ``idx`` / weights ``wts`` (4 of (N,) each)."""
    normal = np.zeros(nv * nv)
    rhs = np.zeros((nv, 2))
    for a in range(4):
        ca = c_pix * wts[a]
        rhs[:, 0] += np.bincount(idx[a], weights=ca * target[:, 0], minlength=nv)
        rhs[:, 1] += np.bincount(idx[a], weights=ca * target[:, 1], minlength=nv)
        for b in range(4):
            normal += np.bincount(pair_idx[a][b], weights=ca * wts[b], minlength=nv * nv)
    return normal.reshape(nv, nv), rhs


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

    Example:
        >>> flow = np.zeros((9, 9, 2), np.float32)
        >>> flow[..., 0] = 2.0  # a uniform shift is a mesh flow
        >>> verts, dense = fit_mesh_flow(flow, rows=2, cols=2)
        >>> verts.shape, np.round(dense[4, 4], 3).tolist()
        ((3, 3, 2), [2.0, 0.0])
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
        normal, rhs = _normal_equations(c_pix, target, idx, wts, pair_idx, nv)
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

    Example:
        >>> valid = np.ones((9, 9), bool)
        >>> valid[:2] = False  # the top two rows are empty
        >>> snapped = snap_mesh_boundary(rigid_mesh(2, 2, 9, 9), valid)
        >>> snapped[0, :, 1].tolist()  # the top vertices move from y = 0 onto the content
        [2.0, 2.0, 2.0]
    """
    if mesh.ndim != 3 or mesh.shape[2] != 2 or min(mesh.shape[:2]) < 2:
        raise ValueError(f"mesh must be (rows+1, cols+1, 2) with at least one cell, got {mesh.shape}")
    if valid.ndim != 2:
        raise ValueError(f"valid must be (H, W), got {valid.shape}")
    out = np.array(mesh, dtype=np.float64)
    on_content = _content_test(valid, margin)
    t = np.linspace(0.0, 1.0, max(2, int(samples)))[:, None]
    for side in ("top", "bottom", "left", "right"):  # each side sees the pushes of those before
        axis, sign = _SIDES[side]
        extent = valid.shape[0] if axis == 1 else valid.shape[1]
        push = _boundary_push(_side_vertices(out, side), on_content, t, axis, sign, max_shift * extent)
        _fade_in(out, side, push, falloff)
    return out


#: The inward direction of each side of a mesh: (axis pushed along (0 = x, 1 = y), sign).
_SIDES = {"top": (1, 1.0), "bottom": (1, -1.0), "left": (0, 1.0), "right": (0, -1.0)}


def _side_vertices(mesh: np.ndarray, side: str) -> np.ndarray:
    """The (n, 2) boundary vertices of one side of a (rows+1, cols+1, 2) mesh (a view)."""
    return {"top": mesh[0], "bottom": mesh[-1], "left": mesh[:, 0], "right": mesh[:, -1]}[side]


def _content_test(valid: np.ndarray, margin: float) -> Callable[[np.ndarray], np.ndarray]:
    """A test of (..., 2) positions -> bool: inside the image, on valid content, ``margin`` px
    from invalid content (the image's own edge is not a reason to move)."""
    h, w = valid.shape

    def ok(pts: np.ndarray) -> np.ndarray:
        x, y = pts[..., 0], pts[..., 1]
        good = (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)
        for dx, dy in ((0, 0), (margin, 0), (-margin, 0), (0, margin), (0, -margin)):
            xi = np.clip(np.rint(x + dx), 0, w - 1).astype(int)
            yi = np.clip(np.rint(y + dy), 0, h - 1).astype(int)
            good &= valid[yi, xi]
        return good

    return ok


def _boundary_push(
    verts: np.ndarray,
    ok: Callable[[np.ndarray], np.ndarray],
    t: np.ndarray,
    axis: int,
    sign: float,
    limit: float,
) -> np.ndarray:
    """The push (n,) in pixels of each of a side's vertices (n, 2): the largest of the smallest
    half-pixel shifts, up to ``limit``, that put every sample (at fractions ``t``) of its two
    segments on content; 0 where nothing within reach is."""
    seg = verts[:-1, None, :] * (1 - t) + verts[1:, None, :] * t  # (n-1, samples, 2)
    need = np.full(len(seg), np.nan)
    for s_ in np.arange(0.0, limit + 0.5, 0.5):  # smallest shift per segment whose samples are all valid
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
    return push


def _fade_in(out: np.ndarray, side: str, push: np.ndarray, falloff: float) -> None:
    """Move ``side``'s vertices of ``out`` inwards by ``push``, fading linearly to zero over a
    share ``falloff`` of the rows (top, bottom) or columns (left, right); in place."""
    axis = _SIDES[side][0]
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

    Example:
        >>> flow = torch.zeros(2, 16, 16)
        >>> flow[0] = 1.5  # a uniform shift survives the projection
        >>> out = mesh_regularize(flow, cells=(2, 2))
        >>> tuple(out.shape), round(float((out - flow).abs().max()), 4)
        ((2, 16, 16), 0.0)
    """
    batched, squeeze = as_batched_flow(flow)
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

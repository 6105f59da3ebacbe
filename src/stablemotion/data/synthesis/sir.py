"""Stitched image rectangling (SIR): a stitched panorama with an irregular boundary and its
mask -> a rectangular image.

The synthetic-sample generator of :mod:`stablemotion.tasks.sir`
(:func:`make_rectangling_sample`): the photo is the rectangular ground truth
``gt``. A random smooth mesh says where every vertex of the rigid output grid lies in the
*input*; its boundary follows an irregular region (smooth insets, the outline of 2-4
projectively warped views, or a spherical panorama's outline), so the photo content fills an
irregular region of a black canvas, as stitched panoramas look. The label is the backward flow
``f = mesh_to_flow(mesh)`` with ``gt(p) = input(p + f(p))``; the input is rendered with the
inverse map (:func:`~stablemotion.data.synthesis.geometry.invert_flow`).

Layout: DIR-D, ``SPLIT/{input,mask,gt}/NNNNN.EXT`` (3-channel masks, white = content) and
``SPLIT/flow/NNNNN.npy`` (:func:`write_dird_sample`, :func:`write_rectangling_dataset`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ...core.constants import RECTANGLING_STYLE_NAMES
from ...core.flow import mesh_to_flow, rigid_mesh, write_flow
from ...io.images import PathLike
from ...tasks.sir import PROTOCOL, SIR
from .geometry import invert_flow, pixel_grid, remap, rotations
from .photos import random_photo_crop
from .registry import Layout, SynthOption, SynthSpec, declare_task
from .writer import PREFILTER_SIGMA, save_image_file, write_dataset

__all__ = [
    "ROWS",
    "COLS",
    "MAX_INSET",
    "STITCHED_MESH",
    "SYNTH",
    "RECTANGLING_STYLES",
    "RectanglingSample",
    "make_rectangling_sample",
    "random_rectangling_mesh",
    "stitched_region",
    "panorama_region",
    "panorama_views",
    "folded_cells",
    "stitched_outline_mesh",
    "write_dird_sample",
    "write_rectangling_dataset",
]

#: Default mesh of the ``inset`` style: cells (rows, columns) and the largest boundary inset
#: (fraction of the image size); the generator's, the dataset writer's and ``stablemotion synth``'s.
ROWS = 6
COLS = 8
MAX_INSET = 0.12
#: Default mesh (rows, columns) of the ``stitched`` and ``panorama`` styles (cells of ~32 px at 384 x 512).
STITCHED_MESH = (12, 16)


def _smooth_profile(rng: np.random.Generator, n: int, knots: int, low: float, high: float) -> np.ndarray:
    """Piecewise-linear random profile at ``n`` evenly spaced points, values in [low, high]."""
    xs = np.linspace(0.0, 1.0, knots)
    vals = rng.uniform(low, high, size=knots)
    return np.interp(np.linspace(0.0, 1.0, n), xs, vals)


def random_rectangling_mesh(
    rng: np.random.Generator,
    height: int,
    width: int,
    rows: int = ROWS,
    cols: int = COLS,
    max_inset: float = MAX_INSET,
    touch: float = 0.35,
    jitter: float = 0.01,
) -> np.ndarray:
    """A random smooth mesh that maps the rectangle into an irregular region of the canvas.

    Every edge of the rectangle is pulled inwards by a random piecewise-linear profile
    (between 0 -- touching the canvas edge -- and ``max_inset`` of the image size); the
    interior follows by Coons (transfinite) interpolation of the boundary, plus a small
    smooth jitter. All vertices stay inside ``[0, W-1] x [0, H-1]``.

    Args:
        rng: random generator.
        height, width: image size (H, W), pixels.
        rows, cols: mesh cells.
        max_inset: largest inset, as a fraction of the image height (top/bottom edges)
            or width (left/right edges).
        touch: probability mass of an inset of exactly 0 (profiles are drawn from
            ``[-touch/(1-touch) * max, max]`` and clipped at 0).
        jitter: standard deviation of the interior vertex noise, fraction of the cell size.

    Returns:
        mesh (rows+1, cols+1, 2) float64, (x, y) input pixels for :func:`stablemotion.core.flow.mesh_to_flow`.
    """
    mesh = rigid_mesh(rows, cols, height, width)
    low = -touch / max(1e-6, 1.0 - touch)

    def inset(n: int, extent: float) -> np.ndarray:
        knots = int(rng.integers(2, 5))
        return np.clip(_smooth_profile(rng, n, knots, low * max_inset, max_inset), 0.0, None) * extent

    top = inset(cols + 1, height - 1)  # + y
    bottom = -inset(cols + 1, height - 1)  # - y
    left = inset(rows + 1, width - 1)  # + x
    right = -inset(rows + 1, width - 1)  # - x
    u = np.linspace(0.0, 1.0, cols + 1)[None, :]
    v = np.linspace(0.0, 1.0, rows + 1)[:, None]
    dy = (1 - v) * top[None, :] + v * bottom[None, :]
    dx = (1 - u) * left[:, None] + u * right[:, None]
    # Tangential slide along the edges: small, smooth, zero at the corners.
    slide = 0.25 * max_inset
    sx = _smooth_profile(rng, cols + 1, 3, -slide, slide) * (width - 1) * np.sin(np.pi * u[0])
    sy = _smooth_profile(rng, rows + 1, 3, -slide, slide) * (height - 1) * np.sin(np.pi * v[:, 0])
    dx = dx + 0.5 * sx[None, :]
    dy = dy + 0.5 * sy[:, None]
    mesh[..., 0] += dx
    mesh[..., 1] += dy
    if jitter > 0 and rows > 1 and cols > 1:
        cell = np.array([(width - 1) / cols, (height - 1) / rows])
        noise = rng.normal(0.0, jitter, size=(rows - 1, cols - 1, 2)) * cell
        mesh[1:-1, 1:-1] += noise
    mesh[..., 0] = np.clip(mesh[..., 0], 0.0, width - 1.0)
    mesh[..., 1] = np.clip(mesh[..., 1], 0.0, height - 1.0)
    return mesh


def _coons(top: np.ndarray, bottom: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Transfinite (Coons) interpolation of a grid from its four boundary curves.

    top/bottom: (cols+1, 2), left/right: (rows+1, 2); corners shared. Returns (rows+1, cols+1, 2).
    """
    rows, cols = len(left) - 1, len(top) - 1
    u = np.linspace(0.0, 1.0, cols + 1)[None, :, None]
    v = np.linspace(0.0, 1.0, rows + 1)[:, None, None]
    ruled = (1 - v) * top[None] + v * bottom[None] + (1 - u) * left[:, None] + u * right[:, None]
    corners = ((1 - u) * (1 - v) * top[0] + u * (1 - v) * top[-1] + (1 - u) * v * bottom[0] + u * v * bottom[-1])
    return ruled - corners


def _fill_views(outlines: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """The union of polygons ((N, 2) each, any units) scaled so that their bounding box fills an
    (H, W) canvas: a uint8 (H, W) mask, 255 = inside a polygon."""
    pts = np.concatenate(outlines)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    mask = np.zeros((height, width), np.uint8)
    for o in outlines:
        q = (o - lo) / (hi - lo) * np.array([width - 1, height - 1])
        cv2.fillPoly(mask, [np.round(q).astype(np.int32)], 255)
    return mask


def stitched_region(rng: np.random.Generator, height: int, width: int, max_tilt: float = 0.14) -> np.ndarray:
    """The content region of a random stitched panorama: a uint8 (H, W) mask, 255 = content.

    Real stitched images (DIR-D, panorama tools) are the union of 2-4 views, each a
    rectangle seen under a homography: their outline is made of straight, slanted edges --
    wedges along the borders, concave corners where two views meet, sometimes a long thin
    band along a whole edge. The views are laid side by side with 15-40% overlap, every
    corner moved by up to ``max_tilt`` of the size, and the union scaled so that it touches
    all four sides of the canvas (the stitched image's bounding box).
    """
    n = int(rng.integers(2, 5))
    overlap = rng.uniform(0.15, 0.4)
    span = 1.0 / (n - (n - 1) * overlap)  # view width, fraction of the panorama
    quads = []
    band = rng.random() < 0.25  # a thin band along the whole top or bottom edge
    band_side = int(rng.integers(2))
    band_depth = rng.uniform(0.03, 0.08)
    for i in range(n):
        x0 = i * span * (1 - overlap)
        x1 = x0 + span
        # corners: top-left, top-right, bottom-right, bottom-left in (x, y), unit square coordinates
        dy = rng.uniform(0.0, max_tilt, size=4)
        dx = rng.uniform(0.0, max_tilt, size=4) * span
        if band:
            k = (0, 1) if band_side == 0 else (2, 3)
            dy[list(k)] = np.maximum(dy[list(k)], band_depth)
        quads.append(np.array([
            [x0 + dx[0] * (i == 0), dy[0]],
            [x1 - dx[1] * (i == n - 1), dy[1]],
            [x1 - dx[2] * (i == n - 1), 1.0 - dy[2]],
            [x0 + dx[3] * (i == 0), 1.0 - dy[3]],
        ]))
    return _fill_views(quads, height, width)


def _outline_edges(region: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, ...]:
    """The region's outline split at the points nearest the canvas corners into four edges,
    each resampled uniformly by arc length: top/bottom (cols+1, 2), left/right (rows+1, 2), (x, y)."""
    h, w = region.shape
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    outline = max(contours, key=cv2.contourArea)[:, 0, :].astype(np.float64)  # (N, 2), a closed loop
    canvas = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    tl, tr, br, bl = (int(np.argmin(((outline - c) ** 2).sum(axis=1))) for c in canvas)

    def path(a: int, b: int, side: int, sign: float) -> np.ndarray:
        """The outline from index a to b, the way round that lies on the given side of the canvas."""
        n = len(outline)
        fwd = outline[[(a + k) % n for k in range((b - a) % n + 1)]]
        bwd = outline[[(a - k) % n for k in range((a - b) % n + 1)]]
        return fwd if sign * fwd[:, side].mean() < sign * bwd[:, side].mean() else bwd

    def resample(curve: np.ndarray, count: int) -> np.ndarray:
        seg = np.linalg.norm(np.diff(curve, axis=0), axis=1)
        arc = np.concatenate([[0.0], np.cumsum(seg)])
        at = np.linspace(0.0, arc[-1], count)
        return np.stack([np.interp(at, arc, curve[:, 0]), np.interp(at, arc, curve[:, 1])], axis=1)

    top = resample(path(tl, tr, 1, 1.0), cols + 1)  # the way round with the smaller y
    bottom = resample(path(bl, br, 1, -1.0), cols + 1)
    left = resample(path(tl, bl, 0, 1.0), rows + 1)
    right = resample(path(tr, br, 0, -1.0), rows + 1)
    return top, bottom, left, right


def _profile_edges(region: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, ...]:
    """The four edges of a wide (or tall) region as :func:`_outline_edges` returns them, from its
    column and row profiles: the top edge at evenly spaced columns is each column's first content
    row, and so on. Monotone along every edge by construction, so the long notched outlines of
    many-view panoramas never fold the mesh as an arc-length split of the outline can.

    Example:
        >>> region = np.zeros((20, 100), np.uint8); region[2:18, 5:95] = 255
        >>> top, bottom, left, right = _profile_edges(region, 2, 4)
        >>> top[:, 1].tolist(), left[:, 0].tolist(), top[0].tolist() == left[0].tolist()
        ([2.0, 2.0, 2.0, 2.0, 2.0], [5.0, 5.0, 5.0], True)
    """
    if region.shape[0] > region.shape[1]:  # a tall region: the wide one's edges, transposed
        left, right, top, bottom = _profile_edges(np.ascontiguousarray(region.T), cols, rows)
        return top[:, ::-1], bottom[:, ::-1], left[:, ::-1], right[:, ::-1]
    inside = region > 0
    h, w = inside.shape
    ys_in, xs_in = np.nonzero(inside)
    # corners: the content pixel nearest each canvas corner, distances in units of the canvas's sides (so a
    # wedge that touches the frame at mid-height is an edge, not a corner)
    pts = np.stack([xs_in / max(w - 1, 1), ys_in / max(h - 1, 1)], 1)
    tl, tr, br, bl = (np.array([xs_in[k], ys_in[k]], np.float64) for k in (
        int(np.argmin(((pts - c) ** 2).sum(axis=1))) for c in ((0, 0), (1, 0), (1, 1), (0, 1))))

    def profile(start: np.ndarray, end: np.ndarray, count: int, along_x: bool, last: bool) -> np.ndarray:
        """Points from ``start`` to ``end`` (ends kept): evenly spaced along one axis, the first
        (``last``: the final) content pixel along the other."""
        t = np.linspace(0.0, 1.0, count + 1)
        ax = 0 if along_x else 1
        pos = start[ax] + t * (end[ax] - start[ax])
        lines = inside[:, np.round(pos).astype(int)].T if along_x else inside[np.round(pos).astype(int)]
        size = lines.shape[1]
        other = (size - 1 - lines[:, ::-1].argmax(axis=1)) if last else lines.argmax(axis=1)
        edge = np.stack([pos, other], 1) if along_x else np.stack([other, pos], 1)
        edge = edge.astype(np.float64)
        edge[0], edge[-1] = start, end
        return edge

    top = profile(tl, tr, cols, along_x=True, last=False)
    bottom = profile(bl, br, cols, along_x=True, last=True)
    left = profile(tl, bl, rows, along_x=False, last=False)
    right = profile(tr, br, rows, along_x=False, last=True)
    return top, bottom, left, right


def panorama_region(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """The content region of a random panorama as stitching software makes it: a uint8 (H, W)
    mask, 255 = content.

    Like OpenCV's ``Stitcher`` (spherical warper): 2-4 views (field of view 40-70 degrees,
    landscape or portrait) taken while the camera turns (20-50% overlap, pitch and roll
    jitter of a hand-held camera), each view's rectangle mapped onto the sphere; the union's
    bounding box is the panorama, scaled to the canvas (as the network sees any panorama).
    Its outline has slanted and slightly curved edges, deep notches where views meet, and
    wedges at the corners. A canvas wider (or taller) than 2:1 gets as many views as its
    aspect ratio needs, so that a wide panorama is not a squeezed near-square one.

    Example:
        >>> region = panorama_region(np.random.default_rng(0), 60, 360)   # a 6:1 panorama
        >>> region.shape, bool(region[30, 60:300].all()), 0.7 < float(region.mean()) / 255 < 1.0
        ((60, 360), True, True)
    """
    n = int(rng.integers(2, 5))
    fov = math.radians(rng.uniform(40.0, 70.0))
    aspect = 0.75 if rng.random() < 0.75 else 4.0 / 3.0  # view height / width
    f = 0.5 / math.tan(fov / 2.0)  # view width = 1
    overlap = rng.uniform(0.2, 0.5)
    n = panorama_views(n, max(width / height, height / width), aspect, overlap)
    tall = height > 2 * width
    t = np.linspace(0.0, 1.0, 24)
    side = np.concatenate([
        np.stack([t, 0 * t], 1), np.stack([0 * t + 1, t], 1), np.stack([1 - t, 0 * t + 1], 1), np.stack([0 * t, 1 - t], 1),
    ])  # the unit square's boundary, (x, y)
    pitch = 0.0
    outlines = []
    for i in range(n):
        yaw = i * fov * (1.0 - overlap)
        pitch += math.radians(rng.normal(0.0, 3.0))
        roll = math.radians(rng.normal(0.0, 3.0))
        rays = np.stack([(side[:, 0] - 0.5), (side[:, 1] - 0.5) * aspect, np.full(len(side), f)], 1)
        rot = rotations(np.array([[0.0, 0.0, roll]]))[0]
        rot = rotations(np.array([[pitch, 0.0, 0.0]]))[0] @ rot
        rot = rotations(np.array([[0.0, yaw, 0.0]]))[0] @ rot
        d = rays @ rot.T
        theta = np.arctan2(d[:, 0], d[:, 2])
        phi = np.arctan2(d[:, 1], np.hypot(d[:, 0], d[:, 2]))
        outline = np.stack([theta, phi], 1)
        outlines.append(outline[:, ::-1] if tall else outline)  # a vertical panorama: the wide one turned
    return _fill_views(outlines, height, width)


def panorama_views(drawn: int, ratio: float, view_aspect: float, overlap: float) -> int:
    """Views of a panorama of long/short side ``ratio``: ``drawn`` (2-4) up to 2:1, else the count
    whose union of views (height/width ``view_aspect``, ``overlap`` shared) is about ``ratio`` long.

    Example:
        >>> panorama_views(3, 1.33, 0.75, 0.3), panorama_views(3, 6.0, 0.75, 0.3)
        (3, 6)
    """
    if ratio <= 2.0:
        return drawn
    return max(2, round(1.0 + (ratio * view_aspect - 1.0) / (1.0 - overlap)))


def stitched_outline_mesh(
    rng: np.random.Generator,
    height: int,
    width: int,
    rows: int = STITCHED_MESH[0],
    cols: int = STITCHED_MESH[1],
    max_tilt: float = 0.14,
    region: np.ndarray | None = None,
) -> np.ndarray:
    """A mesh that maps the rectangle onto a stitched-panorama-shaped region (:func:`stitched_region`,
    or ``region``: a uint8 (H, W) mask, 255 = content, e.g. :func:`panorama_region`).

    The region's outline is split into four edges at the points nearest the canvas corners
    and the rectangle's boundary vertices are spread evenly along them, so its border follows
    the region's straight edges, wedges and concave corners (to the resolution of the mesh);
    the interior follows by Coons interpolation. Use a fine mesh (cells of ~32 px).

    Returns:
        mesh (rows+1, cols+1, 2) float64, (x, y) input pixels for :func:`stablemotion.core.flow.mesh_to_flow`.
    """
    if region is None:
        region = stitched_region(rng, height, width, max_tilt)
    if max(height / width, width / height) > 2.0:
        top, bottom, left, right = _profile_edges(region, rows, cols)
    else:
        top, bottom, left, right = _outline_edges(region, rows, cols)
    mesh = _coons(top, bottom, left, right)
    mesh[..., 0] = np.clip(mesh[..., 0], 0.0, width - 1.0)
    mesh[..., 1] = np.clip(mesh[..., 1], 0.0, height - 1.0)
    return mesh


def folded_cells(mesh: np.ndarray) -> int:
    """Cells of ``mesh`` ((rows+1, cols+1, 2), (x, y)) that are not convex quads in the mesh's own
    orientation: where a per-cell homography (:func:`~stablemotion.core.flow.mesh_to_flow`) folds or explodes.

    Example:
        >>> from stablemotion.core.flow import rigid_mesh
        >>> mesh = rigid_mesh(2, 2, 10, 10)
        >>> folded_cells(mesh), folded_cells(mesh[:, ::-1])
        (0, 4)
    """
    corners = [mesh[:-1, :-1], mesh[:-1, 1:], mesh[1:, 1:], mesh[1:, :-1]]
    turns = []
    for k in range(4):
        a, b, c = corners[k], corners[(k + 1) % 4], corners[(k + 2) % 4]
        e1, e2 = b - a, c - b
        turns.append(e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0])
    return int((np.stack(turns).min(axis=0) <= 0).sum())


#: Border styles of :func:`make_rectangling_sample`.
RECTANGLING_STYLES = RECTANGLING_STYLE_NAMES


@dataclass
class RectanglingSample:
    """One synthetic SIR sample (numpy, as written to disk).

    Attributes:
        input: uint8 (H, W, 3), the stitched-looking image; black (or white) outside the content.
        mask: uint8 (H, W), 255 where ``input`` has content, else 0.
        gt: uint8 (H, W, 3), the rectangular image.
        flow: float32 (H, W, 2), pixels, backward: ``gt(p) = input(p + flow(p))`` (border padding).
        mesh: float64 (rows+1, cols+1, 2), the input-pixel positions of the rigid gt mesh.
    """

    input: np.ndarray
    mask: np.ndarray
    gt: np.ndarray
    flow: np.ndarray
    mesh: np.ndarray


def make_rectangling_sample(
    photo: np.ndarray,
    rng: np.random.Generator,
    rows: int = ROWS,
    cols: int = COLS,
    max_inset: float = MAX_INSET,
    margin: float = 1.0,
    style: str = "inset",
    white_fraction: float = 0.0,
) -> RectanglingSample:
    """Make a synthetic rectangling sample whose gt is ``photo``.

    Args:
        photo: uint8 (H, W, 3), the rectangular ground truth (already cropped/filtered).
        rng: random generator for the mesh.
        rows, cols, max_inset: see :func:`random_rectangling_mesh` (``"inset"``); for
            ``"stitched"`` ``max_inset`` is the largest corner move (:func:`stitched_region`)
            and the mesh should be fine (e.g. 12 x 16 at 384 x 512).
        margin: the content region extends this many pixels (of gt coordinates) beyond
            the photo, filled with its edge pixels, so that bilinear re-warping at the
            region's edge never reads black.
        style: ``"inset"`` (smooth irregular insets), ``"stitched"`` (the outline of 2-4
            projectively warped views: straight-edged wedges, concave corners, thin bands) or
            ``"panorama"`` (the outline of 2-4 views of a turning camera on the sphere, as
            stitching software makes it: :func:`panorama_region`).
        white_fraction: probability that the empty area is white instead of black (some
            stitching tools fill with white).

    Returns:
        :class:`RectanglingSample` with ``warp(input, flow, "border") ~= gt``.
    """
    if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
        raise ValueError(f"photo must be uint8 (H, W, 3), got {photo.dtype} {photo.shape}")
    if style not in RECTANGLING_STYLES:
        raise ValueError(f"style must be one of {RECTANGLING_STYLES}, got {style!r}")
    h, w = photo.shape[:2]
    if style == "stitched":
        mesh = stitched_outline_mesh(rng, h, w, rows=rows, cols=cols, max_tilt=max_inset)
    elif style == "panorama":
        mesh = stitched_outline_mesh(rng, h, w, rows=rows, cols=cols, region=panorama_region(rng, h, w))
        for _ in range(16 if max(h / w, w / h) > 2.0 else 0):  # wide: draw again until no cell folds
            if not folded_cells(mesh):
                break
            mesh = stitched_outline_mesh(rng, h, w, rows=rows, cols=cols, region=panorama_region(rng, h, w))
    else:
        mesh = random_rectangling_mesh(rng, h, w, rows=rows, cols=cols, max_inset=max_inset)
    fill = 255 if white_fraction > 0 and rng.random() < white_fraction else 0
    flow = mesh_to_flow(mesh, h, w)  # (2, H, W) float32: gt pixel -> input pixel
    inv, residual = invert_flow(flow)
    src = pixel_grid(h, w) + inv.permute(1, 2, 0).numpy()  # input pixel -> gt pixel
    inside = (
        (src[..., 0] >= -margin) & (src[..., 0] <= w - 1 + margin)
        & (src[..., 1] >= -margin) & (src[..., 1] <= h - 1 + margin)
        & (residual[0].numpy() < 0.05)
    )
    rendered = remap(photo, src, cv2.BORDER_REPLICATE)
    mask = inside.astype(np.uint8) * 255
    image = np.where(inside[..., None], np.clip(np.round(rendered), 0, 255), fill).astype(np.uint8)
    flow_hw2 = flow.permute(1, 2, 0).numpy().astype(np.float32)
    return RectanglingSample(input=image, mask=mask, gt=photo.copy(), flow=flow_hw2, mesh=mesh)


def generate(
    photo: np.ndarray, rng: np.random.Generator, size: tuple[int, int], prefilter_sigma: float, **options: Any
) -> RectanglingSample:
    """The generator of :data:`SYNTH`: a random crop of ``photo`` is the gt."""
    crop = random_photo_crop(photo, size, rng, prefilter_sigma=prefilter_sigma)
    return make_rectangling_sample(crop, rng, **options)


def identity_rectangling_sample(sample: RectanglingSample) -> RectanglingSample:
    """The identity version of a SIR sample: the full rectangle as input (no empty border),
    an all-content mask, zero flow and the regular mesh.

    Example:
        >>> from stablemotion.data.synthesis import make_sample
        >>> s = make_sample("sir", seed=0, index=0, size=(24, 32), photos=["procedural"])
        >>> i = identity_rectangling_sample(s)
        >>> bool((i.input == s.gt).all()), int(i.mask.min()), float(abs(i.flow).max())
        (True, 255, 0.0)
    """
    h, w = sample.gt.shape[:2]
    rows, cols = sample.mesh.shape[0] - 1, sample.mesh.shape[1] - 1
    xs, ys = np.meshgrid(np.linspace(0.0, w - 1.0, cols + 1), np.linspace(0.0, h - 1.0, rows + 1))
    return RectanglingSample(input=sample.gt.copy(), mask=np.full((h, w), 255, np.uint8), gt=sample.gt,
                             flow=np.zeros_like(sample.flow), mesh=np.stack((xs, ys), axis=-1))


def write_dird_sample(sample: RectanglingSample, root: Path, name: str, split: str, ext: str, quality: int) -> None:
    """The DIR-D layout: ``SPLIT/{input,mask,gt}/NAME.EXT`` and ``SPLIT/flow/NAME.npy``."""
    save_image_file(sample.input, root / "input" / f"{name}.{ext}", quality)
    save_image_file(np.repeat(sample.mask[..., None], 3, axis=2), root / "mask" / f"{name}.{ext}", quality)
    save_image_file(sample.gt, root / "gt" / f"{name}.{ext}", quality)
    write_flow(root / "flow" / f"{name}.npy", sample.flow)


SYNTH = SynthSpec(
    name="rectangling",
    stream=1,
    generate=generate,
    layout=Layout("dird", ("input", "mask", "gt", "flow"), write_dird_sample,
                  describe="{out}/{split}/{{input,mask,gt,flow}}"),
    options=(
        SynthOption("rows", ROWS, "mesh rows", int, low=1, flag=""),
        SynthOption("cols", COLS, "mesh columns", int, low=1, flag=""),
        SynthOption("max_inset", MAX_INSET, "largest boundary inset, fraction of size"),
        SynthOption("style", "inset", "border shapes: inset (smooth irregular insets), stitched (outlines of 2-4 "
                    "projectively warped views) or panorama (views of a turning camera on the sphere, as "
                    "stitching software makes them)", str, choices=RECTANGLING_STYLE_NAMES),
        SynthOption("white_fraction", 0.0, "share of samples whose empty area is white instead of black (default 0)",
                    low=0.0, high=1.0),
    ),
    aliases=("sir",),
    size=(384, 512),
    split="training",
    identity=identity_rectangling_sample,
    help="stitched-image rectangling samples in the DIR-D layout (input, mask, gt, flow)",
)

declare_task(SIR, SYNTH, PROTOCOL)


def write_rectangling_dataset(
    out: PathLike,
    num: int,
    size: tuple[int, int] = SYNTH.size,
    split: str = SYNTH.split,
    seed: int = 0,
    photos: PathLike | Sequence[PathLike] | None = None,
    ext: str = "jpg",
    quality: int = 95,
    prefilter_sigma: float = PREFILTER_SIGMA,
    rows: int = ROWS,
    cols: int = COLS,
    max_inset: float = MAX_INSET,
    start: int = 0,
    workers: int = 1,
    overwrite: bool = False,
    progress: Callable[[Iterable[str], int], Iterable[str]] | None = None,
    style: str = "inset",
    white_fraction: float = 0.0,
) -> list[str]:
    """Write ``num`` synthetic rectangling samples in the DIR-D layout.

    Files: ``OUT/SPLIT/{input,mask,gt}/NNNNN.EXT`` (masks are 3-channel, white = content,
    as DIR-D) and ``OUT/SPLIT/flow/NNNNN.npy`` ((H, W, 2) float32, pixels, backward:
    ``gt(p) = input(p + flow(p))``). Sample ``i`` depends only on ``(seed, i)``.

    Args:
        out: dataset root (created).
        num: number of samples; names are ``start .. start+num-1``, zero-padded to 5 digits.
        size: (H, W) in pixels (DIR-D: 384 x 512).
        photos: a folder of photos, a list of photo files, or None for the bundled photos.
        ext: "jpg" (DIR-D's format; lossy, ``quality``) or "png" (lossless).
        prefilter_sigma: Gaussian low-pass of the photo crops, pixels.
        rows, cols, max_inset: mesh parameters (:func:`random_rectangling_mesh`).
        style, white_fraction: border style and share of white empty areas
            (:func:`make_rectangling_sample`; ``"stitched"``: outlines of real stitched panoramas).
        workers: processes; 1 runs in this process.
        overwrite: allow writing into non-empty folders.
        progress: called as ``progress(iterator, total)`` on the finished sample names;
            e.g. ``lambda it, n: tqdm(it, total=n)``.

    Returns:
        The sample names written, sorted.
    """
    return write_dataset(
        SYNTH.name, out, num, size=size, split=split, seed=seed, photos=photos, ext=ext, quality=quality,
        prefilter_sigma=prefilter_sigma, start=start, workers=workers, overwrite=overwrite, progress=progress,
        rows=rows, cols=cols, max_inset=max_inset, style=style, white_fraction=white_fraction,
    )

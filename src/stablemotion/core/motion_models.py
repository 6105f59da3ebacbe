"""Low-dimensional motion families and their robust fit to a dense backward flow.

Every family describes the correcting flow of one task with a handful of parameters; fitting
it to a predicted flow says how far the prediction is from a physically plausible correction
(the fit's residual) and projecting onto it (the fitted flow) removes what the family cannot
explain. Conventions as in :mod:`stablemotion.core.flow`: a flow is ``(B, 2, H, W)`` /
``(2, H, W)`` torch or ``(H, W, 2)`` numpy, pixels, backward (``target(p) = input(p + flow(p))``).
Normalised coordinates: ``x = 2 col / (W - 1) - 1`` and ``t = 2 row / (H - 1) - 1``, both in
``[-1, 1]``; ``c = ((W - 1) / 2, (H - 1) / 2)`` is the frame centre.

Families (:data:`MOTION_MODELS`):

* ``"rolling_shutter"`` (12 parameters): ``u = a0 + a1 t + a2 t^2 + x (b0 + b1 t + b2 t^2)``
  and the same for ``v`` (parameters ``[a0 a1 a2 b0 b1 b2]`` of ``u``, then of ``v``, pixels).
* ``"rotation"`` (1 parameter, the tilt ``theta`` in radians): the *straighten* map
  ``M(p) = c + s R(-theta) (p - c)``, ``s`` = :func:`fill_scale` (the frame stays filled),
  flow ``M(p) - p`` (:func:`straighten_flow`). ``theta`` comes from a linear least-squares
  similarity (plus a translation, which is discarded) about ``c``.
* ``"lens"`` (9 parameters): radial about ``c``, ``M(p) = c + (p - c) g(r)``,
  ``g = k0 + k1 r^2 + k2 r^4``, ``r = |p - c|`` over the half diagonal (parameters
  ``k0 - 1, k1, k2``, so a zero flow has zero parameters; ``k0`` is in ``derived``), plus a
  shift (2, pixels) and the first-order terms of a distortion centre moved off ``c``
  (4: ``(r^2, 0)``, ``(qx^2, qx qy)``, ``(0, r^2)``, ``(qx qy, qy^2)`` scaled to pixels).
  Radial-only leaves 19% of the lens generator's flows (its centre is jittered by 5%)
  unexplained; with the centre terms 2% (docs/method.md).

The fit (:func:`fit_motion_model`) is iteratively re-weighted least squares (Huber rounds,
then Tukey's biweight) on a subsampled grid, evaluated on the full grid; it runs batched in
float64 torch. Pure torch / numpy; knows nothing of tasks or models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .flow_checks import as_batched_flow, check_flow

__all__ = [
    "MOTION_MODELS",
    "MotionFit",
    "fill_scale",
    "straighten_flow",
    "fit_motion_model",
    "motion_model_flow",
]

#: The motion families :func:`fit_motion_model` fits, with their parameter counts.
MOTION_MODELS: dict[str, int] = {"rolling_shutter": 12, "rotation": 1, "lens": 9}

#: Points the fit uses at most (the flow is subsampled on a regular grid down to about this).
_FIT_POINTS = 4096


def fill_scale(size: tuple[int, int], angle_deg: float) -> float:
    """The zoom ``s`` that keeps a frame filled when it is straightened by ``angle_deg``.

    ``s = min(a / (a |cos| + b |sin|), b / (a |sin| + b |cos|))`` with ``a, b = (W-1)/2, (H-1)/2``
    the half sizes: the rotated, ``s``-scaled output frame then lies inside the input frame.

    Args:
        size: (H, W) pixels.
        angle_deg: the tilt, degrees (either sign).

    Returns:
        ``s`` in ``(0, 1]``; 1 for a zero angle.

    Example:
        >>> fill_scale((384, 512), 0.0), round(fill_scale((384, 512), 5.0), 4)
        (1.0, 0.8989)
    """
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"size must be (H, W) with positive H and W, got {tuple(size)}")
    a, b = max((w - 1) / 2.0, 1e-12), max((h - 1) / 2.0, 1e-12)
    theta = math.radians(float(angle_deg))
    cos, sin = abs(math.cos(theta)), abs(math.sin(theta))
    return float(min(a / (a * cos + b * sin), b / (a * sin + b * cos)))


def straighten_flow(size: tuple[int, int], angle_deg: float) -> np.ndarray:
    """The backward flow that straightens a frame tilted by ``angle_deg`` and keeps it filled.

    Output pixel ``p`` shows input pixel ``M(p) = c + s R(-theta) (p - c)`` (``c`` the frame
    centre, ``R`` the 2-D rotation with x right and y down, ``s`` = :func:`fill_scale`);
    flow ``= M(p) - p``. The sign follows :mod:`stablemotion.data.synthesis.rotation`:
    positive = the content appears rotated counter-clockwise in the input.

    Args:
        size: (H, W) pixels.
        angle_deg: the input's tilt, degrees.

    Returns:
        float32 (H, W, 2), pixels (u, v).

    Example:
        >>> f = straighten_flow((5, 7), 0.0)
        >>> f.shape, f.dtype.name, float(abs(f).max())
        ((5, 7, 2), 'float32', 0.0)
        >>> straighten_flow((101, 101), 90.0)[50, 100].round(3).tolist()  # the right edge shows the top edge
        [-50.0, -50.0]
    """
    h, w = int(size[0]), int(size[1])
    s = fill_scale((h, w), angle_deg)
    theta = math.radians(float(angle_deg))
    cos, sin = math.cos(theta), math.sin(theta)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float64) - cx, np.arange(h, dtype=np.float64) - cy)
    # R(-theta) = [[cos, sin], [-sin, cos]]
    u = s * (cos * gx + sin * gy) - gx
    v = s * (-sin * gx + cos * gy) - gy
    return np.stack((u, v), axis=-1).astype(np.float32)


@dataclass(frozen=True)
class MotionFit:
    """A motion family fitted to a flow (:func:`fit_motion_model`).

    Attributes:
        kind: the family (a key of :data:`MOTION_MODELS`).
        flow: the fitted (projected) flow, the input's layout and type (torch ``(B, 2, H, W)``
            / ``(2, H, W)`` float32, or numpy ``(H, W, 2)`` float32), pixels.
        params: the parameters, torch ``(B, P)`` float64 (``(P,)`` without a batch axis) or
            numpy ``(P,)`` (see the module docstring for their meaning).
        residual: mean ``|flow - fitted|`` over the pixels (weighted by ``weights``), pixels:
            torch ``(B,)`` or a float for an unbatched input.
        magnitude: mean ``|flow|``, pixels, same type as ``residual``.
        derived: per-family quantities, same type as ``residual``: ``angle_deg`` and
            ``scale`` (rotation), ``k0``, ``k1``, ``k2`` (lens), ``shift_px`` (the mean
            displacement, rolling shutter).
    """

    kind: str
    flow: Any
    params: Any
    residual: Any
    magnitude: Any
    derived: dict[str, Any] = field(default_factory=dict)

    def relative_residual(self) -> Any:
        """``residual / max(magnitude, 1e-6)``: 0 = the flow is exactly the family, ~1 = unrelated.

        Example:
            >>> fit = fit_motion_model(np.zeros((8, 8, 2), np.float32), "lens")
            >>> fit.relative_residual()
            0.0
        """
        if isinstance(self.magnitude, torch.Tensor):
            return self.residual / self.magnitude.clamp_min(1e-6)
        return float(self.residual) / max(float(self.magnitude), 1e-6)


def _coords(h: int, w: int, ys: torch.Tensor, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred pixel coordinates (x - cx, y - cy) of the grid ``ys x xs``, flattened (N,)."""
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return (gx - (w - 1) / 2.0).reshape(-1), (gy - (h - 1) / 2.0).reshape(-1)


def _basis(kind: str, qx: torch.Tensor, qy: torch.Tensor, h: int, w: int) -> list[tuple[Any, Any]]:
    """The linear family ``flow = sum_k p_k (bu_k, bv_k)`` at centred pixel coordinates.

    ``qx``, ``qy``: broadcastable float64 tensors (pixels from the centre). Returns one
    ``(bu, bv)`` pair per parameter; ``None`` stands for zero. Rotation: the similarity about
    ``c`` plus a translation (``u = A qx + B qy + tx``, ``v = -B qx + A qy + ty``).
    """
    if kind == "rolling_shutter":
        x, t = qx / max((w - 1) / 2.0, 1e-12), qy / max((h - 1) / 2.0, 1e-12)
        one = torch.ones_like(t)
        basis = (one, t, t * t, x, x * t, x * t * t)
        return [(bk, None) for bk in basis] + [(None, bk) for bk in basis]
    if kind == "rotation":
        one = torch.ones_like(qx + qy)
        return [(qx, qy), (qy, -qx), (one, None), (None, one)]
    if kind == "lens":
        hd = max(math.hypot((w - 1) / 2.0, (h - 1) / 2.0), 1e-12)
        r2 = (qx * qx + qy * qy) / (hd * hd)
        one = torch.ones_like(r2)
        return [
            (qx, qy), (qx * r2, qy * r2), (qx * r2 * r2, qy * r2 * r2),  # radial about c
            (one, None), (None, one),  # a shift
            (hd * r2, None), (qx * qx / hd, qx * qy / hd),  # first order of a distortion centre
            (None, hd * r2), (qx * qy / hd, qy * qy / hd),  # moved by (dx, dy) from c
        ]
    raise ValueError(f"unknown motion model {kind!r}; expected one of {sorted(MOTION_MODELS)}")


def _design(kind: str, qx: torch.Tensor, qy: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The linear model ``flow = A @ p`` at points (N,): A is (2N, P) (the u rows, then the v rows)."""
    zero = torch.zeros_like(qx)
    cols = [torch.cat((zero if bu is None else bu, zero if bv is None else bv))
            for bu, bv in _basis(kind, qx, qy, h, w)]
    return torch.stack(cols, 1)


def _irls(a: torch.Tensor, y: torch.Tensor, base: torch.Tensor, iters: int, loss: str) -> torch.Tensor:
    """Robust weighted least squares ``y ~ A p`` per batch item.

    a: (2N, P); y: (B, 2N) (u rows then v rows); base: (B, N) weights >= 0. Returns p (B, P).
    The robust weight of a point uses its end-point residual ``|(ru, rv)|``; the scale is
    1.4826 x the weighted median residual (at least 0.01 px). Huber rounds first (convex, a
    safe start), then Tukey's biweight (outliers get weight 0) when ``loss == "tukey"``.
    """
    n = base.shape[1]
    p_count = a.shape[1]
    ridge = 1e-9 * torch.eye(p_count, dtype=a.dtype)
    wts = base
    params = torch.zeros(y.shape[0], p_count, dtype=a.dtype)
    for it in range(max(1, iters)):
        w2 = torch.cat((wts, wts), 1)  # (B, 2N)
        aw = a.unsqueeze(0) * w2.unsqueeze(-1)  # (B, 2N, P)
        normal = aw.transpose(1, 2) @ a + ridge * (1.0 + w2.sum(1)).view(-1, 1, 1)
        rhs = (aw.transpose(1, 2) @ y.unsqueeze(-1)).squeeze(-1)
        params = torch.linalg.solve(normal, rhs)
        if it + 1 == max(1, iters):
            break
        res = y - params @ a.T  # (B, 2N)
        r = torch.sqrt(res[:, :n] ** 2 + res[:, n:] ** 2)
        scale = torch.stack([
            _weighted_median(r[i], base[i]) for i in range(r.shape[0])
        ]).mul(1.4826).clamp_min(1e-2).unsqueeze(1)
        if loss == "huber" or it < max(1, iters) // 2:
            k = 1.345 * scale
            robust = torch.where(r <= k, torch.ones_like(r), k / r.clamp_min(1e-12))
        else:
            c = 4.685 * scale
            robust = (1.0 - (r / c).clamp(max=1.0) ** 2) ** 2
        wts = base * robust
        # an all-outlier item falls back to its base weights
        dead = wts.sum(1) <= 1e-9 * base.sum(1).clamp_min(1e-12)
        if bool(dead.any()):
            wts = torch.where(dead.unsqueeze(1), base, wts)
    return params


def _weighted_median(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Median of ``values`` (N,) under weights >= 0 (the plain median when they are all 0)."""
    if float(weights.sum()) <= 0:
        return values.median()
    order = torch.argsort(values)
    cum = torch.cumsum(weights[order], 0)
    idx = int(torch.searchsorted(cum, 0.5 * cum[-1]).clamp(max=len(values) - 1))
    return values[order[idx]]


def _evaluate(kind: str, params: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The family's flow (B, 2, H, W) float64 for parameters (B, P), and the derived quantities."""
    b = params.shape[0]
    if kind == "rotation":
        theta = params[:, 0]
        angles = torch.rad2deg(theta)
        flows = [torch.from_numpy(straighten_flow((h, w), float(ang)).astype(np.float64)).permute(2, 0, 1)
                 for ang in angles.tolist()]
        scale = torch.tensor([fill_scale((h, w), float(ang)) for ang in angles.tolist()], dtype=torch.float64)
        return torch.stack(flows), {"angle_deg": angles, "scale": scale}
    qx = (torch.arange(w, dtype=torch.float64) - (w - 1) / 2.0).view(1, w)
    qy = (torch.arange(h, dtype=torch.float64) - (h - 1) / 2.0).view(h, 1)
    flow = torch.zeros(b, 2, h, w, dtype=torch.float64)
    for k, pair in enumerate(_basis(kind, qx, qy, h, w)):
        coef = params[:, k].view(b, 1, 1)
        for ch, bk in enumerate(pair):
            if bk is not None:
                flow[:, ch] += coef * bk
    if kind == "lens":
        return flow, {"k0": params[:, 0] + 1.0, "k1": params[:, 1], "k2": params[:, 2]}
    return flow, {"shift_px": torch.sqrt(flow[:, 0] ** 2 + flow[:, 1] ** 2).mean(dim=(1, 2))}


def motion_model_flow(kind: str, params: Any, size: tuple[int, int]) -> np.ndarray:
    """The flow of a family for given parameters (the inverse of the fit), numpy.

    Args:
        kind: a key of :data:`MOTION_MODELS`.
        params: (P,) parameters (see the module docstring).
        size: (H, W) pixels.

    Returns:
        float32 (H, W, 2), pixels.

    Example:
        >>> p = np.zeros(12); p[0] = 1.5  # a0 of u: a uniform shift right
        >>> motion_model_flow("rolling_shutter", p, (4, 6))[2, 3].tolist()
        [1.5, 0.0]
    """
    if kind not in MOTION_MODELS:
        raise ValueError(f"unknown motion model {kind!r}; expected one of {sorted(MOTION_MODELS)}")
    p = torch.as_tensor(np.asarray(params, dtype=np.float64)).reshape(1, -1)
    if p.shape[1] != MOTION_MODELS[kind]:
        raise ValueError(f"a {kind} motion has {MOTION_MODELS[kind]} parameters, got {p.shape[1]}")
    flow, _ = _evaluate(kind, p, int(size[0]), int(size[1]))
    return flow[0].permute(1, 2, 0).numpy().astype(np.float32)


def _subsample(h: int, w: int, points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices of a regular grid of about ``points`` points (stride >= 1)."""
    stride = max(1, int(math.ceil(math.sqrt(h * w / max(points, 1)))))
    ys = torch.arange(stride // 2 if h > stride else 0, h, stride)
    xs = torch.arange(stride // 2 if w > stride else 0, w, stride)
    return ys, xs


def fit_motion_model(
    flow: torch.Tensor | np.ndarray,
    kind: str,
    weights: torch.Tensor | np.ndarray | None = None,
    iters: int = 8,
    loss: str = "tukey",
    points: int = _FIT_POINTS,
) -> MotionFit:
    """Robustly fit a motion family to a dense backward flow and project the flow onto it.

    Args:
        flow: torch (B, 2, H, W) / (2, H, W) or numpy (H, W, 2), pixels.
        kind: ``"rolling_shutter"``, ``"rotation"`` or ``"lens"`` (:data:`MOTION_MODELS`).
        weights: optional confidences >= 0, (H, W), (B, H, W) or (B, 1, H, W) (e.g. a valid
            mask); they weight both the fit and the reported residual / magnitude.
        iters: least-squares rounds (1 = plain weighted least squares; the first half use
            Huber weights, the rest ``loss``).
        loss: ``"tukey"`` (outliers get weight 0) or ``"huber"``.
        points: the fit uses about this many points of a regular subgrid (the flow is
            evaluated on the full grid).

    Returns:
        :class:`MotionFit` (fitted flow in the input's layout, parameters, residual and
        magnitude in pixels, derived quantities).

    Example:
        >>> f = straighten_flow((48, 64), 4.0)
        >>> fit = fit_motion_model(f, "rotation")
        >>> round(fit.derived["angle_deg"], 3), fit.residual < 1e-3, fit.flow.shape
        (4.0, True, (48, 64, 2))
        >>> fit_motion_model(torch.zeros(2, 2, 8, 8), "rolling_shutter").params.abs().max().item()
        0.0
    """
    if kind not in MOTION_MODELS:
        raise ValueError(f"unknown motion model {kind!r}; expected one of {sorted(MOTION_MODELS)}")
    if loss not in ("tukey", "huber"):
        raise ValueError(f"loss must be 'tukey' or 'huber', got {loss!r}")
    check_flow(flow)
    is_numpy = isinstance(flow, np.ndarray)
    if is_numpy:
        batched, squeeze = torch.from_numpy(np.ascontiguousarray(flow)).permute(2, 0, 1).unsqueeze(0), True
    else:
        batched, squeeze = as_batched_flow(flow)
    device = batched.device
    bsz, _, h, w = batched.shape
    wmap = _weight_map(weights, bsz, h, w)
    ys, xs = _subsample(h, w, points)
    qx, qy = _coords(h, w, ys.to(torch.float64), xs.to(torch.float64))
    a = _design(kind, qx, qy, h, w)
    sub = batched.detach()[:, :, ys][:, :, :, xs].to("cpu", torch.float64).reshape(bsz, 2, -1)
    y = torch.cat((sub[:, 0], sub[:, 1]), 1)
    base = wmap[:, ys][:, :, xs].reshape(bsz, -1)
    params = _irls(a, y, base, iters, loss)
    if kind == "rotation":
        # similarity (A, B) -> its angle: the straighten map's linear part is s R(-theta)
        params = torch.atan2(params[:, 1], 1.0 + params[:, 0]).unsqueeze(1)
    fitted, derived = _evaluate(kind, params, h, w)
    fitted = fitted.to(torch.float32)
    f32 = batched.detach().to("cpu", torch.float32)
    diff = f32 - fitted
    err = torch.sqrt(diff[:, 0] ** 2 + diff[:, 1] ** 2).to(torch.float64)
    mag = torch.sqrt(f32[:, 0] ** 2 + f32[:, 1] ** 2).to(torch.float64)
    if weights is None:
        residual, magnitude = err.mean(dim=(1, 2)), mag.mean(dim=(1, 2))
    else:
        total = wmap.sum(dim=(1, 2)).clamp_min(1e-12)
        residual = (err * wmap).sum(dim=(1, 2)) / total
        magnitude = (mag * wmap).sum(dim=(1, 2)) / total
    if is_numpy:
        return MotionFit(kind, fitted[0].permute(1, 2, 0).numpy().astype(np.float32), params[0].numpy(),
                         float(residual[0]), float(magnitude[0]), {k: float(v[0]) for k, v in derived.items()})
    out = fitted.to(device=device)
    if squeeze:
        return MotionFit(kind, out[0], params[0], float(residual[0]), float(magnitude[0]),
                         {k: float(v[0]) for k, v in derived.items()})
    return MotionFit(kind, out, params, residual, magnitude, derived)


def _weight_map(weights: torch.Tensor | np.ndarray | None, b: int, h: int, w: int) -> torch.Tensor:
    """Weights as float64 (B, H, W) >= 0 (ones when None)."""
    if weights is None:
        return torch.ones(1, 1, 1, dtype=torch.float64).expand(b, h, w)
    wt = torch.as_tensor(np.asarray(weights) if isinstance(weights, np.ndarray) else weights)
    wt = wt.detach().to("cpu", torch.float64)
    if wt.ndim == 4 and wt.shape[1] == 1:
        wt = wt[:, 0]
    if wt.ndim == 2:
        wt = wt.unsqueeze(0)
    if wt.ndim != 3 or wt.shape[-2:] != (h, w) or wt.shape[0] not in (1, b):
        raise ValueError(f"weights must be (H, W), (B, H, W) or (B, 1, H, W) with H, W = {h}, {w}, "
                         f"got {tuple(wt.shape)}")
    if not bool(torch.isfinite(wt).all()) or bool((wt < 0).any()):
        raise ValueError("weights must be finite and >= 0")
    return wt.expand(b, h, w).clone()

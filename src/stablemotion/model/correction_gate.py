"""The correction gate: how well a predicted correction is supported, and the one rule that
decides whether it is applied ("do no harm").

:func:`assess_members` scores every image's predicted flow at the processing resolution,
before the ensemble, from three kinds of support (each a score in [0, 1]):

* **magnitude**: the mean ``|flow|`` in pixels of a 384x512 frame (the flow is rescaled by
  ``640 / its diagonal``) against :data:`MIN_FLOW_PX` (score ``magnitude / (2 * MIN_FLOW_PX)``,
  at most 1); for the rotation task the fitted angle against :data:`MIN_ANGLE_DEG` instead. A
  flow below the floor has nothing to correct.
* **agreement** with the task's motion family (``TaskSpec.motion_model``,
  :func:`stablemotion.core.motion_models.fit_motion_model`; SIR: the smooth mesh of
  :func:`stablemotion.core.mesh.fit_mesh_flow`): score ``1 - residual / magnitude``.
* **ensemble agreement** (E > 1 members): score ``1 - spread / magnitude`` (the members' mean
  distance from their median).

The confidence is the weakest of them (:class:`Support`); an image whose confidence is below
the threshold is left unchanged, with a one-line reason naming the weakest support
(:func:`gate_reason`, the only copy of the rule: the pipeline applies it, and the rectify
service, the CLI and the app report it). :data:`DEFAULT_CORRECTION_GATE` is the threshold
``stablemotion rectify``, the app and :func:`stablemotion.model.service.rectify` use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..core.constants import DEFAULT_CORRECTION_GATE
from ..core.ensemble import ensemble_flows, flow_uncertainty
from ..core.mesh import fit_mesh_flow
from ..core.motion_models import fit_motion_model
from ..tasks import TaskSpec

__all__ = [
    "DEFAULT_CORRECTION_GATE",
    "MIN_FLOW_PX",
    "MIN_ANGLE_DEG",
    "Support",
    "assess_members",
    "gate_reason",
    "project_members",
    "apply_gate",
    "check_gate",
]

#: Mean flow (pixels of a 384x512 frame) below which there is nothing to correct.
MIN_FLOW_PX = 0.5
#: Rotation (degrees) below which a tilt is not corrected.
MIN_ANGLE_DEG = 0.5
#: The diagonal (pixels) of the reference frame 384x512 the magnitude is measured in.
_REFERENCE_DIAGONAL = 640.0

#: How a reason names each family.
_FAMILY_WORDS = {
    "rolling_shutter": "a rolling-shutter camera motion",
    "rotation": "a rotation of the frame",
    "lens": "a radial lens distortion",
    "mesh": "a smooth mesh warp",
}


@dataclass(frozen=True)
class Support:
    """How well one image's predicted correction is supported (:func:`assess_members`).

    Attributes:
        confidence: the weakest of the scores below, in [0, 1].
        magnitude_px: mean ``|flow|``, pixels of a 384x512 frame.
        relative_residual: the family fit's residual / the flow's magnitude (0 = exactly the family).
        relative_spread: ensemble spread / magnitude, or ``None`` for one member.
        angle_deg: the fitted tilt (rotation task), else ``None``.
        family: ``"rolling_shutter"``, ``"rotation"``, ``"lens"`` or ``"mesh"``.
        weakest: which support sets the confidence: ``"magnitude"``, ``"model"`` or ``"spread"``.

    Example:
        >>> s = Support(0.2, 0.2, 0.0, None, None, "lens", "magnitude")
        >>> gate_reason(s, 0.5)
        'left unchanged: the predicted flow (0.20 px mean) is below 0.5 px: nothing to correct'
    """

    confidence: float
    magnitude_px: float
    relative_residual: float
    relative_spread: float | None
    angle_deg: float | None
    family: str
    weakest: str


def check_gate(correction_gate: float | None, name: str = "correction_gate") -> float:
    """A threshold in [0, 1] (``None`` -> 0, the gate off); ``ValueError`` naming ``name`` otherwise.

    Example:
        >>> check_gate(None), check_gate(0.5)
        (0.0, 0.5)
    """
    if correction_gate is None:
        return 0.0
    try:
        value = float(correction_gate)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1] (0 or None = off), got {correction_gate!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1] (0 or None = off), got {correction_gate!r}")
    return value


def _mesh_residual(flow: np.ndarray, cells: tuple[int, int]) -> float:
    """Mean ``|flow - smooth mesh fit|`` of an (h, w, 2) flow, pixels."""
    h, w = flow.shape[:2]
    rows, cols = max(1, min(int(cells[0]), h - 1)), max(1, min(int(cells[1]), w - 1))
    stride = max(1, int(math.sqrt(h * w / 8192.0)))
    _, dense = fit_mesh_flow(flow, rows=rows, cols=cols, stride=stride)
    return float(np.linalg.norm(flow - dense, axis=-1).mean())


def assess_members(
    members: torch.Tensor, task: TaskSpec, mesh_cells: tuple[int, int] = (12, 16)
) -> list[Support]:
    """Score each image's predicted correction from its member flows.

    Args:
        members: (B, E, 2, h, w) member flows, pixels of their grid (the processing resolution),
            before any projection.
        task: the task that ran (its ``motion_model``; ``None`` = the smooth-mesh agreement).
        mesh_cells: mesh (rows, cols) for a task without a motion family.

    Returns:
        One :class:`Support` per image.

    Example:
        >>> from stablemotion.tasks import get_task
        >>> flows = torch.zeros(2, 1, 2, 24, 32)
        >>> flows[1, :, 0] = 3.0                     # a uniform shift: a rolling-shutter motion
        >>> [round(s.confidence, 2) for s in assess_members(flows, get_task("rsc"))]
        [0.0, 1.0]
    """
    b, e, _, h, w = members.shape
    m = members.detach().float().cpu()
    flow = ensemble_flows(m) if e > 1 else m[:, 0]
    to_ref = _REFERENCE_DIAGONAL / max(math.hypot(h, w), 1e-12)
    kind = task.motion_model
    fit = fit_motion_model(flow, kind) if kind is not None else None
    spread = flow_uncertainty(m, flow).mean(dim=(1, 2, 3)) if e > 1 else None
    out = []
    for i in range(b):
        mag = float(torch.sqrt(flow[i, 0] ** 2 + flow[i, 1] ** 2).mean())
        if fit is not None:
            resid = float(fit.residual[i])
        else:
            resid = _mesh_residual(flow[i].permute(1, 2, 0).numpy(), mesh_cells)
        rel_res = resid / max(mag, 1e-6)
        rel_spread = None if spread is None else float(spread[i]) / max(mag, 1e-6)
        angle = float(fit.derived["angle_deg"][i]) if kind == "rotation" and fit is not None else None
        s_mag = min(1.0, (abs(angle) / (2 * MIN_ANGLE_DEG)) if angle is not None else mag * to_ref / (2 * MIN_FLOW_PX))
        scores = {"magnitude": s_mag, "model": min(1.0, max(0.0, 1.0 - rel_res))}
        if rel_spread is not None:
            scores["spread"] = min(1.0, max(0.0, 1.0 - rel_spread))
        weakest = min(scores, key=lambda k: scores[k])
        out.append(Support(float(scores[weakest]), mag * to_ref, rel_res, rel_spread, angle, kind or "mesh", weakest))
    return out


def gate_reason(support: Support, threshold: float) -> str:
    """The gate's rule: ``""`` (apply the correction) when ``support.confidence >= threshold``
    (or the gate is off, ``threshold <= 0``), else the one-line reason the image is left unchanged.

    Example:
        >>> s = Support(0.2, 3.0, 0.8, None, None, "rolling_shutter", "model")
        >>> gate_reason(s, 0.5)
        'left unchanged: the predicted flow disagrees with a rolling-shutter camera motion (residual 80% of its size)'
        >>> gate_reason(s, 0.0)
        ''
    """
    if threshold <= 0 or support.confidence >= threshold:
        return ""
    if support.weakest == "magnitude":
        if support.angle_deg is not None:
            return (f"left unchanged: the predicted rotation ({abs(support.angle_deg):.1f} deg) is below "
                    f"{MIN_ANGLE_DEG:g} deg")
        return (f"left unchanged: the predicted flow ({support.magnitude_px:.2f} px mean) is below "
                f"{MIN_FLOW_PX:g} px: nothing to correct")
    if support.weakest == "spread":
        return (f"left unchanged: the ensemble members disagree (spread {100 * (support.relative_spread or 0):.0f}% "
                f"of the flow's size)")
    words = _FAMILY_WORDS.get(support.family, support.family)
    return (f"left unchanged: the predicted flow disagrees with {words} "
            f"(residual {100 * support.relative_residual:.0f}% of its size)")


def project_members(members: torch.Tensor, task: TaskSpec) -> torch.Tensor:
    """Replace every member flow by its fit of the task's motion family (``"motion_model"``
    projection); a task without a family (SIR) keeps its flows.

    Args:
        members: (B, E, 2, h, w), pixels.
        task: the task that ran.

    Returns:
        Same shape, device and dtype.

    Example:
        >>> from stablemotion.tasks import get_task
        >>> flows = torch.randn(1, 2, 2, 16, 16)
        >>> out = project_members(flows, get_task("lens"))
        >>> out.shape == flows.shape, bool((project_members(flows, get_task("sir")) == flows).all())
        (True, True)
    """
    kind = task.motion_model
    if kind is None:
        return members
    flat = members.flatten(0, 1)
    fitted = fit_motion_model(flat.detach().float().cpu(), kind).flow
    return fitted.to(device=members.device, dtype=members.dtype).unflatten(0, tuple(members.shape[:2]))


def apply_gate(
    reasons: list[str],
    images: torch.Tensor,
    flow: torch.Tensor,
    rect: torch.Tensor,
    uncertainty: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Leave the images with a reason (:func:`gate_reason`) unchanged: zero flow, the input as
    the output, zero spread.

    Args:
        reasons: one per image, ``""`` = corrected.
        images: (B, 3, H, W) inputs in [0, 1]; flow (B, 2, H, W) px; rect (B, 3, H, W);
            uncertainty (B, 1, H, W) px or ``None``.

    Returns:
        ``(flow, rect, uncertainty)``, new tensors where an image is left unchanged.

    Example:
        >>> imgs = torch.rand(2, 3, 4, 4)
        >>> f, r, u = apply_gate(["", "left unchanged: a test"], imgs, torch.ones(2, 2, 4, 4), imgs * 0, None)
        >>> f.sum(dim=(1, 2, 3)).tolist(), bool((r[1] == imgs[1]).all()), u
        ([32.0, 0.0], True, None)
    """
    keep = torch.tensor([bool(r) for r in reasons], device=flow.device)
    if not bool(keep.any()):
        return flow, rect, uncertainty
    sel = keep.view(-1, 1, 1, 1)
    flow = torch.where(sel, torch.zeros_like(flow), flow)
    rect = torch.where(sel.to(rect.device), images.to(device=rect.device, dtype=rect.dtype), rect)
    if uncertainty is not None:
        uncertainty = torch.where(sel.to(uncertainty.device), torch.zeros_like(uncertainty), uncertainty)
    return flow, rect, uncertainty

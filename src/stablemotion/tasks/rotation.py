"""Rotation correction: a tilted photo -> an upright image that fills the frame (the
"straighten" of photo editors: rotated back about the centre and scaled by the least amount
that keeps the frame filled; :func:`stablemotion.core.motion_models.straighten_flow`).

Evaluation: PSNR / SSIM of the output against the gt (full image, no mask) and EPE over all
pixels. The synthetic samples (task-folder layout) are made by
:mod:`stablemotion.data.synthesis.rotation`.
"""

from __future__ import annotations

from ._spec import EvalProtocol, TaskSpec, register_task

__all__ = ["ROTATION", "PROTOCOL"]

ROTATION = TaskSpec(
    name="rotation",
    conditions=("image",),
    padding="border",
    resolution=(384, 512),
    loss_weights={"v": 1.0, "warp": 1.0, "vgg": 0.01},
    description="rotation correction: tilted photo -> upright photo filling the frame (straightened)",
    motion_model="rotation",
)

PROTOCOL = EvalProtocol(
    metrics=("psnr", "ssim", "epe"), layout="folder", split="test",
    reference="PSNR/SSIM (scikit-image, uint8, full image, no mask) as the rotation-correction literature; EPE",
)

register_task(ROTATION, protocol=PROTOCOL)


def __getattr__(name: str) -> object:  # generator-side names moved to stablemotion.data.synthesis
    from .._compat import moved_attribute

    return moved_attribute(__name__, name)

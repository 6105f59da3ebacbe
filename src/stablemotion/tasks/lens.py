"""Radial lens-distortion correction: a barrel / fisheye-like distorted photo -> the
rectilinear image.

Evaluation: PSNR / SSIM of the output against the gt (full image, no mask) and EPE over all
pixels. The synthetic samples (task-folder layout) are made by
:mod:`stablemotion.data.synthesis.lens`.
"""

from __future__ import annotations

from ._spec import EvalProtocol, TaskSpec, register_task

__all__ = ["LENS", "PROTOCOL"]

LENS = TaskSpec(
    name="lens",
    conditions=("image",),
    padding="border",
    resolution=(384, 512),
    loss_weights={"v": 1.0, "warp": 1.0, "vgg": 0.01},
    description="lens-distortion correction: barrel / fisheye-like distorted photo -> rectilinear photo",
    motion_model="lens",
)

PROTOCOL = EvalProtocol(
    metrics=("psnr", "ssim", "epe"), layout="folder", split="test",
    reference="PSNR/SSIM (scikit-image, uint8, full image, no mask) as the distortion-correction literature; EPE",
)

register_task(LENS, protocol=PROTOCOL)


def __getattr__(name: str) -> object:  # generator-side names moved to stablemotion.data.synthesis
    from .._compat import moved_attribute

    return moved_attribute(__name__, name)

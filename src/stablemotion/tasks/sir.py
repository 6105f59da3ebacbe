"""Stitched image rectangling (SIR): a stitched panorama with an irregular boundary and its
mask -> a rectangular image.

Evaluation: the released DIR-D protocol (PSNR / SSIM, full image, no mask; EPE). The synthetic
samples (DIR-D layout) are made by :mod:`stablemotion.data.synthesis.sir`.
"""

from __future__ import annotations

from ._spec import EvalProtocol, TaskSpec, register_task

__all__ = ["SIR", "PROTOCOL"]

SIR = TaskSpec(
    name="sir",
    conditions=("mask", "image"),
    padding="border",
    resolution=(384, 512),
    loss_weights={"v": 1.0, "warp": 8.0, "mask": 8.0, "vgg": 0.1},
    description="stitched image rectangling: stitched image + mask -> rectangular image",
)

PROTOCOL = EvalProtocol(
    metrics=("psnr", "ssim", "epe"), layout="dird", split="testing",
    reference="DIR-D released protocol: scikit-image PSNR/SSIM on uint8, full resolution, no mask",
)

register_task(SIR, protocol=PROTOCOL)


def __getattr__(name: str) -> object:  # generator-side names moved to stablemotion.data.synthesis
    from .._compat import moved_attribute

    return moved_attribute(__name__, name)

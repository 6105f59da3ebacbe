"""Rolling-shutter correction (RSC): one rolling-shutter image -> the global-shutter image.

Evaluation: the released RS-Real protocol (PSNR / SSIM at full resolution, no mask; FID / LPIPS
when installed); EPE on the valid region (where the GS pixel was seen by the RS camera). The
synthetic samples (RS-Real layout) are made by :mod:`stablemotion.data.synthesis.rsc`.
"""

from __future__ import annotations

from ._spec import EvalProtocol, TaskSpec, register_task

__all__ = ["RSC", "PROTOCOL"]

RSC = TaskSpec(
    name="rsc",
    conditions=("image",),
    padding="zeros",
    resolution=(256, 256),
    loss_weights={"v": 1.0, "warp": 1.0, "vgg": 0.01},
    valid_region_loss=True,
    description="rolling-shutter correction: rolling-shutter image -> global-shutter image",
    motion_model="rolling_shutter",
)

PROTOCOL = EvalProtocol(
    metrics=("psnr", "ssim", "epe"), epe_region="valid", layout="rsreal", split="test",
    optional_metrics=("fid", "lpips"),
    reference="RS-Real released protocol: full-resolution jpg vs jpg_gt, scikit-image PSNR/SSIM on uint8, no mask",
)

register_task(RSC, protocol=PROTOCOL)


def __getattr__(name: str) -> object:  # generator-side names moved to stablemotion.data.synthesis
    from .._compat import moved_attribute

    return moved_attribute(__name__, name)

"""Stable Diffusion 2 architectures built from their published configs (no download).

The keyword arguments below are those of ``stabilityai/stable-diffusion-2``'s
``unet/config.json``, ``vae/config.json`` and ``scheduler/scheduler_config.json``. Build
them under ``torch.device("meta")`` to count FLOPs without memory, or on the CPU for timing
with random weights.
"""

from __future__ import annotations

from typing import Any

#: ``stabilityai/stable-diffusion-2`` scheduler config (DDIM, v-prediction).
SD2_SCHEDULER: dict[str, Any] = {
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "clip_sample": False,
    "prediction_type": "v_prediction",
}


def sd2_unet(in_channels: int):
    """SD2 (768-v) ``UNet2DConditionModel`` with ``in_channels`` input channels (865M parameters)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=96, in_channels=in_channels, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=2, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
    )


def sd2_vae():
    """SD2 ``AutoencoderKL`` (84M parameters, downsampling 8, scaling factor 0.18215)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=768,
        scaling_factor=0.18215,
    )

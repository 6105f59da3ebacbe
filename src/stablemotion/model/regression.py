"""The plain regression baseline (the ablation of the diffusion framing)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from ..tasks import MASK_CONDITIONS, TaskSpec, get_task
from .tiny import norm_groups

__all__ = ["FlowRegressor"]


class FlowRegressor(ModelMixin, ConfigMixin):
    """The plain regression baseline: one forward pass, conditions -> flow, in pixel space.

    A diffusers ``UNet2DModel`` (no latent space, no noise, no VAE) with the same block
    layout as a mini motion UNet, so parameter counts are comparable. It is the ablation
    that says whether the diffusion framing pays off at a given scale.

    Args:
        in_channels: channels of the stacked conditions (image: 3, mask: 1).
        flow_gamma: output scale; the network predicts ``flow / flow_gamma``.
        block_out_channels / layers_per_block / attention: the UNet layout (``attention``:
            per level, whether the block has self-attention).
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        flow_gamma: float = 50.0,
        block_out_channels: Sequence[int] = (32, 64),
        layers_per_block: int = 1,
        attention: Sequence[bool] | None = None,
    ) -> None:
        super().__init__()
        if attention is None:
            attention = [False] * len(block_out_channels)
        self.net = UNet2DModel(
            in_channels=in_channels,
            out_channels=2,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            attention_head_dim=16,
            norm_num_groups=norm_groups(block_out_channels),
        )

    @property
    def size_multiple(self) -> int:
        """Input sizes must be multiples of this."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    def forward(self, conditions: torch.Tensor) -> torch.Tensor:
        """conditions: (B, C, H, W) in [-1, 1] (task order) -> flow (B, 2, H, W), pixels."""
        t = torch.zeros(conditions.shape[0], device=conditions.device)
        return self.net(conditions, t, return_dict=False)[0].float() * self.config.flow_gamma

    @classmethod
    def for_task(cls, task: str | TaskSpec, seed: int = 0, **arch: Any) -> FlowRegressor:
        """A random regressor for ``task``, laid out like :func:`tiny_components`' UNet
        (``unet_channels``, ``unet_layers``, ``unet_attention``; other keys ignored)."""
        spec = get_task(task)
        channels = sum(1 if c in MASK_CONDITIONS else 3 for c in spec.conditions)
        unet_channels = arch.get("unet_channels", (32, 64))
        attention = arch.get("unet_attention") or [True] + [False] * (len(unet_channels) - 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(channels, spec.flow_gamma, list(unet_channels), int(arch.get("unet_layers", 1)), list(attention))

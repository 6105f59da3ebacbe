"""The pieces a StableMotion pipeline is made of, below the pipeline itself.

* :class:`EmptyTextEmbedding` -- the empty prompt, tokenised with ``padding="do_not_pad"``
  (``(1, 2, D)``), computed once (:func:`empty_text_embedding`) and saved as a pipeline
  component, so inference never needs a tokenizer or text encoder.
* :class:`TaskEmbedding` -- a multi-task model's prompts: one learned ``(L, D)`` embedding per
  task, used in place of the empty prompt (initialised from the base text encoder's encoding of
  each task's description, :func:`task_text_embeddings`, or from the empty prompt for models
  without a text encoder).
* :func:`expand_conv_in` -- the UNet's ``conv_in`` grows to ``4 * (N + 1)`` input channels
  for N condition latents: the pretrained kernel is copied into every 4-channel slot and
  divided by ``N + 1``, the bias copied, and the config updated with
  ``register_to_config`` so save/load round-trips.
* :func:`adapt_conv_in` -- re-map ``conv_in``'s 4-channel slots by condition name, to fine-tune a
  model of one task into a model of other conditions (a new condition's slot starts at zero).
* :class:`GlobalContextUNet` -- a ``UNet2DConditionModel`` with a path that sees the whole frame
  (a pooled bottleneck feature FiLMs the bottleneck and joins the time embedding of the up blocks).
* :func:`make_scheduler` -- DDIM with trailing spacing and v-prediction.
* :func:`infer_task` -- the task of a UNet from its input channel count.
* :func:`encode_latents` / :func:`decode_flow_latents` -- the one flow/image codec of the
  method (VAE mean x ``scaling_factor``; ``decode(z / scale)``, channels 0-1 x gamma), used by
  the pipeline and the trainer.
"""

from __future__ import annotations

import contextvars
import functools
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..tasks import RELEASED_TASKS, TaskSpec, available_tasks, get_task

__all__ = [
    "EmptyTextEmbedding",
    "TaskEmbedding",
    "GlobalContextUNet",
    "with_global_context",
    "task_text_embeddings",
    "adapt_conv_in",
    "expand_conv_in",
    "empty_text_embedding",
    "make_scheduler",
    "infer_task",
    "encode_latents",
    "decode_flow_latents",
]


class EmptyTextEmbedding(ModelMixin, ConfigMixin):
    """The stored empty-prompt text embedding, a pipeline component.

    Holds one tensor ``(1, sequence_length, embedding_dim)`` (SD2: ``(1, 2, 1024)``),
    saved with ``save_pretrained`` like any diffusers model (``config.json`` +
    ``diffusion_pytorch_model.safetensors``) and cast/moved with the pipeline.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, sequence_length: int = 2, embedding_dim: int = 1024) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.zeros(1, sequence_length, embedding_dim), requires_grad=False)

    @classmethod
    def from_tensor(cls, embedding: torch.Tensor) -> EmptyTextEmbedding:
        """Wrap a ``(1, L, D)`` or ``(L, D)`` tensor."""
        if embedding.ndim == 2:
            embedding = embedding.unsqueeze(0)
        if embedding.ndim != 3 or embedding.shape[0] != 1:
            raise ValueError(f"empty text embedding must be (1, L, D), got {tuple(embedding.shape)}")
        module = cls(sequence_length=embedding.shape[1], embedding_dim=embedding.shape[2])
        with torch.no_grad():
            module.embedding.copy_(embedding.detach().float())
        if embedding.is_floating_point() and embedding.dtype != module.embedding.dtype:
            module = module.to(embedding.dtype)
        return module

    def forward(self, batch_size: int = 1) -> torch.Tensor:
        """The embedding repeated for a batch: (batch_size, L, D)."""
        return self.embedding.expand(batch_size, -1, -1)


class TaskEmbedding(ModelMixin, ConfigMixin):
    """One prompt embedding per task: what a multi-task model feeds its UNet's cross-attention
    in place of the empty prompt, a pipeline component (stored as ``text_embedding/``).

    Holds ``embedding`` (T, L, D) for the tasks ``task_names`` (in the model's task order),
    trained with the UNet. Build it with :meth:`from_text_encoder` (the base model's encoding
    of each task's description) or :meth:`from_empty` (models without a text encoder).

    Args:
        task_names: the tasks, in order; row ``i`` of ``embedding`` is task ``task_names[i]``.
        sequence_length: L, tokens per prompt.
        embedding_dim: D, the UNet's ``cross_attention_dim``.
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, task_names: Sequence[str] = ("sir",), sequence_length: int = 2,
                 embedding_dim: int = 1024) -> None:
        super().__init__()
        names = [str(n) for n in task_names]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"task_names must be distinct task names, got {names}")
        self.embedding = nn.Parameter(torch.zeros(len(names), sequence_length, embedding_dim), requires_grad=False)

    @property
    def task_names(self) -> list[str]:
        return list(self.config.task_names)

    def index(self, task: str) -> int:
        """Row of ``task``; a ``ValueError`` lists the tasks this model serves."""
        try:
            return self.task_names.index(task)
        except ValueError:
            raise ValueError(f"this model serves the tasks {self.task_names}, not {task!r}") from None

    def forward(self, batch_size: int = 1, task: str | Sequence[str] | None = None) -> torch.Tensor:
        """The prompt of ``task`` (one name for the whole batch, or one per sample; ``None`` =
        the first task) repeated for a batch: (batch_size, L, D)."""
        if task is None or isinstance(task, str):
            return self.embedding[self.index(task or self.task_names[0])][None].expand(batch_size, -1, -1)
        rows = torch.tensor([self.index(t) for t in task], device=self.embedding.device)
        if len(rows) != batch_size:
            raise ValueError(f"{len(rows)} task names for a batch of {batch_size}")
        return self.embedding[rows]

    @classmethod
    def from_tensor(cls, task_names: Sequence[str], embedding: torch.Tensor) -> TaskEmbedding:
        """Wrap a (T, L, D) tensor, row ``i`` for ``task_names[i]``."""
        if embedding.ndim != 3 or embedding.shape[0] != len(task_names):
            raise ValueError(f"embedding must be ({len(task_names)}, L, D) for tasks {list(task_names)}, "
                             f"got {tuple(embedding.shape)}")
        module = cls(task_names=list(task_names), sequence_length=embedding.shape[1], embedding_dim=embedding.shape[2])
        with torch.no_grad():
            module.embedding.copy_(embedding.detach().float())
        return module

    @classmethod
    def from_empty(cls, task_names: Sequence[str], empty: torch.Tensor | EmptyTextEmbedding,
                   noise: float = 0.1, seed: int = 0) -> TaskEmbedding:
        """Every task starts at the empty prompt ``empty`` ((1, L, D), or a stored
        :class:`EmptyTextEmbedding`) plus seeded Gaussian noise of ``noise`` times its standard
        deviation, so the tasks start apart: for models with no text encoder (the tiny ones)."""
        base = empty.embedding if isinstance(empty, EmptyTextEmbedding) else empty
        base = base.detach().float().reshape(1, *base.shape[-2:])
        g = torch.Generator().manual_seed(seed)
        scale = float(base.std()) if base.numel() > 1 and float(base.std()) > 0 else 1.0
        rows = base.expand(len(task_names), -1, -1) + noise * scale * torch.randn(
            len(task_names), *base.shape[1:], generator=g)
        return cls.from_tensor(task_names, rows)

    @classmethod
    def from_text_encoder(cls, task_names: Sequence[str], text_encoder: nn.Module, tokenizer: Any) -> TaskEmbedding:
        """Each task's description (:attr:`TaskSpec.description`) encoded by the base model's
        text encoder (:func:`task_text_embeddings`)."""
        return cls.from_tensor(task_names, task_text_embeddings(text_encoder, tokenizer,
                                                                [get_task(n).description or n for n in task_names]))


#: The global vector of the UNet call in progress (per thread / task): set by the bottleneck hook,
#: read by the up blocks' hooks.
_GLOBAL_TEMB: contextvars.ContextVar[dict[int, torch.Tensor] | None] = contextvars.ContextVar("_GLOBAL_TEMB", default=None)


class GlobalContextUNet(UNet2DConditionModel):
    """A ``UNet2DConditionModel`` with a global-context path (rolling shutter and tilt are global properties).

    The bottleneck (the mid block's output, (B, C, h, w)) is average-pooled over the whole frame to
    (B, C); a small MLP (``global_context``: Linear, SiLU, Linear) turns it into a per-channel FiLM
    of the bottleneck (``x * (1 + scale) + shift``) and a vector added to the time embedding that
    every ResNet of the up blocks reads, so every output resolution sees the whole frame. The last
    layer starts at zero: a new model computes exactly what the plain UNet does.

    Same config (and ``__init__``) as ``UNet2DConditionModel``; saved and loaded like it (safetensors,
    weights only; a pipeline records the class). The extra weights are ``global_context.*``.

    Example:
        >>> unet = GlobalContextUNet(sample_size=8, in_channels=8, out_channels=4, block_out_channels=(8, 16),
        ...     down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        ...     layers_per_block=1, cross_attention_dim=8, norm_num_groups=8, attention_head_dim=2)
        >>> out = unet(torch.zeros(1, 8, 8, 8), 999, encoder_hidden_states=torch.zeros(1, 2, 8)).sample
        >>> tuple(out.shape), sorted({k.split(".")[1] for k in unet.state_dict() if k.startswith("global_context.")})
        ((1, 4, 8, 8), ['0', '2'])
    """

    @functools.wraps(UNet2DConditionModel.__init__)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.mid_block is None:
            raise ValueError("GlobalContextUNet needs a mid block (mid_block_type must not be None)")
        channels = int(self.config.block_out_channels[-1])
        temb = int(self.time_embedding.linear_2.out_features)
        with torch.random.fork_rng(devices=[]):  # what is drawn after this UNet is as without the path
            self.global_context = nn.Sequential(nn.Linear(channels, channels), nn.SiLU(),
                                                nn.Linear(channels, 2 * channels + temb))
        nn.init.zeros_(self.global_context[2].weight)
        nn.init.zeros_(self.global_context[2].bias)
        self.mid_block.register_forward_hook(self._film_bottleneck)
        for block in self.up_blocks:
            block.register_forward_pre_hook(self._add_global_temb, with_kwargs=True)

    def _film_bottleneck(self, module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        c = out.shape[1]
        g = self.global_context(out.float().mean(dim=(2, 3))).to(out.dtype)  # (B, 2C + T)
        stash = _GLOBAL_TEMB.get()
        if stash is not None:
            stash[id(self)] = g[:, 2 * c:]
        return out * (1 + g[:, :c, None, None]) + g[:, c : 2 * c, None, None]

    def _add_global_temb(self, module: nn.Module, args: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        stash = _GLOBAL_TEMB.get()
        extra = None if stash is None else stash.get(id(self))
        if extra is not None and kwargs.get("temb") is not None:
            kwargs = {**kwargs, "temb": kwargs["temb"] + extra.to(kwargs["temb"].dtype)}
        return args, kwargs

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """``UNet2DConditionModel.forward`` with the global-context path."""
        token = _GLOBAL_TEMB.set({})
        try:
            return super().forward(*args, **kwargs)
        finally:
            _GLOBAL_TEMB.reset(token)


def with_global_context(unet: UNet2DConditionModel) -> GlobalContextUNet:
    """``unet`` with a new (zero-started) global-context path: same config and weights, so it computes
    exactly what ``unet`` did until the path is trained (to fine-tune an existing model with it).
    A :class:`GlobalContextUNet` is returned as it is.

    Example:
        >>> from stablemotion.model.tiny import tiny_components
        >>> plain = tiny_components("rsc")["unet"]
        >>> type(with_global_context(plain)).__name__
        'GlobalContextUNet'
    """
    if isinstance(unet, GlobalContextUNet):
        return unet
    new = GlobalContextUNet.from_config(unet.config).to(device=unet.device, dtype=unet.dtype)
    missing, unexpected = new.load_state_dict(unet.state_dict(), strict=False)
    if unexpected or any(not k.startswith("global_context.") for k in missing):
        raise ValueError(f"with_global_context: the UNet's weights do not fit (missing {missing}, unexpected {unexpected})")
    return new.train(unet.training)


@torch.no_grad()
def task_text_embeddings(text_encoder: nn.Module, tokenizer: Any, prompts: Sequence[str]) -> torch.Tensor:
    """Encode ``prompts`` padded to the longest one: (len(prompts), L, D) float32 on the CPU."""
    ids = tokenizer(list(prompts), padding="longest", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    device = next(text_encoder.parameters()).device
    return text_encoder(ids.to(device))[0].detach().float().cpu()


def adapt_conv_in(unet: UNet2DConditionModel, old_conditions: Sequence[str],
                  new_conditions: Sequence[str]) -> UNet2DConditionModel:
    """Re-map ``unet.conv_in`` from the conditions ``old_conditions`` to ``new_conditions``, in place.

    ``conv_in`` takes one 4-channel latent slot per condition, then the noisy flow's. A slot of
    a condition in both lists is copied, a new condition's slot starts at zero (the model starts
    as if it did not see it), the flow slot and the bias are kept. Updates the config's
    ``in_channels``. Create optimisers after calling this.
    """
    old_conditions, new_conditions = list(old_conditions), list(new_conditions)
    old = unet.conv_in
    if old.in_channels != 4 * (len(old_conditions) + 1):
        raise ValueError(f"conv_in has {old.in_channels} input channels, not 4 x ({len(old_conditions)} conditions "
                         f"{old_conditions} + flow)")
    if old_conditions == new_conditions:
        return unet
    new = nn.Conv2d(4 * (len(new_conditions) + 1), old.out_channels, kernel_size=old.kernel_size, stride=old.stride,
                    padding=old.padding, bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        for i, name in enumerate(new_conditions):
            if name in old_conditions:
                j = old_conditions.index(name)
                new.weight[:, 4 * i : 4 * i + 4] = old.weight[:, 4 * j : 4 * j + 4]
        new.weight[:, -4:] = old.weight[:, -4:]
        if old.bias is not None:
            new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=new.in_channels)
    return unet


def expand_conv_in(unet: UNet2DConditionModel, num_conditions: int) -> UNet2DConditionModel:
    """Grow ``unet.conv_in`` from 4 to ``4 * (num_conditions + 1)`` input channels, in place.

    Every 4-channel slot gets a copy of the pretrained kernel, the whole kernel is divided
    by ``num_conditions + 1`` and the bias is copied, so feeding the same latent into every
    slot reproduces the pretrained response. The config is updated with
    ``register_to_config(in_channels=...)``. Create optimisers after calling this.
    """
    if num_conditions < 0:
        raise ValueError(f"num_conditions must be >= 0, got {num_conditions}")
    old = unet.conv_in
    if old.in_channels != 4:
        raise ValueError(
            f"expand_conv_in expects a pretrained 4-channel UNet, this one has {old.in_channels} input channels"
        )
    slots = num_conditions + 1
    new = nn.Conv2d(
        4 * slots,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        groups=old.groups,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(old.weight.repeat(1, slots, 1, 1) / slots)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=4 * slots)
    return unet


@torch.no_grad()
def empty_text_embedding(text_encoder: nn.Module, tokenizer: Any) -> torch.Tensor:
    """Encode the empty prompt once: ``padding="do_not_pad"`` -> (1, 2, D) (BOS, EOS)."""
    ids = tokenizer(
        "", padding="do_not_pad", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    device = next(text_encoder.parameters()).device
    return text_encoder(ids.to(device))[0].detach().float().cpu()


def make_scheduler(config: Mapping[str, Any] | None = None) -> DDIMScheduler:
    """DDIM configured for StableMotion inference from a (SD2) scheduler config.

    Forces ``timestep_spacing="trailing"`` (1 step = t 999, 2 = [999, 499]),
    ``prediction_type="v_prediction"`` and no x0 clipping/thresholding (flow latents are
    not bounded by 1).
    """
    cfg = {k: v for k, v in dict(config or {}).items() if not k.startswith("_")}
    cfg.update(timestep_spacing="trailing", prediction_type="v_prediction", clip_sample=False, thresholding=False)
    return DDIMScheduler.from_config(cfg)


def infer_task(in_channels: int, hint: str | None = None) -> TaskSpec:
    """The registered task whose UNet input has ``in_channels`` channels.

    ``hint`` (e.g. a folder name like ``StableMotion_SIR``) disambiguates and is checked:
    a hint naming a task with a different channel count raises ``ValueError``. Without a
    hint, a tie between tasks of the same width (RSC, rotation and lens all take the image
    only) goes to the released tasks (:data:`stablemotion.tasks.RELEASED_TASKS`), the only
    ones with published checkpoints.
    """
    named = None
    if hint:
        for name in available_tasks():
            if re.search(rf"(^|[^a-z0-9]){re.escape(name)}($|[^a-z0-9])", hint.lower()):
                named = get_task(name)
                break
    if named is not None:
        if named.unet_in_channels != in_channels:
            raise ValueError(
                f"{hint!r} names task {named.name!r} (conditions {list(named.conditions)} + flow = "
                f"{named.unet_in_channels} channels) but its UNet has {in_channels} input channels"
            )
        return named
    matches = [get_task(n) for n in available_tasks() if get_task(n).unet_in_channels == in_channels]
    if len(matches) > 1:
        matches = [m for m in matches if m.name in RELEASED_TASKS] or matches
    if len(matches) != 1:
        names = ", ".join(f"{m.name} ({m.unet_in_channels})" for m in map(get_task, available_tasks()))
        raise ValueError(
            f"cannot tell the task of a UNet with {in_channels} input channels (tasks: {names}); pass task=..."
        )
    return matches[0]


def encode_latents(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """VAE latents of images, masks or encoded flows: encoder mean x ``scaling_factor``.

    Args:
        vae: the (frozen) VAE.
        images: (B, 3, H, W) in the VAE's input range ([-1, 1] for images and masks; a flow
            as :func:`stablemotion.core.flow.encode_flow` makes it).

    Returns:
        (B, C_latent, H / f, W / f) in the VAE's dtype.
    """
    return vae.encode(images.to(dtype=vae.dtype)).latent_dist.mean * float(vae.config.scaling_factor)


def decode_flow_latents(vae: AutoencoderKL, latents: torch.Tensor, gamma: float) -> torch.Tensor:
    """Flow latents -> flow: ``vae.decode(z / scaling_factor)``, channels 0-1 x ``gamma``.

    Args:
        latents: (B, C_latent, h, w).
        gamma: the flow normalisation (50 for the method).

    Returns:
        (B, 2, h * f, w * f) float32, pixels of the decoded resolution's coordinate frame.
    """
    decoded = vae.decode(latents.to(vae.dtype) / float(vae.config.scaling_factor)).sample
    return decoded[:, :2].float() * gamma


# Pipeline folders saved before the package was laid out by layer name this module
# "stablemotion.components" as their components' library, and diffusers loads only from
# modules already imported under the recorded name.
sys.modules.setdefault("stablemotion.components", sys.modules[__name__])

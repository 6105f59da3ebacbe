"""Random-weight miniatures of the SD architecture family, for tests and CPU experiments.

:func:`tiny_components` / :func:`tiny_pipeline` build them (nothing is downloaded; the
``stablemotion-mini`` models use larger settings of the same builders), and
:func:`save_tiny_base` writes a tiny SD2-like base checkpoint folder for offline tests of
the code that loads real weights.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from ..io.images import PathLike, umask_modes
from ..tasks import TaskSpec, as_task_list, union_conditions
from .components import EmptyTextEmbedding, GlobalContextUNet, TaskEmbedding, make_scheduler
from .pipeline import StableMotionPipeline

__all__ = ["ARCH_KEYS", "norm_groups", "tiny_components", "tiny_pipeline", "save_tiny_base"]

#: Keyword arguments of :func:`tiny_components` that shape the architecture (the rest of
#: :func:`tiny_pipeline`'s keywords are pipeline config).
ARCH_KEYS = ("unet_channels", "unet_layers", "unet_attention", "vae_channels", "vae_layers", "vae_attention",
             "cross_attention_dim", "global_context")


def norm_groups(channels: Sequence[int]) -> int:
    """The largest GroupNorm group count (<= 32) that divides every width in ``channels``."""
    g = 32
    while any(c % g for c in channels):
        g //= 2
    return g


def _tiny_unet(
    in_channels: int, cross_attention_dim: int, channels: Sequence[int], layers: int, attention: Sequence[bool],
    global_context: bool = False,
) -> UNet2DConditionModel:
    if len(attention) != len(channels):
        raise ValueError(f"unet_attention needs one flag per level ({len(channels)}), got {list(attention)}")
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    return (GlobalContextUNet if global_context else UNet2DConditionModel)(
        sample_size=16,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(channels),
        layers_per_block=layers,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=tuple(max(1, c // 16) for c in channels),
        norm_num_groups=norm_groups(channels),
    )


def _tiny_vae(channels: Sequence[int], layers: int, attention: bool) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=tuple(channels),
        layers_per_block=layers,
        latent_channels=4,
        norm_num_groups=norm_groups(channels),
        sample_size=32,
        scaling_factor=0.18215,
        mid_block_add_attention=attention,
    )


def tiny_components(
    task: str | TaskSpec | Sequence[str | TaskSpec] | None = "sir",
    seed: int = 0,
    cross_attention_dim: int = 32,
    unet_channels: Sequence[int] = (32, 64),
    unet_layers: int = 1,
    unet_attention: Sequence[bool] | None = None,
    vae_channels: Sequence[int] = (32, 32),
    vae_layers: int = 1,
    vae_attention: bool = True,
    global_context: bool = False,
) -> dict[str, Any]:
    """Random-weight small components of the SD architecture family (nothing is downloaded).

    The defaults are the few-MB test miniature; larger settings give the ``stablemotion-mini``
    models (``configs/mini_*.yaml``).

    Args:
        task: the task whose channel count the UNet gets; a list of tasks makes a multi-task
            model (the union of their conditions, and a :class:`TaskEmbedding` started from
            the empty prompt); ``None`` keeps a 4-channel "base" UNet (to test
            :func:`expand_conv_in`).
        seed: weights are drawn from this seed without touching the global RNG.
        unet_channels / unet_layers: UNet block widths (one per level; the UNet
            downsamples by ``2 ** (levels - 1)``) and ResNet layers per block.
        unet_attention: per level, whether the block has (cross-)attention; default: the
            first level only.
        vae_channels / vae_layers: VAE block widths (downsampling ``2 ** (levels - 1)``)
            and layers per block; always 4 latent channels. ``vae_attention=False`` drops
            the self-attention of the VAE's middle block (quadratic in pixels; costly on CPU).
        global_context: the UNet is a :class:`~stablemotion.model.components.GlobalContextUNet`
            (a pooled bottleneck feature FiLMs the bottleneck and joins the up blocks' time
            embedding: a path that sees the whole frame; config key ``model.tiny.global_context``).

    Returns:
        ``{"unet", "vae", "scheduler", "text_embedding"}``; image sizes must be multiples
        of the VAE x UNet downsampling (4 with the defaults). The embedding is
        (1, 2, ``cross_attention_dim``).

    Example:
        >>> comps = tiny_components("sir")
        >>> sorted(comps), comps["unet"].config.in_channels, tuple(comps["text_embedding"].embedding.shape)
        (['scheduler', 'text_embedding', 'unet', 'vae'], 12, (1, 2, 32))
    """
    specs = None if task is None else as_task_list(task)
    in_channels = 4 if specs is None else 4 * (len(union_conditions(specs)) + 1)
    if unet_attention is None:
        unet_attention = [True] + [False] * (len(unet_channels) - 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = _tiny_unet(in_channels, cross_attention_dim, unet_channels, unet_layers, unet_attention, global_context)
        vae = _tiny_vae(vae_channels, vae_layers, vae_attention)
        embedding = EmptyTextEmbedding.from_tensor(torch.randn(1, 2, cross_attention_dim))
    if isinstance(task, (list, tuple)):
        embedding = TaskEmbedding.from_empty([t.name for t in specs], embedding, seed=seed)
    scheduler = make_scheduler(
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "set_alpha_to_one": False,
         "steps_offset": 1, "num_train_timesteps": 1000}
    )
    return {"unet": unet.eval(), "vae": vae.eval(), "scheduler": scheduler, "text_embedding": embedding.eval()}


def tiny_pipeline(task: str | TaskSpec | Sequence[str | TaskSpec] = "sir", seed: int = 0,
                  **config: Any) -> StableMotionPipeline:
    """A :class:`~stablemotion.model.pipeline.StableMotionPipeline` on :func:`tiny_components`.

    ``config`` holds architecture keywords (:data:`ARCH_KEYS`, passed to
    :func:`tiny_components`) and pipeline config; the default processing resolution is
    32x32 unless ``config`` says otherwise.

    Example:
        >>> import numpy as np
        >>> pipe = tiny_pipeline("sir")   # random weights, about 1 s; nothing is downloaded
        >>> image = np.random.default_rng(0).random((24, 32, 3), dtype=np.float32)   # (H, W, 3) in [0, 1]
        >>> out = pipe(image, mask=np.ones((24, 32), np.float32), show_progress_bar=False)
        >>> tuple(out.flow.shape), tuple(out.image.shape)
        ((1, 2, 24, 32), (1, 3, 24, 32))
        >>> list(tiny_pipeline(["sir", "rotation"]).tasks)   # a multi-task model
        ['sir', 'rotation']
    """
    specs = as_task_list(task)
    arch = {k: config.pop(k) for k in ARCH_KEYS if k in config}
    config.setdefault("default_processing_resolution", [32, 32])
    multi = isinstance(task, (list, tuple))
    comps = tiny_components([t.name for t in specs] if multi else specs[0], seed, **arch)
    return StableMotionPipeline(**comps, task=specs[0].to_dict(), tasks=[t.to_dict() for t in specs] if multi else None,
                                **config)


def save_tiny_base(folder: PathLike, seed: int = 0) -> Path:
    """Write a tiny SD2-like base checkpoint (diffusers layout) for offline tests.

    ``unet/`` (4 input channels), ``vae/``, ``scheduler/``, ``text_encoder/`` (a 2-layer
    CLIP text model) and ``tokenizer/`` (a CLIP tokenizer on a 4-token vocabulary written
    here), plus ``model_index.json``.
    """
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with umask_modes(folder):  # safetensors writes 0600 files
        comps = tiny_components(None, seed)
        comps["unet"].save_pretrained(folder / "unet")
        comps["vae"].save_pretrained(folder / "vae")
        comps["scheduler"].save_pretrained(folder / "scheduler")
        with tempfile.TemporaryDirectory() as tmp:
            vocab = Path(tmp) / "vocab.json"
            merges = Path(tmp) / "merges.txt"
            vocab.write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "a": 3}))
            merges.write_text("#version: 0.2\n")
            tokenizer = CLIPTokenizer(str(vocab), str(merges), model_max_length=77)
            tokenizer.save_pretrained(folder / "tokenizer")
        cfg = CLIPTextConfig(
            vocab_size=4, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
            max_position_embeddings=77, projection_dim=32, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            CLIPTextModel(cfg).save_pretrained(folder / "text_encoder")

    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder

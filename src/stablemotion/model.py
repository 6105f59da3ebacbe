"""Building StableMotion models from Stable Diffusion 2, tiny test models, released checkpoints.

* :func:`expand_conv_in` -- the UNet's ``conv_in`` grows to ``4 * (N + 1)`` input channels
  for N condition latents: the pretrained kernel is copied into every 4-channel slot and
  divided by ``N + 1``, the bias copied, and the config updated with
  ``register_to_config`` so save/load round-trips.
* :func:`empty_text_embedding` / :class:`EmptyTextEmbedding` -- the empty prompt, tokenised
  with ``padding="do_not_pad"`` (``(1, 2, D)``), computed once and saved as a pipeline
  component, so inference never needs a tokenizer or text encoder.
* :func:`build_pipeline` -- a ready :class:`~stablemotion.pipeline.StableMotionPipeline` for a
  task from an SD2 checkpoint (hub id or local diffusers folder).
* :func:`tiny_components` / :func:`tiny_pipeline` / :func:`save_tiny_base` -- random-weight
  miniatures for tests and CPU experiments (no downloads).
* :func:`import_released_checkpoint` -- the authors' released task folders
  (``unet_ema/``, optional ``vae/`` in the diffusers or accelerate layout) + an SD2 base ->
  a pipeline folder whose config reproduces the released inference
  (:data:`RELEASED_INFERENCE`).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ._io import PathLike
from .tasks import TaskSpec, available_tasks, get_task

if TYPE_CHECKING:
    from .pipeline import StableMotionPipeline

__all__ = [
    "DEFAULT_BASE",
    "RELEASED_REPO",
    "RELEASED_SUBFOLDERS",
    "EmptyTextEmbedding",
    "expand_conv_in",
    "empty_text_embedding",
    "make_scheduler",
    "load_text_embedding",
    "build_pipeline",
    "ARCH_KEYS",
    "tiny_components",
    "tiny_pipeline",
    "FlowRegressor",
    "save_tiny_base",
    "BUNDLED_MODELS",
    "bundled_model_path",
    "load_bundled_pipeline",
    "load_pipeline",
    "convert_pipeline",
    "infer_task",
    "import_released_checkpoint",
    "load_released_vae",
    "RELEASED_INFERENCE",
]

logger = logging.getLogger(__name__)

#: Default Stable Diffusion checkpoint (768-v, v-prediction).
DEFAULT_BASE = "stabilityai/stable-diffusion-2"
#: Hub repository of the authors' released checkpoints and its task subfolders.
RELEASED_REPO = "ivowang/StableMotion"
RELEASED_SUBFOLDERS = {"sir": "StableMotion_SIR", "rsc": "StableMotion_RSC"}
#: Pipeline config of an imported release: the released inference path (METHOD.md,
#: "Released checkpoint layout"): the last DDIM step's ``prev_sample``, masks fed as read,
#: AES in 8 bits with the median truncated and a fixed 20 px band.
RELEASED_INFERENCE: dict[str, Any] = {
    "default_final_step": "prev_sample",
    "mask_encoding": "as_read",
    "ensemble_rounding": "release",
    "scale_border_band": False,
}


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
        return module.to(embedding.dtype) if embedding.is_floating_point() else module

    def forward(self, batch_size: int = 1) -> torch.Tensor:
        """The embedding repeated for a batch: (batch_size, L, D)."""
        return self.embedding.expand(batch_size, -1, -1)


# --------------------------------------------------------------------------- building blocks
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


def load_text_embedding(base: PathLike, **hub_kwargs: Any) -> EmptyTextEmbedding:
    """The empty-prompt embedding of a base checkpoint (folder or hub id).

    Uses a stored ``text_embedding/`` component if present (a StableMotion pipeline
    folder), otherwise encodes the empty prompt with its ``text_encoder/`` + ``tokenizer/``.
    """
    base_path = Path(base)
    if base_path.is_dir() and (base_path / "text_embedding").is_dir():
        return EmptyTextEmbedding.from_pretrained(base_path / "text_embedding")
    from transformers import AutoTokenizer, CLIPTextModel

    src = str(base)
    if base_path.is_dir() and not ((base_path / "text_encoder").is_dir() and (base_path / "tokenizer").is_dir()):
        raise FileNotFoundError(
            f"{base} has neither text_embedding/ nor text_encoder/ + tokenizer/: cannot compute the empty-prompt embedding"
        )
    tokenizer = AutoTokenizer.from_pretrained(src, subfolder="tokenizer", **hub_kwargs)
    text_encoder = CLIPTextModel.from_pretrained(src, subfolder="text_encoder", **hub_kwargs)
    emb = empty_text_embedding(text_encoder.eval(), tokenizer)
    del text_encoder
    return EmptyTextEmbedding.from_tensor(emb)


def _hub_kwargs(local_files_only: bool | None, cache_dir: PathLike | None, revision: str | None) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if local_files_only is not None:
        kw["local_files_only"] = local_files_only
    if cache_dir is not None:
        kw["cache_dir"] = str(cache_dir)
    if revision is not None:
        kw["revision"] = revision
    return kw


def build_pipeline(
    base: PathLike = DEFAULT_BASE,
    task: str | TaskSpec = "sir",
    *,
    torch_dtype: torch.dtype | None = None,
    local_files_only: bool | None = None,
    cache_dir: PathLike | None = None,
    revision: str | None = None,
) -> StableMotionPipeline:
    """A new (untrained) StableMotion pipeline for ``task`` from a Stable Diffusion checkpoint.

    Loads the UNet, VAE and scheduler of ``base`` (hub id or local diffusers folder),
    expands ``conv_in`` for the task's conditions and stores the empty-prompt embedding;
    the text encoder is used once and dropped. The result is what training starts from.
    """
    from .pipeline import StableMotionPipeline

    spec = get_task(task)
    kw = _hub_kwargs(local_files_only, cache_dir, revision)
    src = str(base)
    unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet", **kw)
    vae = AutoencoderKL.from_pretrained(src, subfolder="vae", **kw)
    scheduler = make_scheduler(DDIMScheduler.load_config(src, subfolder="scheduler", **kw))
    embedding = load_text_embedding(base, **kw)
    expand_conv_in(unet, spec.num_conditions)
    pipe = StableMotionPipeline(unet=unet, vae=vae, scheduler=scheduler, text_embedding=embedding, task=spec.to_dict())
    if torch_dtype is not None:
        pipe.to(dtype=torch_dtype)
    return pipe


# --------------------------------------------------------------------------- tiny components
#: Keyword arguments of :func:`tiny_components` that shape the architecture (the rest of
#: :func:`tiny_pipeline`'s keywords are pipeline config).
ARCH_KEYS = ("unet_channels", "unet_layers", "unet_attention", "vae_channels", "vae_layers", "vae_attention",
             "cross_attention_dim")


def _groups(channels: Sequence[int]) -> int:
    g = 32
    while any(c % g for c in channels):
        g //= 2
    return g


def _tiny_unet(
    in_channels: int, cross_attention_dim: int, channels: Sequence[int], layers: int, attention: Sequence[bool]
) -> UNet2DConditionModel:
    if len(attention) != len(channels):
        raise ValueError(f"unet_attention needs one flag per level ({len(channels)}), got {list(attention)}")
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(channels),
        layers_per_block=layers,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=tuple(max(1, c // 16) for c in channels),
        norm_num_groups=_groups(channels),
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
        norm_num_groups=_groups(channels),
        sample_size=32,
        scaling_factor=0.18215,
        mid_block_add_attention=attention,
    )


def tiny_components(
    task: str | TaskSpec | None = "sir",
    seed: int = 0,
    cross_attention_dim: int = 32,
    unet_channels: Sequence[int] = (32, 64),
    unet_layers: int = 1,
    unet_attention: Sequence[bool] | None = None,
    vae_channels: Sequence[int] = (32, 32),
    vae_layers: int = 1,
    vae_attention: bool = True,
) -> dict[str, Any]:
    """Random-weight small components of the SD architecture family (nothing is downloaded).

    The defaults are the few-MB test miniature; larger settings give the ``stablemotion-mini``
    models (``configs/mini_*.yaml``).

    Args:
        task: the task whose channel count the UNet gets; ``None`` keeps a 4-channel
            "base" UNet (to test :func:`expand_conv_in`).
        seed: weights are drawn from this seed without touching the global RNG.
        unet_channels / unet_layers: UNet block widths (one per level; the UNet
            downsamples by ``2 ** (levels - 1)``) and ResNet layers per block.
        unet_attention: per level, whether the block has (cross-)attention; default: the
            first level only.
        vae_channels / vae_layers: VAE block widths (downsampling ``2 ** (levels - 1)``)
            and layers per block; always 4 latent channels. ``vae_attention=False`` drops
            the self-attention of the VAE's middle block (quadratic in pixels; costly on CPU).

    Returns:
        ``{"unet", "vae", "scheduler", "text_embedding"}``; image sizes must be multiples
        of the VAE x UNet downsampling (4 with the defaults). The embedding is
        (1, 2, ``cross_attention_dim``).
    """
    in_channels = 4 if task is None else get_task(task).unet_in_channels
    if unet_attention is None:
        unet_attention = [True] + [False] * (len(unet_channels) - 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = _tiny_unet(in_channels, cross_attention_dim, unet_channels, unet_layers, unet_attention)
        vae = _tiny_vae(vae_channels, vae_layers, vae_attention)
        embedding = EmptyTextEmbedding.from_tensor(torch.randn(1, 2, cross_attention_dim))
    scheduler = make_scheduler(
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "set_alpha_to_one": False,
         "steps_offset": 1, "num_train_timesteps": 1000}
    )
    return {"unet": unet.eval(), "vae": vae.eval(), "scheduler": scheduler, "text_embedding": embedding.eval()}


def tiny_pipeline(task: str | TaskSpec = "sir", seed: int = 0, **config: Any) -> StableMotionPipeline:
    """A :class:`~stablemotion.pipeline.StableMotionPipeline` on :func:`tiny_components`.

    ``config`` holds architecture keywords (:data:`ARCH_KEYS`, passed to
    :func:`tiny_components`) and pipeline config; the default processing resolution is
    32x32 unless ``config`` says otherwise.
    """
    from .pipeline import StableMotionPipeline

    spec = get_task(task)
    arch = {k: config.pop(k) for k in ARCH_KEYS if k in config}
    config.setdefault("default_processing_resolution", [32, 32])
    return StableMotionPipeline(**tiny_components(spec, seed, **arch), task=spec.to_dict(), **config)


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
        from diffusers import UNet2DModel

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
            norm_num_groups=_groups(block_out_channels),
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
        from .tasks import MASK_CONDITIONS

        spec = get_task(task)
        channels = sum(1 if c in MASK_CONDITIONS else 3 for c in spec.conditions)
        unet_channels = arch.get("unet_channels", (32, 64))
        attention = arch.get("unet_attention") or [True] + [False] * (len(unet_channels) - 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(channels, spec.flow_gamma, list(unet_channels), int(arch.get("unet_layers", 1)), list(attention))


def save_tiny_base(folder: PathLike, seed: int = 0) -> Path:
    """Write a tiny SD2-like base checkpoint (diffusers layout) for offline tests.

    ``unet/`` (4 input channels), ``vae/``, ``scheduler/``, ``text_encoder/`` (a 2-layer
    CLIP text model) and ``tokenizer/`` (a CLIP tokenizer on a 4-token vocabulary written
    here), plus ``model_index.json``.
    """
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
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


# --------------------------------------------------------------------------- bundled mini models
#: The ``stablemotion-mini`` pipelines shipped inside the package (fp16 safetensors), by task.
#: Trained on synthetic data by the recipe in ``configs/mini_*.yaml`` (see the README).
BUNDLED_MODELS = {"sir": "stablemotion-mini-sir", "rsc": "stablemotion-mini-rsc"}
_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def bundled_model_path(task: str | TaskSpec = "sir") -> Path:
    """Folder of the bundled ``stablemotion-mini`` pipeline for ``task`` (no download)."""
    spec = get_task(task)
    if spec.name not in BUNDLED_MODELS:
        raise ValueError(
            f"no bundled model for task {spec.name!r} (bundled: {', '.join(sorted(BUNDLED_MODELS))}); pass --model"
        )
    path = _WEIGHTS_DIR / BUNDLED_MODELS[spec.name]
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the bundled model {BUNDLED_MODELS[spec.name]} is missing from {path}; reinstall stablemotion "
            "or rebuild it with `make mini-models` (README: Reproduce the mini models)"
        )
    return path


def load_bundled_pipeline(
    task: str | TaskSpec = "sir", torch_dtype: torch.dtype = torch.float32
) -> StableMotionPipeline:
    """The bundled ``stablemotion-mini`` pipeline for ``task``, cast to ``torch_dtype``
    (weights are stored in fp16; float32 is the right choice on CPU)."""
    return load_pipeline(bundled_model_path(task), torch_dtype, progress=False)


def load_pipeline(folder: PathLike, torch_dtype: torch.dtype | None = None,
                  progress: bool = True) -> StableMotionPipeline:
    """``StableMotionPipeline.from_pretrained`` without diffusers' ``torch_dtype`` rename warning
    (we keep the old keyword: it works across the diffusers versions we support).

    ``progress=False`` hides diffusers' "Loading pipeline components" bar for this call only
    (noise for small local folders; worth keeping for hub downloads of SD2-size models)."""
    import warnings

    from diffusers.utils import logging as diffusers_logging

    from .pipeline import StableMotionPipeline

    kwargs = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
    restore = not progress and diffusers_logging.is_progress_bar_enabled()
    if restore:
        diffusers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*should be kept in float32.*")
            return StableMotionPipeline.from_pretrained(str(folder), **kwargs)
    finally:
        if restore:
            diffusers_logging.enable_progress_bar()


def convert_pipeline(src: PathLike, dst: PathLike, torch_dtype: torch.dtype = torch.float16,
                     overwrite: bool = False) -> Path:
    """Re-save the pipeline folder ``src`` with weights in ``torch_dtype`` (safetensors) at ``dst``,
    atomically. fp16 halves the size; the bundled mini models are stored this way."""
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise FileExistsError(f"{dst} already exists and is not empty; pass overwrite=True (--force)")
    pipe = load_pipeline(src, torch_dtype, progress=False)
    tmp = dst.with_name(f".{dst.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    for cfg in tmp.rglob("*.json"):  # drop the source path diffusers records (a local path on the build machine)
        data = json.loads(cfg.read_text())
        if data.pop("_name_or_path", None) is not None:
            cfg.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)
    return dst


# --------------------------------------------------------------------------- released checkpoints
def infer_task(in_channels: int, hint: str | None = None) -> TaskSpec:
    """The registered task whose UNet input has ``in_channels`` channels.

    ``hint`` (e.g. a folder name like ``StableMotion_SIR``) disambiguates and is checked:
    a hint naming a task with a different channel count raises ``ValueError``.
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
    if len(matches) != 1:
        names = ", ".join(f"{m.name} ({m.unet_in_channels})" for m in map(get_task, available_tasks()))
        raise ValueError(
            f"cannot tell the task of a UNet with {in_channels} input channels (tasks: {names}); pass task=..."
        )
    return matches[0]


def _resolve_released(task_folder: PathLike, subfolder: str | None, **hub_kwargs: Any) -> Path:
    path = Path(task_folder)
    if subfolder:
        if path.is_dir():
            return path / subfolder
        from huggingface_hub import snapshot_download

        root = snapshot_download(str(task_folder), allow_patterns=[f"{subfolder}/*"], **hub_kwargs)
        return Path(root) / subfolder
    return path


#: Weight files of a model folder written by ``accelerator.save_model`` (no ``config.json``),
#: single file or sharded with an index, in the order they are looked for.
_ACCELERATE_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                     "pytorch_model.bin.index.json")
_DIFFUSERS_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
                    "diffusion_pytorch_model.bin", "diffusion_pytorch_model.bin.index.json")


def _read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    """One ``.safetensors`` or ``.bin`` state dict; a clear error names the file when it is unreadable."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors, pickle and zip errors have no common base class
        raise ValueError(f"cannot read the weights {path}: {type(exc).__name__}: {exc} (corrupt or truncated file?)") from exc
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    return dict(state)


def _read_state_dict(folder: Path, name: str) -> dict[str, torch.Tensor]:
    path = folder / name
    if not name.endswith(".index.json"):
        return _read_weight_file(path)
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot read the shard index {path}: {exc}") from exc
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        if not (folder / shard).is_file():
            raise FileNotFoundError(f"{path} lists the shard {shard}, which is missing from {folder}")
        state.update(_read_weight_file(folder / shard))
    return state


def load_released_vae(
    vae_dir: PathLike, base: PathLike = DEFAULT_BASE, **hub_kwargs: Any
) -> tuple[AutoencoderKL, str]:
    """Load a released task folder's fine-tuned ``vae/`` in any layout the authors' code reads.

    * diffusers: ``config.json`` + ``diffusion_pytorch_model.{safetensors,bin}`` (or sharded);
    * accelerate (what the released trainer writes with ``accelerator.save_model`` and
      ``sample.py`` reads with ``accelerate.load_checkpoint_in_model``): ``model.safetensors``,
      ``pytorch_model.bin`` or a sharded ``*.index.json``, without ``config.json``; the
      architecture comes from ``base``'s ``vae/`` config (or from a ``config.json`` beside them).

    Every weight must match the architecture (strict): a partial load would silently mix
    fine-tuned and random weights.

    Returns:
        ``(vae, description)``: the model and one line saying which files and layout were used.

    Raises:
        FileNotFoundError: ``vae_dir`` holds no weights of a known layout.
        ValueError: the weights are unreadable or do not fit the architecture.
    """
    vae_dir = Path(vae_dir)
    has_config = (vae_dir / "config.json").is_file()
    diffusers_file = next((f for f in _DIFFUSERS_FILES if (vae_dir / f).is_file()), None)
    if has_config and diffusers_file is not None:
        try:
            vae = AutoencoderKL.from_pretrained(vae_dir)
        except Exception as exc:
            raise ValueError(f"cannot load the VAE in {vae_dir} (diffusers layout): {type(exc).__name__}: {exc}") from exc
        return vae, f"{vae_dir / diffusers_file} (diffusers layout, fine-tuned)"
    weights = next((f for f in _ACCELERATE_FILES if (vae_dir / f).is_file()), None)
    if weights is None:
        present = sorted(p.name for p in vae_dir.iterdir()) if vae_dir.is_dir() else []
        raise FileNotFoundError(
            f"{vae_dir} exists but holds no VAE weights the released code can read: expected config.json + "
            f"{_DIFFUSERS_FILES[0]} (diffusers) or one of {', '.join(_ACCELERATE_FILES)} (accelerate); found "
            f"{present or 'nothing'}. Remove the folder to use the base VAE, or fix it."
        )
    if has_config:
        config, origin = AutoencoderKL.load_config(vae_dir), f"{vae_dir / 'config.json'}"
    else:
        config, origin = AutoencoderKL.load_config(str(base), subfolder="vae", **hub_kwargs), f"{base} vae/config.json"
    vae = AutoencoderKL.from_config(config)
    state = _read_state_dict(vae_dir, weights)
    if state and all(k.startswith("module.") for k in state):  # saved from a wrapped model
        state = {k[len("module."):]: v for k, v in state.items()}
    expected = vae.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        details = "; ".join(
            f"{what} {len(keys)} (e.g. {keys[0]})"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise ValueError(
            f"the VAE weights {vae_dir / weights} do not fit the VAE architecture of {origin}: {details}. "
            "Wrong --base, or not a StableMotion VAE?"
        )
    vae.load_state_dict(state, strict=True)
    return vae, f"{vae_dir / weights} (accelerate layout, architecture from {origin}, fine-tuned)"


def import_released_checkpoint(
    task_folder: PathLike,
    output: PathLike,
    base: PathLike = DEFAULT_BASE,
    task: str | TaskSpec | None = None,
    *,
    subfolder: str | None = None,
    overwrite: bool = False,
    safe_serialization: bool = True,
    local_files_only: bool | None = None,
    cache_dir: PathLike | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Turn an authors' released task folder into a StableMotion pipeline folder.

    The pipeline config reproduces the released inference (:data:`RELEASED_INFERENCE`):
    ``prev_sample`` on the last DDIM step, masks fed as read, the released AES rounding and
    band. Only the processing resolution stays this package's (the task's: SIR 384x512,
    RSC 256x256; pass ``processing_resolution=0`` to run at the input's own size as the
    released SIR code does).

    Args:
        task_folder: folder with ``unet_ema/`` (diffusers UNet, 12 input channels for SIR,
            8 for RSC) and optionally ``vae/`` (SIR ships a fine-tuned VAE, in the
            accelerate layout ``model.safetensors`` without ``config.json``, or the
            diffusers layout; see :func:`load_released_vae`); without ``vae/`` the base VAE
            is used. With ``subfolder``, ``task_folder`` may be a hub id such as
            :data:`RELEASED_REPO` (downloaded once into the hub cache).
        output: the pipeline folder to write (``model_index.json`` layout).
        base: SD2 checkpoint (folder or hub id) for the scheduler and the empty-prompt
            embedding (and the VAE, or its config, when the task folder has none).
        task: the task; ``None`` infers it from the folder name and the channel count.
            The channel count must equal ``4 * (len(task.conditions) + 1)``; the released
            condition order is the task's declared order (SIR: mask, image; RSC: image),
            which is written to the pipeline config.
        overwrite: replace an existing ``output``.
        log: called with one line per component saying what was found and used
            (default: the module logger at INFO level; the CLI prints them).

    Returns:
        ``output`` as a ``Path``.
    """
    from .pipeline import StableMotionPipeline

    say = log or logger.info
    kw = _hub_kwargs(local_files_only, cache_dir, None)
    folder = _resolve_released(task_folder, subfolder, **kw)
    output = Path(output)
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"{output} already exists and is not empty; pass overwrite=True (--force)")
    unet_dir = folder / "unet_ema"
    if not (unet_dir / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a released StableMotion task folder: {unet_dir}/config.json missing")
    try:
        in_channels = int(json.loads((unet_dir / "config.json").read_text())["in_channels"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{unet_dir}/config.json is not a UNet config with in_channels: {exc}") from exc
    hint = subfolder or folder.name
    if task is None:
        spec = infer_task(in_channels, hint)
    else:
        spec = get_task(task)
        if spec.unet_in_channels != in_channels:
            raise ValueError(
                f"task {spec.name!r} needs {spec.unet_in_channels} UNet input channels (conditions "
                f"{list(spec.conditions)} + flow) but {unet_dir} has {in_channels}: wrong checkpoint for this task"
            )
    try:
        unet = UNet2DConditionModel.from_pretrained(unet_dir)
    except Exception as exc:
        raise ValueError(f"cannot load the UNet in {unet_dir}: {type(exc).__name__}: {exc}") from exc
    say(f"unet: {unet_dir} (in_channels {in_channels} = conditions {list(spec.conditions)} + noisy flow, "
        f"task {spec.name})")
    if (folder / "vae").is_dir():
        vae, vae_note = load_released_vae(folder / "vae", base, **kw)
    else:
        vae = AutoencoderKL.from_pretrained(str(base), subfolder="vae", **kw)
        vae_note = f"{base} vae/ (the base VAE: {folder} has no vae/ folder)"
    say(f"vae: {vae_note}")
    scheduler = make_scheduler(DDIMScheduler.load_config(str(base), subfolder="scheduler", **kw))
    say(f"scheduler: DDIM from {base} scheduler/ (trailing spacing, v-prediction, set_alpha_to_one="
        f"{scheduler.config.set_alpha_to_one}; final step: prev_sample, as released)")
    embedding = load_text_embedding(base, **kw)
    if embedding.config.embedding_dim != unet.config.cross_attention_dim:
        raise ValueError(
            f"the base's text embedding has dim {embedding.config.embedding_dim} but the UNet expects "
            f"cross_attention_dim {unet.config.cross_attention_dim}: wrong base checkpoint"
        )
    source = "stored text_embedding/" if (Path(str(base)) / "text_embedding").is_dir() else "text_encoder/ + tokenizer/"
    say(f"text embedding: empty prompt from {base} ({source}), shape {tuple(embedding.embedding.shape)}")
    pipe = StableMotionPipeline(unet=unet, vae=vae, scheduler=scheduler, text_embedding=embedding,
                                task=spec.to_dict(), **RELEASED_INFERENCE)
    tmp = output.with_name(f".{output.name}.tmp-import")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp, safe_serialization=safe_serialization)
    if output.exists():
        shutil.rmtree(output)
    tmp.rename(output)
    return output

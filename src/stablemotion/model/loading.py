"""Building, loading and importing StableMotion pipelines.

* :func:`build_pipeline` -- a ready :class:`~stablemotion.model.pipeline.StableMotionPipeline` for a
  task from an SD2 checkpoint (hub id or local diffusers folder): what training starts from.
* :func:`load_pipeline` / :func:`load_bundled_pipeline` / :func:`convert_pipeline` -- pipeline
  folders, the bundled ``stablemotion-mini`` models, dtype conversion.
* :func:`import_released_checkpoint` -- the authors' released task folders
  (``unet_ema/``, optional ``vae/`` in the diffusers or accelerate layout) + an SD2 base ->
  a pipeline folder whose config reproduces the released inference
  (:data:`RELEASED_INFERENCE`); the released folders' weights are read by
  :mod:`stablemotion.model.released_weights`.

The pipeline's pieces live in :mod:`stablemotion.model.components`, the tiny test models in
:mod:`stablemotion.model.tiny`, the regression baseline in :mod:`stablemotion.model.regression` and the
model names in :mod:`stablemotion.model.catalog`; their names are re-exported here.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

# Pipeline folders saved before components.py existed name "stablemotion.model" as the
# text embedding's library; diffusers looks the loading base classes up in that module.
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401

from ..io.images import PathLike, umask_modes
from ..tasks import TaskSpec, as_task_list, get_task, union_conditions
from .catalog import BUNDLED_MODELS, DEFAULT_BASE, RELEASED_REPO, RELEASED_SUBFOLDERS, bundled_model_path
from .components import (
    EmptyTextEmbedding,
    TaskEmbedding,
    adapt_conv_in,
    empty_text_embedding,
    expand_conv_in,
    infer_task,
    make_scheduler,
)
from .pipeline import StableMotionPipeline
from .regression import FlowRegressor
from .released_weights import (
    load_released_unet,
    load_released_vae,
    released_or_base_vae,
    resolve_released_folder,
)
from .tiny import ARCH_KEYS, save_tiny_base, tiny_components, tiny_pipeline

__all__ = [
    "DEFAULT_BASE",
    "RELEASED_REPO",
    "RELEASED_SUBFOLDERS",
    "RELEASED_INFERENCE",
    "EmptyTextEmbedding",
    "expand_conv_in",
    "empty_text_embedding",
    "make_scheduler",
    "load_text_embedding",
    "build_pipeline",
    "retarget_pipeline",
    "TaskEmbedding",
    "ARCH_KEYS",
    "tiny_components",
    "tiny_pipeline",
    "FlowRegressor",
    "save_tiny_base",
    "BUNDLED_MODELS",
    "bundled_model_path",
    "load_bundled_pipeline",
    "load_pipeline",
    "prepare_for_inference",
    "convert_pipeline",
    "infer_task",
    "import_released_checkpoint",
    "load_released_vae",
]

logger = logging.getLogger(__name__)

#: Pipeline config of an imported release: the released inference path (docs/method.md,
#: "Released checkpoint layout"): the last DDIM step's ``prev_sample``, masks fed as read,
#: AES in 8 bits with the median truncated and a fixed 20 px band.
RELEASED_INFERENCE: dict[str, Any] = {
    "default_final_step": "prev_sample",
    "mask_encoding": "as_read",
    "ensemble_rounding": "release",
    "scale_border_band": False,
}


def _stored_embedding(base: PathLike) -> EmptyTextEmbedding | TaskEmbedding | None:
    """A pipeline folder's stored ``text_embedding/`` (the empty prompt, or a multi-task model's
    prompts), or None when ``base`` has none."""
    folder = Path(base) / "text_embedding"
    if not folder.is_dir():
        return None
    cfg = json.loads((folder / "config.json").read_text())
    cls = TaskEmbedding if cfg.get("_class_name") == "TaskEmbedding" else EmptyTextEmbedding
    return cls.from_pretrained(str(folder))


def _text_encoder(base: PathLike, what: str, **hub_kwargs: Any) -> tuple[Any, Any]:
    """``(tokenizer, text_encoder)`` of a base checkpoint (folder or hub id), the encoder in eval
    mode; ``what`` names what they are for in the error of a folder that has neither."""
    from transformers import AutoTokenizer, CLIPTextModel

    base_path = Path(base)
    if base_path.is_dir() and not ((base_path / "text_encoder").is_dir() and (base_path / "tokenizer").is_dir()):
        raise FileNotFoundError(
            f"{base} has neither text_embedding/ nor text_encoder/ + tokenizer/: cannot compute {what}"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(base), subfolder="tokenizer", **hub_kwargs)
    return tokenizer, CLIPTextModel.from_pretrained(str(base), subfolder="text_encoder", **hub_kwargs).eval()


def load_text_embedding(base: PathLike, **hub_kwargs: Any) -> EmptyTextEmbedding:
    """The empty-prompt embedding of a base checkpoint (folder or hub id).

    Uses a stored ``text_embedding/`` component if present (a StableMotion pipeline
    folder; a multi-task model's first prompt), otherwise encodes the empty prompt with its
    ``text_encoder/`` + ``tokenizer/``.
    """
    stored = _stored_embedding(base)
    if isinstance(stored, TaskEmbedding):
        return EmptyTextEmbedding.from_tensor(stored.embedding[:1])
    if stored is not None:
        return stored
    tokenizer, text_encoder = _text_encoder(base, "the empty-prompt embedding", **hub_kwargs)
    return EmptyTextEmbedding.from_tensor(empty_text_embedding(text_encoder, tokenizer))


def _hub_kwargs(local_files_only: bool | None, cache_dir: PathLike | None, revision: str | None) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if local_files_only is not None:
        kw["local_files_only"] = local_files_only
    if cache_dir is not None:
        kw["cache_dir"] = str(cache_dir)
    if revision is not None:
        kw["revision"] = revision
    return kw


def _task_embedding(base: PathLike, names: list[str], **hub_kwargs: Any) -> TaskEmbedding:
    """Per-task prompts of a base checkpoint: its text encoder's encoding of each task's
    description, or (a pipeline folder, no text encoder) its stored prompt plus noise."""
    stored = _stored_embedding(base)
    if stored is not None:
        return TaskEmbedding.from_empty(names, stored.embedding[:1])
    tokenizer, text_encoder = _text_encoder(base, "the task prompts", **hub_kwargs)
    return TaskEmbedding.from_text_encoder(names, text_encoder, tokenizer)


def build_pipeline(
    base: PathLike = DEFAULT_BASE,
    task: str | TaskSpec | list[str | TaskSpec] = "sir",
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

    A list of tasks builds a multi-task model: ``conv_in`` for the union of their conditions
    (:func:`~stablemotion.tasks.union_conditions`) and a
    :class:`~stablemotion.model.components.TaskEmbedding` holding the text encoder's encoding of each
    task's description.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from stablemotion.model.tiny import save_tiny_base
        >>> base = save_tiny_base(Path(tempfile.mkdtemp()) / "base")   # a tiny SD2-like checkpoint
        >>> pipe = build_pipeline(base, "sir", local_files_only=True)
        >>> pipe.task.name, pipe.conditions, pipe.unet.config.in_channels   # conv_in: (mask, image, flow) x 4
        ('sir', ('mask', 'image'), 12)
    """
    specs = as_task_list(task)
    multi = isinstance(task, (list, tuple))
    kw = _hub_kwargs(local_files_only, cache_dir, revision)
    src = str(base)
    unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet", **kw)
    vae = AutoencoderKL.from_pretrained(src, subfolder="vae", **kw)
    scheduler = make_scheduler(DDIMScheduler.load_config(src, subfolder="scheduler", **kw))
    names = [t.name for t in specs]
    embedding = _task_embedding(base, names, **kw) if multi else load_text_embedding(base, **kw)
    expand_conv_in(unet, len(union_conditions(specs)))
    pipe = StableMotionPipeline(unet=unet, vae=vae, scheduler=scheduler, text_embedding=embedding,
                                task=specs[0].to_dict(), tasks=[t.to_dict() for t in specs] if multi else None)
    if torch_dtype is not None:
        pipe.to(dtype=torch_dtype)
    return pipe


#: Pipeline config keys that describe what a model does, not how it infers (not carried over by
#: :func:`retarget_pipeline`).
_TASK_KEYS = ("task", "tasks")


def retarget_pipeline(pipe: StableMotionPipeline, task: str | TaskSpec | list[str | TaskSpec],
                      seed: int = 0) -> StableMotionPipeline:
    """``pipe``'s weights as a model of ``task`` (one task, or a list for a multi-task model),
    to fine-tune a trained model into another task or into a multi-task model.

    ``conv_in`` is re-mapped by condition name (:func:`~stablemotion.model.components.adapt_conv_in`:
    a new condition starts at zero). A multi-task target gets a
    :class:`~stablemotion.model.components.TaskEmbedding`: a task ``pipe`` already serves keeps its
    prompt, a new one starts from ``pipe``'s (empty or first) prompt plus seeded noise. A
    single-task target keeps ``pipe``'s prompt for that task. The VAE, scheduler and inference
    settings are kept. Returns ``pipe`` itself when nothing changes.
    """
    specs = as_task_list(task)
    multi = isinstance(task, (list, tuple))
    names = [t.name for t in specs]
    old_multi = bool(pipe.config.get("tasks"))
    if multi == old_multi and names == list(pipe.tasks):
        return pipe
    old_emb = pipe.text_embedding
    if isinstance(old_emb, TaskEmbedding):
        rows = {n: old_emb.embedding[i : i + 1] for i, n in enumerate(old_emb.task_names)}
        first = old_emb.embedding[:1]
    else:
        rows, first = {}, old_emb.embedding
    if multi:
        fresh = TaskEmbedding.from_empty(names, first, seed=seed)
        with torch.no_grad():
            for i, n in enumerate(names):
                if n in rows:
                    fresh.embedding[i] = rows[n][0]
        embedding: EmptyTextEmbedding | TaskEmbedding = fresh
    else:
        embedding = EmptyTextEmbedding.from_tensor(rows.get(names[0], first).clone())
    if pipe.unet.dtype != torch.float32:
        embedding = embedding.to(dtype=pipe.unet.dtype)
    adapt_conv_in(pipe.unet, pipe.conditions, union_conditions(specs))
    config = {k: v for k, v in pipe.config.items() if not k.startswith("_") and k not in _TASK_KEYS
              and k not in ("unet", "vae", "scheduler", "text_embedding")}
    own = {n: r for n, r in (config.pop("task_resolutions", None) or {}).items() if n in names}
    if multi:
        config["task_resolutions"] = own or None
    elif names[0] in own:  # one task left: its own resolution becomes the default
        config["default_processing_resolution"] = own[names[0]]
    return StableMotionPipeline(unet=pipe.unet, vae=pipe.vae, scheduler=pipe.scheduler,
                                text_embedding=embedding, task=specs[0].to_dict(),
                                tasks=[t.to_dict() for t in specs] if multi else None, **config)


# --------------------------------------------------------------------------- bundled mini models
def load_bundled_pipeline(
    task: str | TaskSpec = "sir", torch_dtype: torch.dtype | str = "auto"
) -> StableMotionPipeline:
    """The bundled ``stablemotion-mini`` pipeline for ``task``, cast to ``torch_dtype``
    (weights are stored in fp16; ``"auto"``: :func:`load_pipeline`'s rule, float32 on a CPU
    without native bfloat16). When a multi-task model serves ``task``, it comes with ``task``
    as its default (calls without ``task=`` run it).

    The weights ship inside the package: no download.

    Example:
        >>> import numpy as np
        >>> pipe = load_bundled_pipeline("sir")
        >>> pipe.task.name, pipe.config.default_processing_resolution
        ('sir', [96, 128])
        >>> image = np.random.default_rng(0).random((48, 64, 3), dtype=np.float32)   # (H, W, 3) in [0, 1]
        >>> out = pipe(image, mask=np.ones((48, 64), np.float32), show_progress_bar=False)
        >>> tuple(out.flow.shape), tuple(out.image.shape)   # flow in pixels, image in [0, 1]
        ((1, 2, 48, 64), (1, 3, 48, 64))
    """
    name = get_task(task).name
    return load_pipeline(bundled_model_path(name), torch_dtype, progress=False).set_default_task(name)


def load_pipeline(folder: PathLike, torch_dtype: torch.dtype | str | None = "auto",
                  progress: bool = True) -> StableMotionPipeline:
    """``StableMotionPipeline.from_pretrained`` without diffusers' ``torch_dtype`` rename warning
    (we keep the old keyword: it works across the diffusers versions we support).

    ``torch_dtype``: a torch dtype, a name (``"fp32"``, ``"bf16"``, ``"fp16"``), ``None`` (the
    stored weights' dtype) or ``"auto"`` (default): the fastest dtype the default device
    (CUDA when available, else the CPU) computes in natively
    (:func:`stablemotion.model.precision.auto_dtype_name`: float32 on a CPU without native bfloat16).

    ``progress=False`` hides diffusers' "Loading pipeline components" bar for this call only
    (noise for small local folders; worth keeping for hub downloads of SD2-size models).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from stablemotion.model.tiny import tiny_pipeline
        >>> folder = Path(tempfile.mkdtemp()) / "tiny-sir"
        >>> tiny_pipeline("sir").save_pretrained(folder)
        >>> pipe = load_pipeline(folder, "fp32", progress=False)
        >>> type(pipe).__name__, pipe.task.name, pipe.unet.dtype
        ('StableMotionPipeline', 'sir', torch.float32)
    """
    import warnings

    from diffusers.utils import logging as diffusers_logging

    from .precision import torch_dtype_of

    dtype = torch_dtype_of(torch_dtype, "cuda" if torch.cuda.is_available() else "cpu")
    kwargs = {} if dtype is None else {"torch_dtype": dtype}
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


def prepare_for_inference(pipe: StableMotionPipeline, device: torch.device | str = "cpu",
                          channels_last: bool = True) -> StableMotionPipeline:
    """Move ``pipe`` to ``device``, put its UNet and VAE in channels_last memory format (1.13-1.28x
    faster SD2-size inference, BENCHMARKS.md) when ``channels_last``, and silence its per-call
    progress bar: what every command (and each Ray actor) does before inference -> ``pipe``.

    Example:
        >>> import torch
        >>> from stablemotion.model.tiny import tiny_pipeline
        >>> pipe = prepare_for_inference(tiny_pipeline("rsc"), "cpu")
        >>> pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        True
    """
    pipe.to(device)
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _refuse_existing(dst: Path, overwrite: bool) -> None:
    """Raise ``FileExistsError`` when ``dst`` holds files and ``overwrite`` is false."""
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise FileExistsError(f"{dst} already exists and is not empty; pass overwrite=True (--force)")


def _drop_source_paths(folder: Path) -> None:
    """Remove the ``_name_or_path`` diffusers records in a saved folder's configs (a local path on the
    machine that wrote it)."""
    for cfg in folder.rglob("*.json"):
        data = json.loads(cfg.read_text())
        if data.pop("_name_or_path", None) is not None:
            cfg.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _save_atomically(pipe: StableMotionPipeline, dst: Path, tmp_suffix: str, safe_serialization: bool = True,
                     finish: Callable[[Path], None] | None = None) -> Path:
    """``pipe.save_pretrained`` into ``.{dst.name}.{tmp_suffix}`` beside ``dst`` (``finish`` run on it),
    then swapped in for ``dst``: a reader never sees a half-written folder. Returns ``dst``."""
    tmp = dst.with_name(f".{dst.name}.{tmp_suffix}")
    if tmp.exists():
        shutil.rmtree(tmp)
    with umask_modes(tmp):  # safetensors writes 0600 files
        pipe.save_pretrained(str(tmp), safe_serialization=safe_serialization)
    if finish is not None:
        finish(tmp)
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)
    return dst


def convert_pipeline(src: PathLike, dst: PathLike, torch_dtype: torch.dtype = torch.float16,
                     overwrite: bool = False) -> Path:
    """Re-save the pipeline folder ``src`` with weights in ``torch_dtype`` (safetensors) at ``dst``,
    atomically. fp16 halves the size; the bundled mini models are stored this way.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from stablemotion.model.tiny import tiny_pipeline
        >>> tmp = Path(tempfile.mkdtemp())
        >>> tiny_pipeline("sir").save_pretrained(tmp / "fp32")
        >>> dst = convert_pipeline(tmp / "fp32", tmp / "fp16")
        >>> from safetensors.torch import load_file   # the stored weights are fp16
        >>> load_file(str(dst / "unet" / "diffusion_pytorch_model.safetensors"))["conv_in.weight"].dtype
        torch.float16
    """
    dst = Path(dst)
    _refuse_existing(dst, overwrite)
    pipe = load_pipeline(src, torch_dtype, progress=False)
    return _save_atomically(pipe, dst, "partial", finish=_drop_source_paths)


# --------------------------------------------------------------------------- released checkpoints
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
    say = log or logger.info
    kw = _hub_kwargs(local_files_only, cache_dir, None)
    folder = resolve_released_folder(task_folder, subfolder, **kw)
    output = Path(output)
    _refuse_existing(output, overwrite)
    unet, spec = load_released_unet(folder, task, subfolder or folder.name, say)
    vae = released_or_base_vae(folder, base, say, **kw)
    scheduler = make_scheduler(DDIMScheduler.load_config(str(base), subfolder="scheduler", **kw))
    say(f"scheduler: DDIM from {base} scheduler/ (trailing spacing, v-prediction, set_alpha_to_one="
        f"{scheduler.config.set_alpha_to_one}; final step: prev_sample, as released)")
    embedding = _released_embedding(base, int(unet.config.cross_attention_dim), say, **kw)
    pipe = StableMotionPipeline(unet=unet, vae=vae, scheduler=scheduler, text_embedding=embedding,
                                task=spec.to_dict(), **RELEASED_INFERENCE)
    return _save_atomically(pipe, output, "tmp-import", safe_serialization)


def _released_embedding(base: PathLike, cross_attention_dim: int, say: Callable[[str], None],
                        **hub_kwargs: Any) -> EmptyTextEmbedding:
    """``base``'s empty-prompt embedding, checked against the UNet's ``cross_attention_dim``."""
    embedding = load_text_embedding(base, **hub_kwargs)
    if embedding.config.embedding_dim != cross_attention_dim:
        raise ValueError(
            f"the base's text embedding has dim {embedding.config.embedding_dim} but the UNet expects "
            f"cross_attention_dim {cross_attention_dim}: wrong base checkpoint"
        )
    source = "stored text_embedding/" if (Path(str(base)) / "text_embedding").is_dir() else "text_encoder/ + tokenizer/"
    say(f"text embedding: empty prompt from {base} ({source}), shape {tuple(embedding.embedding.shape)}")
    return embedding

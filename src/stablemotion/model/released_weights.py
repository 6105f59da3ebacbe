"""Reading the authors' released task folders: the folder (local or from the hub), its ``unet_ema/``
and its fine-tuned ``vae/`` in the diffusers or accelerate layout, each weight checked against the
architecture. :func:`stablemotion.model.loading.import_released_checkpoint` assembles a pipeline from them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from ..io.images import PathLike
from ..tasks import TaskSpec, get_task
from .catalog import DEFAULT_BASE
from .components import infer_task

__all__ = ["resolve_released_folder", "load_released_unet", "load_released_vae", "released_or_base_vae"]

logger = logging.getLogger(__name__)


def resolve_released_folder(task_folder: PathLike, subfolder: str | None, **hub_kwargs: Any) -> Path:
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


def _load_strictly(vae: AutoencoderKL, state: Mapping[str, torch.Tensor], weights: Path, origin: str) -> None:
    """Load ``state`` into ``vae`` when every weight fits its architecture (no missing, unexpected or
    wrongly shaped key); else a ``ValueError`` counting each kind, with an example key."""
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
            f"the VAE weights {weights} do not fit the VAE architecture of {origin}: {details}. "
            "Wrong --base, or not a StableMotion VAE?"
        )
    vae.load_state_dict(state, strict=True)


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

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from safetensors.torch import save_file
        >>> from stablemotion.model.tiny import save_tiny_base, tiny_components
        >>> tmp = Path(tempfile.mkdtemp())
        >>> base = save_tiny_base(tmp / "base")
        >>> (tmp / "vae").mkdir()                       # the accelerate layout: weights, no config.json
        >>> save_file(tiny_components("sir", seed=1)["vae"].state_dict(), str(tmp / "vae" / "model.safetensors"))
        >>> vae, note = load_released_vae(tmp / "vae", base)
        >>> type(vae).__name__, "accelerate layout" in note
        ('AutoencoderKL', True)
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
    _load_strictly(vae, state, vae_dir / weights, origin)
    return vae, f"{vae_dir / weights} (accelerate layout, architecture from {origin}, fine-tuned)"


def load_released_unet(folder: Path, task: str | TaskSpec | None = None, hint: str | None = None,
                       say: Callable[[str], None] | None = None) -> tuple[UNet2DConditionModel, TaskSpec]:
    """A released task folder's ``unet_ema/`` and its task (``task``, or inferred from the channel
    count and the folder name ``hint``), checked against each other; ``say`` gets one line on what
    was loaded (default: the module logger at INFO level).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from stablemotion.model.tiny import tiny_components
        >>> folder = Path(tempfile.mkdtemp())
        >>> tiny_components("sir")["unet"].save_pretrained(folder / "unet_ema")
        >>> unet, spec = load_released_unet(folder, say=lambda line: None)
        >>> spec.name, unet.config.in_channels                  # 12 channels: SIR (mask, image, flow)
        ('sir', 12)
    """
    say = say or logger.info
    unet_dir = folder / "unet_ema"
    if not (unet_dir / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a released StableMotion task folder: {unet_dir}/config.json missing")
    try:
        in_channels = int(json.loads((unet_dir / "config.json").read_text())["in_channels"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{unet_dir}/config.json is not a UNet config with in_channels: {exc}") from exc
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
    return unet, spec


def released_or_base_vae(folder: Path, base: PathLike, say: Callable[[str], None], **hub_kwargs: Any) -> AutoencoderKL:
    """A released task folder's fine-tuned ``vae/`` (:func:`load_released_vae`), or ``base``'s VAE
    when it has none."""
    if (folder / "vae").is_dir():
        vae, note = load_released_vae(folder / "vae", base, **hub_kwargs)
    else:
        vae = AutoencoderKL.from_pretrained(str(base), subfolder="vae", **hub_kwargs)
        note = f"{base} vae/ (the base VAE: {folder} has no vae/ folder)"
    say(f"vae: {note}")
    return vae

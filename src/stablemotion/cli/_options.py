"""The command line's shared layer: one set of inference options and the helpers behind them.

``rectify``, ``evaluate``/``study`` and ``serve`` register the same options with
:func:`add_device_options` and :func:`add_inference_options`, so every command spells them
the same way (``--ensemble-mode`` everywhere, the same choices) and applies the same
policies (``channels_last``, dtype names, device checks). Sizes on the command line are
parsed by one rule, :func:`parse_size`. Importing this module does not import torch.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..constants import ENSEMBLE_MODES, FINAL_STEPS, FLOW_REGULARIZATIONS

if TYPE_CHECKING:
    import torch

    from ..pipeline import StableMotionPipeline

__all__ = [
    "DTYPE_NAMES",
    "ENSEMBLE_MODE_CHOICES",
    "FINAL_STEP_CHOICES",
    "FLOW_REGULARIZATION_CHOICES",
    "add_device_options",
    "add_inference_options",
    "parse_size",
    "size_arg",
    "resolve_dtype",
    "resolve_device",
    "inference_kwargs",
    "load_model",
    "prepare_for_inference",
    "Dist",
]

DTYPE_NAMES = ("fp32", "bf16", "fp16")
ENSEMBLE_MODE_CHOICES = ENSEMBLE_MODES
FINAL_STEP_CHOICES = FINAL_STEPS
FLOW_REGULARIZATION_CHOICES = FLOW_REGULARIZATIONS

_SIZE = re.compile(r"^\s*(\d+)\s*(?:[xX,]\s*(\d+))?\s*$")


def parse_size(value: str | int | list[int] | tuple[int, ...], name: str = "size",
               allow_zero: bool = False) -> tuple[int, int] | int:
    """One rule for every size on the command line.

    Accepts ``"384x512"`` / ``"384,512"`` / ``[384, 512]`` (H x W), ``"512"`` / ``[512]``
    (square) and, with ``allow_zero``, ``"0"`` (the input's own size).

    Returns:
        ``(H, W)``, or ``0``.

    Raises:
        ValueError: naming ``name`` and the accepted forms.
    """
    if isinstance(value, (list, tuple)):
        parts = [int(v) for v in value]
    else:
        m = _SIZE.match(str(value))
        if m is None:
            parts = []
        else:
            parts = [int(m.group(1))] + ([int(m.group(2))] if m.group(2) is not None else [])
    forms = "H W, HxW, N (square)" + (" or 0 (the input's own size)" if allow_zero else "")
    if len(parts) not in (1, 2):
        raise ValueError(f"{name} takes {forms}; got {value!r}")
    if parts == [0] and allow_zero:
        return 0
    if any(p < 1 for p in parts):
        raise ValueError(f"{name} must be positive ({forms}); got {value!r}")
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def size_arg(name: str, allow_zero: bool = False) -> Any:
    """An argparse ``type=`` for one token sizes (``HxW``/``N``)."""

    def parse(text: str) -> tuple[int, int] | int:
        try:
            return parse_size(text, name, allow_zero)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def add_device_options(p: argparse.ArgumentParser) -> None:
    """``--dtype``, ``--device``, ``--no-channels-last``."""
    p.add_argument("--dtype", choices=DTYPE_NAMES, default="fp32", help="weights and compute dtype (default fp32)")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda, cuda:1, mps ... (default auto; under accelerate: the process's device)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="keep the default memory format (channels_last is used by default: 1.13-1.28x faster "
                        "SD2-size inference, BENCHMARKS.md)")


def add_inference_options(p: argparse.ArgumentParser, steps: bool = True, ensemble: bool = True) -> None:
    """The sampling options, with the model's config as every default."""
    if steps:
        p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's, 1)")
    if ensemble:
        p.add_argument("--ensemble", type=int, default=None, help="ensemble members (default: the model's, 1)")
        p.add_argument("--ensemble-mode", choices=ENSEMBLE_MODE_CHOICES, default=None,
                       help="AES rule: image (released: median of warped images, minimum at the border), flow "
                            "(median flow) or latent (median latent, one decode); default: the model's")
    p.add_argument("--processing-resolution", nargs="+", default=None, metavar="N",
                   help="network resolution: H W, HxW, one int (square) or 0 (input size); default: the model's")
    p.add_argument("--decode-scale", type=int, default=1,
                   help="decode the flow at 1/N of the processing resolution (about N^2 fewer decoder FLOPs; "
                        "1.5x faster at 2, for smooth flows; default 1)")
    p.add_argument("--final-step", choices=FINAL_STEP_CHOICES, default=None,
                   help="last denoising step returns the x0 estimate or DDIM's prev_sample (the release); "
                        "default: the model's")
    p.add_argument("--flow-regularization", choices=FLOW_REGULARIZATION_CHOICES, default=None,
                   help="mesh: project the flow onto a smooth mesh of per-cell homographies (straight lines stay "
                        "straight, no ripples); default: the model's (none)")


def resolve_dtype(name: str) -> torch.dtype:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else is checked to exist here."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r} is not a device name; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name}: unsupported device type {dev.type!r}; use auto, cpu, cuda, cuda:N or mps")
    return dev


def inference_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Pipeline keyword arguments from the options of :func:`add_inference_options`."""
    res = args.processing_resolution
    if res is not None:
        res = parse_size(res if len(res) > 1 else res[0], "--processing-resolution", allow_zero=True)
    if getattr(args, "decode_scale", 1) < 1:
        raise ValueError(f"--decode-scale must be >= 1, got {args.decode_scale}")
    scalar = {k: getattr(args, k, None) for k in ("steps", "ensemble")}
    scalar = {k: v if isinstance(v, int) else None for k, v in scalar.items()}  # study commands take lists
    for key, value in scalar.items():
        if value is not None and value < 1:
            raise ValueError(f"--{key} must be >= 1, got {value}")
    return {
        "num_inference_steps": scalar["steps"],
        "ensemble_size": scalar["ensemble"],
        "ensemble_mode": getattr(args, "ensemble_mode", None),
        "processing_resolution": res,
        "decode_scale": args.decode_scale,
        "final_step": args.final_step,
        "flow_regularization": getattr(args, "flow_regularization", None),
    }


def check_model_folder(model: str | os.PathLike) -> None:
    """Cheap checks of a pipeline folder before loading anything (a hub id passes)."""
    path = Path(model)
    if not path.exists():
        if len(Path(str(model)).parts) == 2 and not str(model).startswith((".", "/")):
            return  # looks like a hub id (owner/name)
        raise FileNotFoundError(f"model folder not found: {model}")
    if not path.is_dir():
        raise ValueError(f"{model} is a file; pass a pipeline folder (with model_index.json)")
    index = path / "model_index.json"
    if not index.is_file():
        if (path / "unet_ema").is_dir() or any(p.name.startswith("StableMotion_") for p in path.iterdir()):
            raise ValueError(
                f"{path} looks like a released checkpoint folder; convert it first with "
                f"`stablemotion import-checkpoint {path} --out PIPELINE_DIR`"
            )
        raise FileNotFoundError(f"{path} is not a pipeline folder (no model_index.json)")
    import json

    try:
        config = json.loads(index.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{index} is not valid JSON ({exc}); the pipeline folder is damaged") from None
    for component in ("unet", "vae", "scheduler", "text_embedding"):
        if component in config and not (path / component).is_dir():
            raise FileNotFoundError(f"{path}: the {component}/ folder named in model_index.json is missing")


def load_model(model: str | None, task: str | None, dtype: torch.dtype, quiet: bool = False) -> StableMotionPipeline:
    """The pipeline for ``--model`` (a folder or hub id) or, without one, the bundled model of
    ``--task``; every failure is one line naming the folder."""
    from ..catalog import BUNDLED_LIMITS, BUNDLED_MODELS, bundled_model_path
    from ..model import load_pipeline
    from ..tasks import describe_model_tasks

    if model is None:
        name = task or "sir"
        path = bundled_model_path(name)
        if not quiet:
            print(f"no --model given: using the bundled {BUNDLED_MODELS[name]} model ({path}); it is small and "
                  "trained on synthetic data only, see the README for full models")
            if name in BUNDLED_LIMITS:
                print(f"note: {BUNDLED_LIMITS[name]}")
        return load_pipeline(path, dtype, progress=False).set_default_task(name)
    check_model_folder(model)
    try:
        pipe = load_pipeline(model, dtype)
    except OSError as exc:
        text = str(exc)
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        if not Path(model).exists() and offline:
            raise ValueError(f"--model {model}: offline (HF_HUB_OFFLINE=1) and not in the hub cache") from None
        raise ValueError(f"cannot load --model {model}: {text.splitlines()[0] if text else type(exc).__name__}") from None
    except Exception as exc:  # corrupt safetensors, bad configs: diffusers raises many kinds
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"cannot load --model {model} ({type(exc).__name__}: {first}); the folder is damaged "
                         "or not a StableMotion pipeline") from None
    if task is not None and task not in pipe.tasks:
        raise ValueError(f"--task {task} but the model {model} is {describe_model_tasks(pipe.tasks)}")
    return pipe


def prepare_for_inference(pipe: StableMotionPipeline, device: torch.device, channels_last: bool = True) -> None:
    """Move to ``device``, apply the channels_last policy, silence the per-call progress bar."""
    import torch

    pipe.to(device)
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(disable=True)


class Dist:
    """Process rank / world / device / barrier, from accelerate when launched with it
    (``accelerate launch`` or ``torchrun``: one process per device, each takes a shard)."""

    def __init__(self, device_arg: str) -> None:
        self.rank, self.world = 0, 1
        self._state = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import torch
            from accelerate import PartialState

            self._state = PartialState(cpu=device_arg == "cpu" or not torch.cuda.is_available())
            self.rank, self.world = self._state.process_index, self._state.num_processes
            self.device = self._state.device
        else:
            self.device = resolve_device(device_arg)

    def barrier(self) -> None:
        if self._state is not None:
            self._state.wait_for_everyone()

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list) -> list:
        """This process's share: every ``world``-th item from ``rank``."""
        return items[self.rank :: self.world]

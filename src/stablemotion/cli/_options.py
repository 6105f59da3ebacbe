"""The command line's shared layer: one set of inference options and the helpers behind them.

``rectify``, ``evaluate``/``study`` and ``serve`` register the same options with
:func:`add_device_options` and :func:`add_inference_options`, so every command spells them
the same way (``--ensemble-mode`` everywhere, the same choices) and applies the same
policies (``channels_last``, dtype names, device checks). Sizes on the command line are
parsed by one rule, :func:`parse_size`. Numbers are checked by argparse ``type=`` functions
(:func:`int_arg`, :func:`float_arg`, :func:`seed_arg`, :func:`max_pixels_arg`): a value out of
range (``inf``, ``nan``, ``--ensemble 100000``) stops the command with exit status 2 and one
line naming the option and the accepted range, before any model is loaded. Importing this
module does not import torch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.constants import ASPECT_MODES, ENSEMBLE_MODES, FINAL_STEPS, FLOW_REGULARIZATIONS
from ..core.errors import is_out_of_memory
from ..core.sizes import parse_size
from ..core.sizes import shown_value as _show
from ..model.precision import DTYPE_CHOICES, DTYPE_NAMES  # no torch import

if TYPE_CHECKING:
    import torch

    from ..model.pipeline import StableMotionPipeline

__all__ = [
    "DTYPE_NAMES",
    "ENSEMBLE_MODE_CHOICES",
    "FINAL_STEP_CHOICES",
    "FLOW_REGULARIZATION_CHOICES",
    "add_device_options",
    "add_inference_options",
    "parse_size",
    "size_arg",
    "int_arg",
    "float_arg",
    "seed_arg",
    "max_pixels_arg",
    "MAX_ENSEMBLE",
    "MAX_SIDE",
    "MAX_STEPS",
    "MAX_DECODE_SCALE",
    "MAX_SEED",
    "resolve_dtype",
    "settle_dtype",
    "resolve_device",
    "inference_kwargs",
    "load_model",
    "prepare_for_inference",
    "Dist",
    "is_out_of_memory",
    "out_of_memory_message",
]

ENSEMBLE_MODE_CHOICES = ENSEMBLE_MODES
FINAL_STEP_CHOICES = FINAL_STEPS
FLOW_REGULARIZATION_CHOICES = FLOW_REGULARIZATIONS


#: Upper bounds of the command line's numbers: far above any sensible run, low enough that a
#: typo fails at once with a message instead of exhausting memory after the model loaded.
#: The pipeline's own rules (steps <= the scheduler's training steps, sizes multiples of the
#: model's downsampling, decode scales dividing the latent size) are checked from the model's
#: config files before it loads (:func:`inference_kwargs`).
MAX_ENSEMBLE = 64
MAX_STEPS = 1000  # the length of the training schedule of every Stable Diffusion 2 base
MAX_SIDE = 8192  # pixels per side: processing resolutions, synthetic sizes
MAX_DECODE_SCALE = 64
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes up to 2**64 - 1; seeds are offset by sample indices
MAX_MASK_TOLERANCE = 255  # a distance between uint8 channel values (derive_mask's range)


def size_arg(name: str, allow_zero: bool = False, maximum: int | None = MAX_SIDE) -> Any:
    """An argparse ``type=`` for one token sizes (``HxW``/``N``), at most ``maximum`` a side."""

    def parse(text: str) -> tuple[int, int] | int:
        try:
            return parse_size(text, name, allow_zero, maximum)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def int_arg(low: int, high: int | None = None, what: str = "an integer") -> Callable[[str], int]:
    """An argparse ``type=``: an integer in ``[low, high]`` (``high=None``: no upper bound).

    The message names the range; argparse adds the option (``argument --ensemble: must be
    an integer from 1 to 64, got '100000'``) and exits with status 2.
    """
    span = f"from {low} to {high}" if high is not None else f">= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text.strip()) if len(text.strip()) <= 40 else None
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {what} {span}, got {_show(text)}")
        return value

    parse.__name__ = "integer"
    return parse


def float_arg(low: float, high: float | None = None, open_low: bool = False,
              what: str = "a number") -> Callable[[str], float]:
    """An argparse ``type=``: a finite number in ``[low, high]`` (``(low, high]`` with ``open_low``);
    ``inf`` and ``nan`` are refused."""
    if math.isinf(low):
        span = "(finite)" if high is None else f"<= {high:g}"
    elif high is None:
        span = f"{'>' if open_low else '>='} {low:g}"
    else:
        span = f"in {'(' if open_low else '['}{low:g}, {high:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or (value <= low if open_low else value < low) or \
                (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {what} {span}, got {_show(text)}")
        return value

    parse.__name__ = "number"
    return parse


#: ``--seed``: what ``torch.Generator().manual_seed`` and numpy take, with room for per-sample offsets.
seed_arg = int_arg(0, MAX_SEED, what="a seed (an integer)")


def max_pixels_arg(text: str) -> int:
    """``--max-pixels``: a finite pixel count (``1e8`` or ``100000000``); 0 = no limit."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(
            f"must be a number of pixels >= 0 such as 1e8 (0 = no limit), got {_show(text)}")
    return int(value)


class _SizeAction(argparse.Action):
    """``--processing-resolution H W`` / ``HxW`` / ``N`` / ``0``, parsed (and bounded) as it is read."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        try:
            value = parse_size(values if len(values) > 1 else values[0], self.option_strings[0],
                               allow_zero=True, maximum=MAX_SIDE)
        except ValueError as exc:
            raise argparse.ArgumentError(None, str(exc)) from None  # the message names the option
        setattr(namespace, self.dest, value)


def add_device_options(p: argparse.ArgumentParser) -> None:
    """``--dtype``, ``--device``, ``--no-channels-last``."""
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="auto",
                   help="weights and compute dtype (default auto: bf16 on GPUs and CPUs with native bfloat16, "
                        "fp16 on other GPUs, fp32 otherwise; the choice is printed)")
    p.add_argument("--device", default="auto",
                   help="auto, cpu, cuda, cuda:1, mps ... (default auto; under accelerate: the process's device)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="keep the default memory format (channels_last is used by default: 1.13-1.28x faster "
                        "SD2-size inference, BENCHMARKS.md)")


def add_inference_options(p: argparse.ArgumentParser, steps: bool = True, ensemble: bool = True) -> None:
    """The sampling options, with the model's config as every default."""
    if steps:
        p.add_argument("--steps", type=int_arg(1, MAX_STEPS), default=None,
                       help=f"denoising steps, 1 to {MAX_STEPS} (default: the model's, 1)")
    if ensemble:
        p.add_argument("--ensemble", type=int_arg(1, MAX_ENSEMBLE), default=None,
                       help=f"ensemble members, 1 to {MAX_ENSEMBLE} (default: the model's, 1)")
        p.add_argument("--ensemble-mode", choices=ENSEMBLE_MODE_CHOICES, default=None,
                       help="AES rule: image (released: median of warped images, minimum at the border), flow "
                            "(median flow) or latent (median latent, one decode); default: the model's")
    p.add_argument("--processing-resolution", nargs="+", action=_SizeAction, default=None, metavar="N",
                   help=f"network resolution: H W, HxW, one int (square) or 0 (input size), multiples of the "
                        f"model's size factor, at most {MAX_SIDE}; default: the model's")
    p.add_argument("--decode-scale", type=int_arg(1, MAX_DECODE_SCALE), default=1,
                   help="decode the flow at 1/N of the processing resolution (about N^2 fewer decoder FLOPs; "
                        "1.5x faster at 2, for smooth flows; default 1)")
    p.add_argument("--final-step", choices=FINAL_STEP_CHOICES, default=None,
                   help="last denoising step returns the x0 estimate or DDIM's prev_sample (the release); "
                        "default: the model's")
    p.add_argument("--aspect-mode", choices=ASPECT_MODES, default=None,
                   help="images far wider or taller than the network's view: windows (overlapping windows of its "
                        "aspect ratio, blended), squeeze (resized whole) or auto (windows for SIR; the default)")
    p.add_argument("--flow-regularization", choices=FLOW_REGULARIZATION_CHOICES, default=None,
                   help="mesh: project the flow onto a smooth mesh of per-cell homographies (straight lines stay "
                        "straight, no ripples); default: the model's (none)")


def resolve_dtype(name: str, device: torch.device | str = "cpu") -> torch.dtype:
    """The torch dtype of a ``--dtype`` name, ``auto`` resolved for ``device``
    (:func:`stablemotion.model.precision.torch_dtype_of`)."""
    from ..model.precision import torch_dtype_of

    dtype = torch_dtype_of(name, device)
    assert dtype is not None
    return dtype


def settle_dtype(args: argparse.Namespace, device: torch.device | str, show: bool = True) -> str:
    """Resolve ``args.dtype`` (``auto``) for ``device`` in place, so that what is recorded (settings,
    manifests) is the dtype that ran; prints the choice once when ``show`` -> the resolved name."""
    from ..model.precision import describe_choice, resolve_dtype_name

    asked = args.dtype
    args.dtype = resolve_dtype_name(asked, device)
    if show and asked == "auto":
        print(describe_choice(asked, device))
    return str(args.dtype)


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
    """Pipeline keyword arguments from the options of :func:`add_inference_options`.

    Values are checked here, before any model loads: the ranges of the options (for a
    ``Namespace`` not made by the parser) and, when ``args.model`` (or the bundled model of
    ``args.task``) is a folder, the model's own rules read from its config files (steps, the
    processing resolution's multiple, the decode scale). Errors are ``ValueError`` naming the
    option.
    """
    res = args.processing_resolution
    if isinstance(res, (list, tuple)) and res and all(isinstance(r, str) for r in res):  # not parsed yet
        res = parse_size(res if len(res) > 1 else res[0], "--processing-resolution", allow_zero=True,
                         maximum=MAX_SIDE)
    decode_scale = getattr(args, "decode_scale", 1)
    if not isinstance(decode_scale, int) or not 1 <= decode_scale <= MAX_DECODE_SCALE:
        raise ValueError(f"--decode-scale must be an integer from 1 to {MAX_DECODE_SCALE}, got {decode_scale}")
    scalar = {k: getattr(args, k, None) for k in ("steps", "ensemble")}
    scalar = {k: v if isinstance(v, int) else None for k, v in scalar.items()}  # study commands take lists
    for key, value in scalar.items():
        high = MAX_STEPS if key == "steps" else MAX_ENSEMBLE
        if value is not None and not 1 <= value <= high:
            raise ValueError(f"--{key} must be an integer from 1 to {high}, got {value}")
    kwargs = {
        "num_inference_steps": scalar["steps"],
        "ensemble_size": scalar["ensemble"],
        "ensemble_mode": getattr(args, "ensemble_mode", None),
        "processing_resolution": res,
        "decode_scale": decode_scale,
        "final_step": args.final_step,
        "flow_regularization": getattr(args, "flow_regularization", None),
    }
    if getattr(args, "aspect_mode", None) is not None:  # only when asked: older output folders keep their records
        kwargs["aspect_mode"] = args.aspect_mode
    steps = getattr(args, "steps", None)  # a list for `study steps`
    check_model_limits(args, steps if isinstance(steps, list) else [kwargs["num_inference_steps"]],
                       kwargs["processing_resolution"], decode_scale)
    return kwargs


def _model_config(args: argparse.Namespace) -> tuple[str, dict[str, Any], Path] | None:
    """``(name, model_index.json, folder)`` of the model a command will load, read without
    loading anything; None when it cannot be told cheaply (a hub id, several models, no folder yet)."""
    model, task = getattr(args, "model", None), getattr(args, "task", None)
    if model is None:
        if not hasattr(args, "model") or task == "auto":
            return None
        from ..model.catalog import BUNDLED_MODELS, bundled_model_path

        if (task or "sir") not in BUNDLED_MODELS:
            return None
        try:
            folder = bundled_model_path(task or "sir")
        except (ValueError, FileNotFoundError):
            return None
        name = f"the bundled {BUNDLED_MODELS[task or 'sir']} model"
    elif isinstance(model, (str, os.PathLike)):
        folder, name = Path(model), f"the model {model}"
    else:  # serve: one --model per task
        return None
    try:
        return name, json.loads((folder / "model_index.json").read_text()), folder
    except (OSError, ValueError):
        return None  # load_model explains what is wrong with the folder


def check_model_limits(args: argparse.Namespace, steps: list[int | None], resolution: tuple[int, int] | int | None,
                       decode_scale: int) -> None:
    """The pipeline's own rules (``StableMotionPipeline.check_inputs``), checked from the model's
    config files before it loads: steps at most the scheduler's ``num_train_timesteps``, an
    explicit processing resolution a multiple of the model's size factor (VAE x UNet
    downsampling), a decode scale that divides the latent size. Nothing is checked when the
    model cannot be read cheaply; loading then reports it."""
    found = _model_config(args)
    if found is None:
        return
    name, index, folder = found
    try:
        train_steps = int(json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
                          ["num_train_timesteps"])
    except (OSError, ValueError, KeyError, TypeError):
        train_steps = None
    for s in steps:
        if train_steps is not None and s is not None and s > train_steps:
            raise ValueError(f"--steps {s}: {name} was trained with {train_steps} steps; use 1 to {train_steps}")
    try:
        vae = 2 ** (len(json.loads((folder / "vae" / "config.json").read_text())["block_out_channels"]) - 1)
        unet = 2 ** (len(json.loads((folder / "unet" / "config.json").read_text())["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        return
    multiple = vae * unet  # StableMotionPipeline.size_multiple
    if isinstance(resolution, tuple) and (min(resolution) < multiple or resolution[0] % multiple
                                          or resolution[1] % multiple):
        raise ValueError(f"--processing-resolution {resolution[0]}x{resolution[1]}: {name} takes multiples of "
                         f"{multiple} (e.g. {max(multiple, resolution[0] // multiple * multiple)}x"
                         f"{max(multiple, resolution[1] // multiple * multiple)}), or 0 for the input's own size")
    if decode_scale == 1 or resolution == 0:
        return  # at the input's own size the decode scale is checked per image
    size = resolution
    if size is None:  # the model's default for the task
        task = getattr(args, "task", None)
        try:
            default = (index.get("task_resolutions") or {}).get(task) or index["default_processing_resolution"]
            size = (int(default[0]), int(default[1]))
        except (KeyError, TypeError, ValueError, IndexError):
            return
    latent = (size[0] // vae, size[1] // vae)
    if latent[0] % decode_scale or latent[1] % decode_scale:
        raise ValueError(f"--decode-scale {decode_scale} must divide the latent size {latent[0]}x{latent[1]} "
                         f"(processing resolution {size[0]}x{size[1]} / {vae}) of {name}")


#: Options that lower the memory a run needs, in the order to try them (an out-of-memory
#: message names those the command has).
MEMORY_OPTIONS = (("max_work_pixels", "a smaller --max-work-pixels"),
                  ("processing_resolution", "a smaller --processing-resolution"),
                  ("ensemble", "a smaller --ensemble"), ("max_pixels", "a smaller --max-pixels"),
                  ("decode_scale", "--decode-scale 2"), ("dtype", "--dtype bf16"), ("workers", "fewer --workers"))


def out_of_memory_message(exc: BaseException, args: argparse.Namespace) -> str:
    """One line for an out-of-memory error: its first line, then what to lower among the
    options ``args`` (the command's) has. For the command line's top level and per-image handlers."""
    first = (str(exc).splitlines() or [type(exc).__name__])[0][:200] or type(exc).__name__
    tries = [flag for dest, flag in MEMORY_OPTIONS if hasattr(args, dest)] or ["smaller inputs"]
    return f"out of memory ({first}); try {', '.join(tries)}, or a device with more memory"


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
    from ..model.catalog import BUNDLED_LIMITS, BUNDLED_MODELS, bundled_model_path
    from ..model.loading import load_pipeline
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
    """Move to ``device``, apply the channels_last policy, silence the per-call progress bar
    (:func:`stablemotion.model.loading.prepare_for_inference`)."""
    from ..model.loading import prepare_for_inference as prepare

    prepare(pipe, device, channels_last)


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

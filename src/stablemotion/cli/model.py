"""Model folders on the command line: ``import-checkpoint``, ``convert`` and ``tiny-model``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..model.catalog import DEFAULT_BASE, RELEASED_REPO, RELEASED_SUBFOLDERS
from ..tasks import available_tasks
from ._options import DTYPE_NAMES, MAX_SIDE, check_model_folder, parse_size, resolve_dtype, seed_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-checkpoint",
        help="turn the authors' released task folder (unet_ema/, optional vae/) into a pipeline folder",
        description=(
            "Import a released StableMotion task folder (unet_ema/ with 12 input channels for SIR, 8 for RSC; "
            "SIR also ships vae/) plus a Stable Diffusion 2 base (scheduler, empty-prompt embedding, and the VAE "
            f"when the folder has none). Online: pass {RELEASED_REPO} with --subfolder "
            f"{'/'.join(RELEASED_SUBFOLDERS.values())} to download (cached) and import."
        ),
    )
    p.add_argument("source", help=f"released task folder, a folder holding it (with --subfolder), or a hub id ({RELEASED_REPO})")
    p.add_argument("--out", type=Path, required=True, help="pipeline folder to write")
    p.add_argument("--base", default=DEFAULT_BASE, help=f"SD2 folder or hub id (default {DEFAULT_BASE})")
    p.add_argument("--task", choices=available_tasks(), default=None, help="default: from the folder name and channel count")
    p.add_argument("--subfolder", default=None, help="task subfolder inside SOURCE, e.g. StableMotion_SIR")
    p.add_argument("--offline", action="store_true", help="never download; use local files / the hub cache only")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=_import)

    p = sub.add_parser("convert", help="re-save a pipeline folder with its weights in another dtype (fp16 halves the size)")
    p.add_argument("source", type=Path, help="pipeline folder")
    p.add_argument("--out", type=Path, required=True, help="pipeline folder to write")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default="fp16")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=_convert)

    p = sub.add_parser("tiny-model", help="write a tiny random-weight pipeline folder (tests, CPU experiments)")
    p.add_argument("--out", type=Path, required=True, help="pipeline folder to write")
    p.add_argument("--task", nargs="+", choices=available_tasks(), default=["sir"],
                   help="the task; several tasks make a multi-task model (one UNet, a prompt per task)")
    p.add_argument("--seed", type=seed_arg, default=0, help="weights' seed (default 0)")
    p.add_argument("--resolution", nargs="+", default=["32", "32"], metavar="N",
                   help="default processing resolution stored in the config: H W, HxW or N (multiples of 4)")
    p.add_argument("--force", action="store_true", help="write into an existing non-empty folder")
    p.set_defaults(func=_tiny)


def _import(args: argparse.Namespace) -> int:
    from ..model.loading import import_released_checkpoint

    out = import_released_checkpoint(
        args.source,
        args.out,
        base=args.base,
        task=args.task,
        subfolder=args.subfolder,
        overwrite=args.force,
        local_files_only=True if args.offline else None,
        log=print,
    )
    print(f"wrote pipeline folder {out} (inference settings of the release: final step prev_sample, masks as "
          "read, AES rounding and band as aes.py)")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from ..model.loading import convert_pipeline

    check_model_folder(args.source)
    if args.out.exists() and any(args.out.iterdir()) and not args.force:
        raise FileExistsError(f"{args.out} already exists and is not empty; pass --force")
    try:
        out = convert_pipeline(args.source, args.out, resolve_dtype(args.dtype), overwrite=args.force)
    except (FileExistsError, ValueError):
        raise
    except Exception as exc:  # corrupt weights, bad configs: diffusers and safetensors raise many kinds
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"cannot load {args.source} ({type(exc).__name__}: {first}); the folder is damaged") from None
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {args.dtype} pipeline folder {out} ({size / 1e6:.1f} MB)")
    return 0


def _tiny(args: argparse.Namespace) -> int:
    from ..io.images import umask_modes
    from ..model.tiny import tiny_pipeline

    out: Path = args.out
    if out.exists() and any(out.iterdir()) and not args.force:
        raise FileExistsError(f"{out} already exists and is not empty; pass --force")
    res = parse_size(args.resolution if len(args.resolution) > 1 else args.resolution[0], "--resolution",
                     maximum=MAX_SIDE)
    if res[0] % 4 or res[1] % 4:
        raise ValueError(f"--resolution must be multiples of 4 for the tiny model, got {res[0]}x{res[1]}")
    task = args.task[0] if len(args.task) == 1 else list(args.task)
    pipe = tiny_pipeline(task, seed=args.seed, default_processing_resolution=list(res))
    with umask_modes(out):  # safetensors writes 0600 files; give the weights the usual mode
        pipe.save_pretrained(out)
    print(f"wrote tiny {'+'.join(args.task)} pipeline folder {out} (random weights)")
    return 0

"""``stablemotion rectify``: rectify image files or folders with a StableMotion pipeline.

For each input ``NAME.ext`` it writes into ``--out``:

* ``NAME.png`` -- the rectified image (input resolution; ``--image-ext`` picks the format),
* ``NAME_flow.npy`` (or ``.flo``) -- the backward flow (H, W, 2), pixels,
* ``NAME_flow.png`` -- its Middlebury colour picture,
* ``NAME_mask.png`` -- with ``--save-mask`` (SIR), the mask that was used (255 = valid),
* ``NAME_uncertainty.npy`` -- with ``--ensemble`` > 1, the ensemble spread (H, W), pixels.

Every output is written atomically; existing outputs are an error unless ``--force``
(checked for all inputs before any image is processed). SIR masks come from ``--mask`` (a
file for one input, or a folder matched by file stem); without ``--mask`` they are
derived from the stitched image's empty border (see
:func:`stablemotion.image_processing.derive_mask`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from .._io import IMAGE_EXTENSIONS, atomic_path, list_images, load_image, save_image
from ..flow import write_flow
from ..image_processing import pil_to_rgb, prepare_mask
from ..tasks import MASK_CONDITIONS, available_tasks

if TYPE_CHECKING:
    from ..pipeline import StableMotionPipeline

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rectify",
        help="rectify images (SIR rectangling / RSC rolling-shutter correction) with a StableMotion model",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files and/or folders of images")
    p.add_argument("--model", default=None,
                   help="pipeline folder (see import-checkpoint) or hub id; default: the bundled stablemotion-mini "
                        "model for --task (small, trained on synthetic data)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--task", choices=available_tasks(), default=None,
                   help="check the model is for this task; without --model it picks the bundled model (default sir)")
    p.add_argument("--mask", type=Path, default=None, help="SIR mask file (one input) or folder (matched by stem)")
    p.add_argument("--save-mask", action="store_true", help="write the mask used (derived or given) as NAME_mask.png")
    p.add_argument("--mask-background", choices=("auto", "black", "white"), default="auto",
                   help="colour of the stitched image's empty border for derived masks (default: auto)")
    p.add_argument("--mask-tolerance", type=int, default=24,
                   help="max per-channel distance (0-255) from the border colour counted as empty (default 24)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's, 1)")
    p.add_argument("--ensemble", type=int, default=None, help="ensemble members (default: the model's, 1)")
    p.add_argument("--ensemble-mode", choices=("image", "flow"), default=None,
                   help="AES rule: image (released: median of warped images, minimum at the border) or flow")
    p.add_argument("--processing-resolution", type=int, nargs="+", default=None, metavar="N",
                   help="network resolution: H W, one int (square) or 0 (input size); default: the model's")
    p.add_argument("--final-step", choices=("x0", "prev_sample"), default=None,
                   help="last denoising step returns the x0 estimate or DDIM's prev_sample (the release); "
                        "default: the model's")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default auto)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (each image uses the same seed)")
    p.add_argument("--flow-format", choices=("npy", "flo"), default="npy")
    p.add_argument("--image-ext", choices=("png", "jpg", "tif"), default="png", help="format of the rectified image")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.set_defaults(func=_rectify)


@dataclass
class _Job:
    stem: str
    image: Path
    mask: Path | None


def _collect_inputs(inputs: list[Path]) -> list[tuple[str, Path]]:
    found: dict[str, Path] = {}
    for item in inputs:
        if item.is_dir():
            images = list_images(item)
            if not images:
                raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {item}")
            entries = list(images.items())
        elif item.is_file():
            entries = [(item.stem, item)]
        else:
            raise FileNotFoundError(f"input not found: {item}")
        for stem, path in entries:
            if stem in found and found[stem] != path:
                raise ValueError(f"two inputs share the name {stem!r} ({found[stem]}, {path}); outputs would collide")
            found[stem] = path
    return list(found.items())


def _plan(args: argparse.Namespace, items: list[tuple[str, Path]], needs_mask: bool) -> list[_Job]:
    if args.mask is None:
        return [_Job(stem, path, None) for stem, path in items]
    if not needs_mask:
        raise ValueError("--mask was given but this model's task takes no mask")
    if args.mask.is_dir():
        masks = list_images(args.mask)
        missing = [stem for stem, _ in items if stem not in masks]
        if missing:
            raise ValueError(
                f"no mask in {args.mask} for {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} "
                "(masks are matched by file stem); drop --mask to derive masks from the empty border"
            )
        return [_Job(stem, path, masks[stem]) for stem, path in items]
    if not args.mask.is_file():
        raise FileNotFoundError(f"mask not found: {args.mask}")
    if len(items) != 1:
        raise ValueError(f"--mask is a single file but there are {len(items)} inputs; pass a folder of masks")
    return [_Job(items[0][0], items[0][1], args.mask)]


def _outputs(args: argparse.Namespace, stem: str, with_mask: bool, ensemble: int) -> dict[str, Path]:
    out: Path = args.out
    paths = {
        "image": out / f"{stem}.{args.image_ext}",
        "flow": out / f"{stem}_flow.{args.flow_format}",
        "flow_color": out / f"{stem}_flow.png",
    }
    if with_mask and args.save_mask:
        paths["mask"] = out / f"{stem}_mask.png"
    if ensemble > 1:
        paths["uncertainty"] = out / f"{stem}_uncertainty.npy"
    return paths


def _read_rgb(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return pil_to_rgb(im, name=str(path))  # rejects grey / RGBA with a clear message
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot decode image {path}: {exc}") from exc


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return dev


def _load_pipeline(args: argparse.Namespace, dtype: torch.dtype) -> StableMotionPipeline:
    from ..catalog import BUNDLED_MODELS, bundled_model_path
    from ..model import load_pipeline  # here: keeps `--help` fast

    if args.model is None:
        task = args.task or "sir"
        path = bundled_model_path(task)
        print(f"no --model given: using the bundled {BUNDLED_MODELS[task]} model ({path}); it is small and "
              "trained on synthetic data only, see the README for full models")
        return load_pipeline(path, dtype, progress=False)
    model = Path(args.model)
    if model.is_dir() and not (model / "model_index.json").is_file():
        if (model / "unet_ema").is_dir() or any(p.name.startswith("StableMotion_") for p in model.iterdir()):
            raise ValueError(
                f"{model} looks like a released checkpoint folder; convert it first with "
                f"`stablemotion import-checkpoint {model} --out PIPELINE_DIR`"
            )
        raise FileNotFoundError(f"{model} is not a pipeline folder (no model_index.json)")
    pipe = load_pipeline(args.model, dtype)
    if args.task is not None and pipe.task.name != args.task:
        raise ValueError(f"--task {args.task} but the model {args.model} is a {pipe.task.name!r} model")
    return pipe


def _rectify(args: argparse.Namespace) -> int:
    dtype = DTYPES[args.dtype]
    device = _device(args.device)
    res = args.processing_resolution
    if res is not None:
        if len(res) not in (1, 2):
            raise ValueError(f"--processing-resolution takes H W, one int or 0, got {res}")
        res = res[0] if len(res) == 1 else tuple(res)

    items = _collect_inputs(args.inputs)  # fail on bad paths before loading the model
    pipe = _load_pipeline(args, dtype)
    mask_names = [c for c in pipe.task.conditions if c in MASK_CONDITIONS]
    extra = [c for c in pipe.task.conditions if c not in MASK_CONDITIONS and c != "image"]
    if extra:
        raise ValueError(f"the command line supports image and mask conditions only; task needs {extra}")
    needs_mask = bool(mask_names)
    jobs = _plan(args, items, needs_mask)
    ensemble = args.ensemble if args.ensemble is not None else pipe.config.default_ensemble_size
    if ensemble < 1:
        raise ValueError(f"--ensemble must be >= 1, got {ensemble}")
    plans = {job.stem: _outputs(args, job.stem, needs_mask, ensemble) for job in jobs}
    if not args.force:
        existing = [p for paths in plans.values() for p in paths.values() if p.exists()]
        if existing:
            names = ", ".join(str(p) for p in existing[:3])
            more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
            raise FileExistsError(f"outputs already exist: {names}{more}; pass --force to overwrite")
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)

    bar = tqdm(jobs, desc="rectify", unit="img")
    for job in bar:
        image = _read_rgb(job.image)
        mask = None
        if needs_mask:
            given = None if job.mask is None else load_image(job.mask, mode="mask")
            mask, note = prepare_mask(image, given, source=f"mask {job.mask}", background=args.mask_background,
                                      tolerance=args.mask_tolerance)
            if job.mask is None:
                bar.write(f"{job.stem}: {note}")
        out = pipe(
            image,
            mask=mask,
            num_inference_steps=args.steps,
            ensemble_size=ensemble,
            ensemble_mode=args.ensemble_mode,
            processing_resolution=res,
            final_step=args.final_step,
            output_flow_colored=True,
            generator=torch.Generator().manual_seed(args.seed),
            output_type="np",
            show_progress_bar=False,
        )
        paths = plans[job.stem]
        save_image((out.image[0] * 255.0).round().astype(np.uint8), paths["image"], overwrite=args.force)
        write_flow(paths["flow"], out.flow[0])
        save_image(out.flow_colored[0], paths["flow_color"], overwrite=args.force)
        if "mask" in paths and mask is not None:
            save_image(mask, paths["mask"], overwrite=args.force)
        if "uncertainty" in paths and out.uncertainty is not None:
            with atomic_path(paths["uncertainty"], overwrite=args.force) as tmp, open(tmp, "wb") as f:
                np.save(f, out.uncertainty[0, ..., 0].astype(np.float32))
    print(f"rectified {len(jobs)} image{'s' if len(jobs) != 1 else ''} -> {args.out}")
    return 0

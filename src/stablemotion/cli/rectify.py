"""``stablemotion rectify``: rectify image files or folders with a StableMotion pipeline.

For each input NAME.ext it writes into --out:

  NAME.png               the rectified image (input resolution and bit depth, with the input's EXIF,
                         ICC profile and XMP; --image-ext picks the format, --jpeg-quality JPEG's)
  NAME_flow.png          the flow's Middlebury colour picture
  NAME_flow.npy / .flo   with --save-flow: the backward flow (H, W, 2) float32, pixels
                         (8 bytes a pixel: 96 MB for a 12-megapixel photo, so it is opt-in)
  NAME_mask.png          with --save-mask (SIR): the mask that was used (white = valid)
  NAME_uncertainty.png   with --ensemble > 1: the ensemble spread as colours (and .npy, pixels)

Batches are safe to run overnight: cheap checks (inputs readable and not too large, masks
of the right size, --out writable, output names free) run before the model is loaded;
a file that fails later is reported at the end (exit status 1) while the others are
processed; a rerun skips the images whose outputs are complete and were made with the same
settings (--force redoes them) and refuses a folder holding images made with other settings
(.stablemotion-rectify.json records each image's settings). One run at a time writes into a
folder (a second is refused while the first holds .stablemotion-rectify.lock). Every output
is written atomically, and never through a symbolic link: an output name that is a link
fails that image, a link in place of rectify's own files stops the run.

Memory: an image over --max-work-pixels (default 1048576 = 1024 x 1024) runs the model at
that many pixels (its aspect ratio kept); the flow is upsampled to the input's size and the
input warped at full size a strip of rows at a time. Every output is at the input's size.

SIR masks come from --mask (a file for one input, a folder matched by file stem, or
"alpha": the inputs' own alpha channel); without it they are derived from the stitched
image's empty border.

Do no harm: an image whose predicted correction is not supported (a flow below 0.5 px, a
rotation below 0.5 deg, a flow that disagrees with the task's motion family or ensemble
members that disagree: confidence below --correction-gate, default 0.5) is written unchanged
and reported with its reason, as is a SIR image without an empty border and, with --task
auto, an image that needs no correction or whose task cannot be told; --always-correct
applies every correction. Under `accelerate launch` or `torchrun` every process takes a shard
of the inputs and the main process prints one summary. --engine ray runs the images on a Ray
cluster instead (a pool of actors that each load the model once; see the README, "Batch at
scale"): the same files, plus a Parquet manifest of every image (--manifest).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.constants import DEFAULT_CORRECTION_GATE, FLOW_PROJECTIONS
from ..io.images import DEFAULT_MAX_PIXELS, list_images
from ..model.rectify_folder import STATE_NAME, check_out_folder, clean_litter
from ..tasks import available_tasks, describe_model_tasks
from ._options import (
    MAX_MASK_TOLERANCE,
    Dist,
    add_device_options,
    add_inference_options,
    float_arg,
    inference_kwargs,
    int_arg,
    is_out_of_memory,
    max_pixels_arg,
    out_of_memory_message,
    seed_arg,
)
from ._rectify_engine import add_engine_options

_STATE = STATE_NAME


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
    p.add_argument("--out", type=Path, required=True, help="output folder (not an input folder)")
    p.add_argument("--task", choices=[*available_tasks(), "auto"], default=None,
                   help="check the model is for this task; without --model it picks the bundled model (default sir); "
                        "auto: choose each image's task (an empty border of a stitched image = sir, else a calibrated classifier; "
                        "an image it is not sure about is copied unchanged)")
    p.add_argument("--task-threshold", type=float_arg(0.0, 1.0), default=None,
                   help="--task auto: the classifier's least calibrated confidence to act on (default: the "
                        "classifier's own, chosen so that at most 2%% of ordinary photos are warped)")
    p.add_argument("--mask", default=None,
                   help="SIR mask file (one input), folder (matched by stem), or 'alpha' (each input's alpha channel)")
    p.add_argument("--save-mask", action="store_true", help="write the mask used (derived or given) as NAME_mask.png")
    p.add_argument("--mask-background", choices=("auto", "black", "white"), default="auto",
                   help="colour of the stitched image's empty border for derived masks (default: auto)")
    p.add_argument("--mask-tolerance", type=int_arg(0, MAX_MASK_TOLERANCE), default=24,
                   help="max per-channel distance (0-255) from the border colour counted as empty (default 24)")
    add_inference_options(p)
    add_device_options(p)
    p.add_argument("--seed", type=seed_arg, default=0, help="noise seed (each image uses the same seed)")
    p.add_argument("--save-flow", action="store_true", help="also write the flow NAME_flow.npy (or .flo)")
    p.add_argument("--flow-format", choices=("npy", "flo"), default="npy", help="file format of --save-flow")
    p.add_argument("--image-ext", choices=("png", "jpg", "tif"), default="png",
                   help="format of the rectified image (16-bit inputs: png or tif, kept 16-bit)")
    p.add_argument("--jpeg-quality", type=int_arg(1, 100), default=95, help="quality of JPEG outputs (default 95)")
    p.add_argument("--grey", choices=("refuse", "convert"), default="refuse",
                   help="grey inputs: refuse (default) or convert to RGB by replicating the channel")
    p.add_argument("--alpha", choices=("refuse", "drop"), default="refuse",
                   help="inputs with transparent pixels: refuse (default) or drop the alpha channel "
                        "(--mask alpha uses it as the mask instead)")
    p.add_argument("--max-pixels", type=max_pixels_arg, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse images larger than this many pixels, checked from the file header "
                        f"(default {DEFAULT_MAX_PIXELS / 1e6:.0f} megapixels; 0 = no limit)")
    p.add_argument("--max-work-pixels", type=int, default=None, metavar="N",
                   help="run the model on images larger than this many pixels shrunk to it, and warp them at "
                        "full size in strips (bounded memory; default 1048576 = 1024 x 1024, as the web app; "
                        "0 = no cap: the whole image goes through the pipeline)")
    p.add_argument("--flow-projection", choices=FLOW_PROJECTIONS, default=None,
                   help="motion_model: replace the predicted flow by its robust fit of the task's motion family "
                        "(rolling shutter, rotation, lens; SIR has none); default: the model's config (none)")
    p.add_argument("--correction-gate", type=float_arg(0.0, 1.0), default=DEFAULT_CORRECTION_GATE,
                   help=f"leave an image unchanged (reported with the reason) when the confidence that its "
                        f"correction is supported is below this (default {DEFAULT_CORRECTION_GATE:g}; 0 = off)")
    p.add_argument("--always-correct", action="store_true",
                   help="apply every predicted correction, whatever its confidence (the correction gate off)")
    p.add_argument("--force", action="store_true", help="redo images whose outputs exist (default: skip them)")
    add_engine_options(p)
    p.set_defaults(func=_rectify)


@dataclass
class _Job:
    stem: str
    image: Path
    mask: Path | None
    outputs: dict[str, Path]


# --------------------------------------------------------------------------- planning (no model, no torch)
def _collect_inputs(inputs: list[Path], notes: list[str] | None = None) -> list[tuple[str, Path]]:
    """(stem, path) of every input (:func:`stablemotion.model.service.collect_inputs`); what the folders
    hold but is not rectified is said in one line per folder (also appended to ``notes``, for the summary)."""
    import os

    from ..model.rectify_folder import collect_inputs

    items, skipped = collect_inputs(inputs)
    for note in skipped:
        if os.environ.get("RANK", "0") in ("0", ""):  # one note under accelerate / torchrun
            print(note)
        if notes is not None:
            notes.append(note)
    return items


def _masks(args: argparse.Namespace, items: list[tuple[str, Path]], needs_mask: bool) -> list[Path | None]:
    if args.mask is None or args.mask == "alpha":
        if args.mask == "alpha" and not needs_mask:
            raise ValueError("--mask alpha was given but this model's task takes no mask")
        return [None] * len(items)
    if not needs_mask:
        raise ValueError("--mask was given but this model's task takes no mask")
    mask = Path(args.mask)
    if mask.is_dir():
        masks = list_images(mask)
        missing = [stem for stem, _ in items if stem not in masks]
        if missing:
            raise ValueError(
                f"no mask in {mask} for {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} "
                "(masks are matched by file stem); drop --mask to derive masks from the empty border"
            )
        return [masks[stem] for stem, _ in items]
    if not mask.is_file():
        raise FileNotFoundError(f"mask not found: {mask}")
    if len(items) != 1:
        raise ValueError(f"--mask is a single file but there are {len(items)} inputs; pass a folder of masks")
    return [mask]


def _file_options(args: argparse.Namespace, kwargs: dict[str, Any] | None = None) -> Any:
    """The per-file options of this run (:class:`stablemotion.model.rectify_files.FileOptions`)."""
    from ..core.large_image import MAX_WORK_PIXELS
    from ..model.rectify_files import FileOptions

    return FileOptions(
        grey=args.grey, alpha=args.alpha, mask=args.mask, mask_background=args.mask_background,
        mask_tolerance=args.mask_tolerance, max_pixels=None if args.max_pixels <= 0 else int(args.max_pixels),
        max_work_pixels=MAX_WORK_PIXELS if args.max_work_pixels is None else args.max_work_pixels, seed=args.seed,
        pipe_kwargs={k: v for k, v in (kwargs or {}).items() if v is not None}, image_ext=args.image_ext,
        jpeg_quality=args.jpeg_quality,
        save_flow=args.save_flow, flow_format=args.flow_format, save_mask=args.save_mask)


def _outputs(args: argparse.Namespace, stem: str, with_mask: bool, ensemble: int) -> dict[str, Path]:
    from ..model.rectify_files import output_paths

    return output_paths(args.out, stem, _file_options(args), with_mask, ensemble)


def _check_names(args: argparse.Namespace, jobs: list[_Job]) -> None:
    """No output may overwrite another output or an input (``a.jpg`` + ``a_flow.jpg``, --out = input folder)."""
    out = args.out.resolve()
    inputs = {j.image.resolve(): j for j in jobs} | {j.mask.resolve(): j for j in jobs if j.mask is not None}
    for folder in {p.parent for p in inputs}:
        if folder == out:
            raise ValueError(f"--out {args.out} is an input folder: outputs would mix with (and could overwrite) "
                             "the inputs; choose another folder")
    owner: dict[Path, str] = {}
    for job in jobs:
        for path in job.outputs.values():
            key = path.resolve()
            if key in owner:
                raise ValueError(f"output {path} would be written for both {owner[key]!r} and {job.stem!r}; "
                                 "rename one input")
            owner[key] = job.stem


def _settings_record(args: argparse.Namespace, model: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Everything that changes an image's outputs, as recorded in the manifest."""
    from ..model.rectify_files import settings_record

    return settings_record(model, _file_options(args), kwargs, args.dtype)


def _plan_resume(args: argparse.Namespace, jobs: list[_Job], record: dict[str, Any],
                 key: str) -> tuple[list[str], list[str]]:
    """Main process, holding the folder's lock: which jobs are done, and the manifest updated for the run
    (:func:`stablemotion.model.rectify_folder.plan_resume`) -> (stems done, notes to print)."""
    from ..model.rectify_folder import plan_resume

    return plan_resume(args.out, {j.stem: j.outputs for j in jobs}, record, key, args.force)


def _preflight(jobs: list[_Job], needs_mask: bool, max_pixels: int | None, grey: str = "refuse") -> dict[str, str]:
    """Header checks of every input and mask, and no output name taken by a symbolic link
    (:func:`stablemotion.model.service.check_input_files`) -> failures by stem."""
    from ..model.rectify_folder import check_input_files

    failures: dict[str, str] = {}
    for job in jobs:
        try:
            check_input_files(job.image, job.mask if needs_mask else None, outputs=job.outputs.values(),
                              max_pixels=max_pixels, grey=grey)
        except ValueError as exc:
            failures[job.stem] = str(exc)
    return failures


# --------------------------------------------------------------------------- the command
def _rectify(args: argparse.Namespace) -> int:
    kwargs = inference_kwargs(args)
    kwargs["flow_projection"] = getattr(args, "flow_projection", None)
    kwargs["correction_gate"] = 0.0 if getattr(args, "always_correct", False) else getattr(
        args, "correction_gate", DEFAULT_CORRECTION_GATE)
    max_pixels = None if args.max_pixels <= 0 else int(args.max_pixels)
    args.max_work_pixels = _max_work_pixels(args.max_work_pixels)
    dist = Dist(args.device)  # checks --device before anything else
    if args.engine == "ray" and dist.world > 1:
        raise ValueError("--engine ray starts its own workers: run it as one process, not under accelerate "
                         "launch / torchrun")
    args.input_notes = []  # what the input folders hold but are not rectified: repeated in the summary
    items = _collect_inputs(args.inputs, args.input_notes)
    check_out_folder(args.out)
    lock = _lock_out(args.out, dist)
    args.ray = None
    try:
        if dist.main:
            removed = clean_litter(args.out)
            if removed:
                print(f"removed {removed} temporary file(s) left in {args.out} by an interrupted run")
        if args.engine == "ray":
            from ._rectify_engine import start_ray

            args.ray = start_ray(args)  # resolves --dtype where the actors run
        else:
            from ._options import settle_dtype

            settle_dtype(args, dist.device, show=dist.main)
        args.unchanged = {}  # stem -> why it was written unchanged (this process's images)
        if args.task == "auto":
            return _rectify_auto(args, dist, items, kwargs, max_pixels)
        processed, skipped, failures = _process(args, dist, items, kwargs, max_pixels)
        return _summary(args, dist, processed, skipped, failures)
    finally:
        if args.ray is not None:
            args.ray.close()
        if lock is not None:
            lock.release()


def _max_work_pixels(value: int | None) -> int:
    """--max-work-pixels: ``None`` -> the app's default cap; 0 = no cap; else at least 64 x 64."""
    if value is None:
        from ..core.large_image import MAX_WORK_PIXELS

        return MAX_WORK_PIXELS
    if value != 0:
        from ..core.large_image import MIN_WORK_PIXELS

        if value < MIN_WORK_PIXELS:
            raise ValueError(f"--max-work-pixels must be 0 (no cap) or at least {MIN_WORK_PIXELS} (64 x 64), "
                             f"got {value}")
    return value


def _share(dist: Dist, value: Any) -> Any:
    """The main process's ``value`` in every process (a broadcast under accelerate / torchrun)."""
    if dist.world == 1:
        return value
    import torch.distributed

    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _stop(dist: Dist, message: str | None) -> None:
    """Stop every process on the main process's error ``message``: it says it once (exit 2), the others exit quietly."""
    if message is None:
        return
    if dist.main:
        raise ValueError(message)
    raise SystemExit(2)


def _lock_out(out: Path, dist: Dist) -> Any:
    """Lock --out for the whole run (the main process holds it for all of them) -> the lock, or ``None``
    in the other processes. Another run writing there stops this one with a one-line error."""
    from ..io.outdir import FolderLock

    lock, busy = None, None
    if dist.main:
        lock = FolderLock(out)
        try:
            lock.acquire()
        except ValueError as exc:  # FolderBusy, or a link / non-file where the lock file goes
            lock, busy = None, str(exc)
    _stop(dist, _share(dist, busy))
    return lock


def _process(args: argparse.Namespace, dist: Dist, items: list[tuple[str, Path]], kwargs: dict[str, Any],
             max_pixels: int | None, record: dict[str, Any] | None = None) -> tuple[int, int, dict[str, str]]:
    """Rectify ``items`` with the model of ``args.model`` / ``args.task`` -> (processed, skipped, failures).

    ``record``: the settings recorded for the images (default: from ``args``)."""
    from ..io.outdir import settings_key
    from ._options import load_model, prepare_for_inference, resolve_dtype

    # The task (hence whether a mask is needed) is in the model config: read it without loading weights.
    task = _task_of(args)
    needs_mask = task.needs_mask
    ensemble = kwargs["ensemble_size"] or task.ensemble
    masks = _masks(args, items, needs_mask)
    jobs = [_Job(stem, path, mask, _outputs(args, stem, needs_mask, ensemble))
            for (stem, path), mask in zip(items, masks, strict=True)]
    _check_names(args, jobs)
    if record is None:
        record = _settings_record(args, str(args.model) if args.model else f"bundled:{task.name}", kwargs)
    key = settings_key(record)
    plan: tuple[list[str], list[str]] | str | None = None
    if dist.main:  # one process decides (holding the lock) and tells the others
        try:
            plan = _plan_resume(args, jobs, record, key)
        except ValueError as exc:
            plan = str(exc)
    plan = _share(dist, plan)
    _stop(dist, plan if isinstance(plan, str) else None)
    assert isinstance(plan, tuple)
    done_stems, notes = set(plan[0]), plan[1]
    if dist.main:
        for note in notes:
            print(note)
    todo = [j for j in jobs if j.stem not in done_stems]
    failures = _preflight(todo, needs_mask, max_pixels, args.grey)

    mine = [j for j in dist.shard(todo) if j.stem not in failures]
    processed = 0
    if args.ray is not None:
        from ._rectify_engine import run_ray

        processed, late = run_ray(args, todo, [j for j in jobs if j.stem in done_stems], failures, kwargs, record,
                                  needs_mask, ensemble)
        failures.update(late)
    elif mine:
        pipe = load_model(args.model, args.task, resolve_dtype(args.dtype), quiet=not dist.main)
        prepare_for_inference(pipe, dist.device, args.channels_last)
        processed, late = _run(args, pipe, mine, kwargs, dist, max_pixels, key)
        failures.update(late)
    dist.barrier()  # every process has finished (and journaled) its images before the manifest is updated
    return processed, len(done_stems), failures


def _rectify_auto(args: argparse.Namespace, dist: Dist, items: list[tuple[str, Path]], kwargs: dict[str, Any],
                  max_pixels: int | None) -> int:
    """``--task auto``: choose each image's task (:mod:`stablemotion.model.task_choice`), then rectify each
    group of images with its task's model (loaded once per task)."""
    from ..io.images import read_rgb
    from ..model.catalog import BUNDLED_MODELS
    from ..model.task_choice import choose_task

    order = ("sir", "rsc", "rotation", "lens")
    tasks = "|".join(sorted(available_tasks(), key=lambda t: (order.index(t) if t in order else len(order), t)))
    model_tasks = _task_of(argparse.Namespace(**{**vars(args), "task": None})).serves if args.model else None
    groups: dict[str, list[tuple[str, Path]]] = {}
    failures: dict[str, str] = {}
    for stem, path in items:
        try:
            image, _, _ = read_rgb(path, grey=args.grey, alpha="drop" if args.mask == "alpha" else args.alpha,
                                   max_pixels=max_pixels)
        except (ValueError, OSError) as exc:
            failures[stem] = str(exc).splitlines()[0]
            continue
        choice = choose_task(image, threshold=args.task_threshold)
        if dist.main:
            print(f"{stem}: task {choice.task or 'undecided'} ({choice.confidence:.0%}): {choice.reason}")
        if choice.task is None or choice.task == "none":
            why = (f"cannot tell the task (best guess {choice.best} at {choice.confidence:.0%})" if choice.task is None
                   else f"no correction needed ({choice.reason})" if choice.reason else "no correction needed")
            try:
                _copy_unchanged(args, dist, stem, image, kwargs, f"{why}; pass --task {tasks} to rectify it anyway")
            except (ValueError, OSError) as exc:
                failures[stem] = str(exc).splitlines()[0]
        elif model_tasks is not None and choice.task not in model_tasks:
            failures[stem] = (f"the image looks like a {choice.task} task ({choice.confidence:.0%}) but --model "
                              f"{args.model} is a {'/'.join(model_tasks)} model; pass --task {model_tasks[0]} to use "
                              "it anyway")
        elif model_tasks is None and choice.task not in BUNDLED_MODELS:
            failures[stem] = (f"the image looks like a {choice.task} task ({choice.confidence:.0%}) but no "
                              f"{choice.task} model is bundled; pass --model with a {choice.task} model")
        else:
            groups.setdefault(choice.task, []).append((stem, path))
    processed, skipped = (len(args.unchanged) if dist.main else 0), 0
    # one record for the whole run (each image's task follows from the image): the groups never conflict
    record = _settings_record(args, f"auto:{args.model or 'bundled'}", kwargs)
    for task, group in groups.items():
        sub = argparse.Namespace(**{**vars(args), "task": task})
        if not _task_of(sub).needs_mask:  # --mask is for the SIR images of the batch
            sub.mask = None
        n, s, f = _process(sub, dist, group, kwargs, max_pixels, record=record)
        processed, skipped = processed + n, skipped + s
        failures.update(f)
    return _summary(args, dist, processed, skipped, failures)


def _copy_unchanged(args: argparse.Namespace, dist: Dist, stem: str, image: Any, kwargs: dict[str, Any],
                    reason: str) -> None:
    """``--task auto``: write an image the choice leaves alone as its own result (zero flow), with ``reason``."""
    from ..model.service import RectifyRequest, unchanged_result, write_results

    args.unchanged[stem] = reason
    if dist.main:  # every process chose the same: one writes
        outputs = _outputs(args, stem, False, kwargs.get("ensemble_size") or 1)
        write_results(unchanged_result(RectifyRequest(image), reason), outputs)


@dataclass
class _TaskInfo:
    name: str
    needs_mask: bool
    ensemble: int
    serves: tuple[str, ...] = ()  # every task of the model (several for a multi-task model)


def _task_of(args: argparse.Namespace) -> _TaskInfo:
    """The model's task and default ensemble size from its config file (cheap: no weights)."""
    from ..model.catalog import bundled_model_path
    from ..model.rectify_folder import read_model_tasks
    from ..model.service import takes_mask
    from ..tasks import MASK_CONDITIONS, get_task
    from ._options import check_model_folder

    if args.model is None:
        folder = bundled_model_path(args.task or "sir")
    else:
        check_model_folder(args.model)
        folder = Path(args.model)
        if not folder.is_dir():  # a hub id: resolved when it loads
            spec = get_task(args.task or "sir")
            return _TaskInfo(spec.name, takes_mask(spec), 1, (spec.name,))
    model = read_model_tasks(folder)
    if args.task is not None and args.task not in model.served:
        raise ValueError(f"--task {args.task} but the model {args.model or folder} is "
                         f"{describe_model_tasks(model.served)}")
    spec = model.served[args.task] if args.task is not None else model.default
    extra = [c for c in spec.conditions if c not in MASK_CONDITIONS and c != "image"]
    if extra:
        raise ValueError(f"the command line supports image and mask conditions only; task needs {extra}")
    return _TaskInfo(spec.name, takes_mask(spec), model.ensemble, tuple(model.served))


def _run(args: argparse.Namespace, pipe: Any, jobs: list[_Job], kwargs: dict[str, Any],
         dist: Dist, max_pixels: int | None, key: str) -> tuple[int, dict[str, str]]:
    """Rectify ``jobs`` in this process -> (images written, failures by stem).

    The network runs at most at --max-work-pixels (:func:`stablemotion.core.large_image.rectify_capped`,
    the web app's path); every file written comes from the full-size result. Each finished
    image is journaled with the settings ``key`` once all its files are in place."""
    from tqdm import tqdm

    from ..io.outdir import Journal

    failures: dict[str, str] = {}
    processed = 0
    spec = pipe.resolve_task(args.task)  # a multi-task model runs the chosen task
    # unset options are left to the pipeline's defaults (so that a capped run may pick its cheaper ensemble mode)
    options = _file_options(args, kwargs)
    bar = tqdm(jobs, desc="rectify" if dist.world == 1 else f"rectify [{dist.rank}/{dist.world}]", unit="img",
               disable=not dist.main)
    journal = Journal(args.out, dist.rank)
    try:
        for job in bar:
            try:
                _run_one(args, pipe, spec, job, options, bar)
                journal.add(job.stem, key, (p.name for p in job.outputs.values()))
                processed += 1
            except (ValueError, OSError) as exc:
                failures[job.stem] = str(exc).splitlines()[0]
                bar.write(f"{job.stem}: failed: {failures[job.stem]}")
            except (MemoryError, RuntimeError) as exc:  # one image too large for memory: the others still run
                if not is_out_of_memory(exc):
                    raise
                failures[job.stem] = out_of_memory_message(exc, args)
                bar.write(f"{job.stem}: failed: {failures[job.stem]}")
    finally:
        journal.close()
    return processed, failures


def _run_one(args: argparse.Namespace, pipe: Any, spec: Any, job: _Job, options: Any, bar: Any) -> None:
    """Rectify one image and write all its outputs (each atomically):
    :func:`stablemotion.model.rectify_files.read_input` then :func:`~stablemotion.model.rectify_files.rectify_decoded`,
    the code every engine runs; raises ``ValueError``/``OSError``."""
    from ..model.rectify_files import read_input, rectify_decoded

    decoded = read_input(job.image, options, job.mask)  # job.mask: only for tasks that take one (_masks)
    res = rectify_decoded(pipe, spec, decoded, job.outputs, options, job.stem, bar.write)
    if res.unchanged:
        args.unchanged[job.stem] = res.reason


def _summary(args: argparse.Namespace, dist: Dist, processed: int, skipped: int, failures: dict[str, str]) -> int:
    """Record the finished images in the manifest and print one summary (main process) -> exit status."""
    from ..io.images import write_atomic
    from ..io.outdir import Manifest, check_not_link

    state = args.out / _STATE
    if dist.world > 1:  # every process leaves its counts; the main one reports once
        check_not_link(state, "the state folder")
        state.mkdir(exist_ok=True)
        write_atomic(state / f"rank{dist.rank}.json", json.dumps({"processed": processed, "failures": failures,
                                                                  "unchanged": getattr(args, "unchanged", {})}))
        dist.barrier()
        if not dist.main:
            return 1 if failures else 0
        processed, failures, args.unchanged = 0, {}, {}
        for rank in range(dist.world):
            path = state / f"rank{rank}.json"
            check_not_link(path, "the state file")
            rec = json.loads(path.read_text())
            processed += rec["processed"]
            failures.update(rec["failures"])
            args.unchanged.update(rec.get("unchanged", {}))
            path.unlink()
    manifest = Manifest.load(args.out)
    manifest.merge_journals()
    manifest.save()
    manifest.clear_journals()
    if state.is_dir() and not state.is_symlink() and not any(state.iterdir()):
        state.rmdir()
    unchanged = getattr(args, "unchanged", {})
    parts = [f"rectified {processed} image{'s' if processed != 1 else ''} -> {args.out}"]
    if unchanged:
        parts.append(f"{len(unchanged)} of them left unchanged")
    if skipped:
        parts.append(f"skipped {skipped} already done (--force redoes them)")
    if failures:
        parts.append(f"{len(failures)} failed")
    print("; ".join(parts))
    for stem, why in sorted(unchanged.items()):
        print(f"  unchanged {stem}: {why}")
    for stem, why in sorted(failures.items()):
        print(f"  failed {stem}: {why}")
    for note in getattr(args, "input_notes", []):
        print(f"  not an input: {note}")
    return 1 if failures else 0

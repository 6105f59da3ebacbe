"""Samples and datasets of any declared task: :func:`make_sample` draws a photo and calls the
task's generator; :func:`write_dataset` writes samples with the task's layout, in parallel
processes. Nothing here names a task: everything comes from the generator registry
(:mod:`.registry`)."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ...core.flow import write_flow
from ...io.images import atomic_path, save_image
from .photos import _GENERATED, bundled_photo_paths, draw_photo, resolve_photos
from .registry import SynthSpec, get_generator

__all__ = [
    "WarpSample",
    "sample_rng",
    "make_sample",
    "write_dataset",
    "write_folder_sample",
    "FOLDER_SUBDIRS",
    "pool_context",
    "save_image_file",
    "PREFILTER_SIGMA",
    "identity_warp_sample",
    "is_identity_sample",
]

#: Default Gaussian low-pass of the photo crops (pixels): the bilinear re-warp of a sample then
#: reproduces its target to > 35 dB.
PREFILTER_SIGMA = 0.7


@dataclass
class WarpSample:
    """One synthetic sample of a single-image warping task (numpy, as written to disk).

    Attributes:
        input: uint8 (H, W, 3), the distorted image.
        gt: uint8 (H, W, 3), the rectified image.
        flow: float32 (H, W, 2), pixels, backward: ``gt(p) = input(p + flow(p))``.
        params: the random parameters of the sample (angle, strength, centre, ...).
    """

    input: np.ndarray
    gt: np.ndarray
    flow: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)


def identity_warp_sample(sample: WarpSample) -> WarpSample:
    """The identity version of a :class:`WarpSample`: its target as input, zero flow.

    Example:
        >>> s = make_sample("lens", seed=0, index=0, size=(24, 32), photos=["procedural"])
        >>> i = identity_warp_sample(s)
        >>> bool((i.input == s.gt).all()), float(abs(i.flow).max()), i.params["identity"]
        (True, 0.0, True)
    """
    return WarpSample(input=sample.gt.copy(), gt=sample.gt, flow=np.zeros_like(sample.flow),
                      params={**sample.params, "identity": True})


def _identity_draw(seed: int, index: int, stream: int) -> float:
    """The uniform draw that makes sample ``index`` an identity sample: its own random stream,
    so datasets made without identity samples are unchanged by the option."""
    return float(np.random.default_rng([int(seed), int(index), int(stream), 1]).random())


def is_identity_sample(task: str, seed: int, index: int, identity_fraction: float) -> bool:
    """Whether sample ``index`` of a dataset with ``identity_fraction`` is an identity sample.

    Example:
        >>> sum(is_identity_sample("rotation", 0, i, 0.25) for i in range(400))  # about a quarter
        112
    """
    if identity_fraction <= 0.0:
        return False
    return _identity_draw(seed, index, get_generator(task).stream) < identity_fraction


def _check_identity(synth: SynthSpec, identity_fraction: float) -> None:
    """Raise ``ValueError`` for a share outside [0, 1] or a generator without identity samples."""
    if not 0.0 <= float(identity_fraction) <= 1.0:
        raise ValueError(f"identity_fraction must be in [0, 1], got {identity_fraction}")
    if identity_fraction > 0 and synth.identity is None:
        raise ValueError(f"generator {synth.name!r} declares no identity sample; use identity_fraction=0")


def sample_rng(seed: int, index: int, task: str) -> np.random.Generator:
    """The random generator of sample ``index`` of generator ``task``: independent of order,
    workers and resumption (``default_rng([seed, index, stream])``)."""
    return np.random.default_rng([int(seed), int(index), get_generator(task).stream])


def make_sample(
    task: str,
    seed: int,
    index: int,
    size: tuple[int, int],
    photos: Sequence[Any] | None = None,
    prefilter_sigma: float = PREFILTER_SIGMA,
    identity_fraction: float = 0.0,
    **options: Any,
) -> Any:
    """Synthetic sample ``index`` of a dataset, in memory; what the dataset writers write.

    Args:
        task: a generator name (``"rectangling"``, ``"rolling_shutter"``, ``"rotation"``,
            ``"lens"``), one of its aliases or its task's name (``"sir"``, ``"rsc"``).
        seed, index: the sample depends on these only (:func:`sample_rng`).
        size: (H, W) of the sample in pixels.
        photos: photo files (or :data:`PROCEDURAL` / :data:`URBAN` tokens) to draw from (default:
            :func:`bundled_photo_paths`).
        prefilter_sigma: Gaussian low-pass of the photo crop, pixels.
        identity_fraction: share of samples (drawn per index, :func:`is_identity_sample`) that
            are identity samples: the same scene with nothing to correct (the generator's
            ``identity``: target as input, zero flow; SIR: a full rectangle, no border).
        options: the generator's options (see its task module, e.g. ``style`` for
            rectangling, ``motion_model`` for rolling shutter, ``max_angle`` for rotation).

    Returns:
        The generator's sample (numpy arrays as written to disk): e.g. a :class:`WarpSample`
        with uint8 (H, W, 3) ``input`` and ``gt`` and a float32 (H, W, 2) backward ``flow`` in
        pixels, ``gt(p) = input(p + flow(p))``.

    Example:
        >>> s = make_sample("rotation", seed=0, index=0, size=(24, 32), photos=["procedural"])
        >>> s.input.shape, s.gt.dtype.name, s.flow.shape
        ((24, 32, 3), 'uint8', (24, 32, 2))
    """
    synth = get_generator(task)
    synth.check_options(options)
    _check_identity(synth, identity_fraction)
    rng = sample_rng(seed, index, synth.name)
    paths = [str(p) for p in (photos if photos is not None else bundled_photo_paths())]
    photo = draw_photo(rng, paths, size)
    sample = synth.generate(photo, rng, (int(size[0]), int(size[1])), prefilter_sigma, **options)
    if synth.identity is not None and is_identity_sample(synth.name, seed, index, float(identity_fraction)):
        sample = synth.identity(sample)
    return sample


# --------------------------------------------------------------------------- writing
def save_image_file(image: np.ndarray, path: Path, quality: int) -> None:
    """Write a uint8 image: JPEG with ``quality`` (OpenCV, as the datasets were made), else PNG."""
    if path.suffix.lower() in (".jpg", ".jpeg"):
        with atomic_path(path) as tmp:
            bgr = image[..., ::-1] if image.ndim == 3 else image
            if not cv2.imwrite(str(tmp), np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]):
                raise OSError(f"OpenCV could not write {path}")
    else:
        save_image(image, path)


#: Folders of the generic task-folder layout (:class:`stablemotion.data.TaskFolderDataset`).
FOLDER_SUBDIRS = ("input", "gt", "flow")


def write_folder_sample(sample: WarpSample, root: Path, name: str, split: str, ext: str, quality: int) -> None:
    """The task-folder layout: ``SPLIT/{input,gt}/NAME.EXT`` and ``SPLIT/flow/NAME.npy``."""
    save_image_file(sample.input, root / "input" / f"{name}.{ext}", quality)
    save_image_file(sample.gt, root / "gt" / f"{name}.{ext}", quality)
    write_flow(root / "flow" / f"{name}.npy", sample.flow)


@dataclass(frozen=True)
class _Job:
    task: str
    index: int
    seed: int
    size: tuple[int, int]
    photos: tuple[str, ...]
    out: str
    split: str
    ext: str
    quality: int
    prefilter_sigma: float
    options: tuple[tuple[str, Any], ...]
    layout_options: tuple[tuple[str, Any], ...]
    identity_fraction: float = 0.0


def _run_job(job: _Job) -> str:
    cv2.setNumThreads(1)
    name = f"{job.index:05d}"
    synth = get_generator(job.task)
    sample = make_sample(job.task, job.seed, job.index, job.size, job.photos, job.prefilter_sigma,
                         identity_fraction=job.identity_fraction, **dict(job.options))
    synth.layout.write(sample, Path(job.out) / job.split, name, job.split, job.ext, job.quality,
                       **dict(job.layout_options))
    return name


def _run_jobs(
    jobs: Sequence[_Job],
    workers: int,
    progress: Callable[[Iterable[str], int], Iterable[str]] | None,
) -> list[str]:
    if workers <= 1 or len(jobs) <= 1:
        results: Iterable[str] = map(_run_job, jobs)
        if progress is not None:
            results = progress(results, len(jobs))
        return list(results)
    with pool_context().Pool(min(workers, len(jobs)), initializer=_worker_init) as pool:
        results = pool.imap_unordered(_run_job, jobs, chunksize=1)
        if progress is not None:
            results = progress(results, len(jobs))
        return sorted(results)


def pool_context() -> mp.context.BaseContext:
    """Process start method for worker pools: ``fork`` where available (no ``__main__``
    guard needed, as torch's DataLoader), else ``spawn``. Workers use one thread each."""
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def _worker_init() -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def _check_out(out: Path, split: str, subdirs: Sequence[str], overwrite: bool) -> None:
    for sub in subdirs:
        d = out / split / sub
        if d.is_dir() and any(d.iterdir()) and not overwrite:
            raise FileExistsError(f"{d} already holds files; pass overwrite=True (--force) to write into it")


def _parse_ext(ext: str) -> str:
    ext = ext.lower().lstrip(".")
    if ext not in ("jpg", "png"):
        raise ValueError(f"image format must be 'jpg' (as DIR-D / RS-Real) or 'png' (lossless), got {ext!r}")
    return ext


def split_options(synth: SynthSpec, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Declared defaults filled in, then split into (generator options, layout options)."""
    gen = {o.name: o.default for o in synth.options}
    lay = {o.name: o.default for o in synth.layout.options}
    for key, value in options.items():
        if key in gen:
            gen[key] = value
        elif key in lay:
            lay[key] = value
        else:
            known = sorted([*gen, *lay])
            raise TypeError(f"{synth.name}: unknown option {key!r}; options are {', '.join(known)}")
    return gen, lay


def write_dataset(
    task: str,
    out: Any,
    num: int,
    size: tuple[int, int] | None = None,
    split: str | None = None,
    seed: int = 0,
    photos: Any = None,
    ext: str = "jpg",
    quality: int = 95,
    prefilter_sigma: float = PREFILTER_SIGMA,
    start: int = 0,
    workers: int = 1,
    overwrite: bool = False,
    progress: Callable[[Iterable[str], int], Iterable[str]] | None = None,
    identity_fraction: float = 0.0,
    **options: Any,
) -> list[str]:
    """Write ``num`` synthetic samples of ``task`` in the task's layout.

    Sample ``i`` depends only on ``(seed, i)`` (:func:`sample_rng`), so a dataset can be
    extended (``start``) or written by several processes with identical results.

    Args:
        task: a generator name or alias (``"rectangling"``, ``"rolling_shutter"``,
            ``"rotation"``, ``"lens"``, ...) or a task name.
        out: dataset root (created); files go to ``OUT/SPLIT/...``.
        num: number of samples; names are ``start .. start+num-1``, zero-padded to 5 digits.
        size: (H, W) in pixels (default: the generator's).
        split: split folder name (default: the generator's).
        photos: a folder of photos, a ``+``-joined list of sources (:func:`resolve_photos`),
            a list of photo files, or None for the bundled photos.
        ext: "jpg" (lossy, ``quality``) or "png" (lossless).
        prefilter_sigma: Gaussian low-pass of the photo crops, pixels.
        workers: processes; 1 runs in this process.
        overwrite: allow writing into non-empty folders.
        progress: called as ``progress(iterator, total)`` on the finished sample names;
            e.g. ``lambda it, n: tqdm(it, total=n)``.
        identity_fraction: share of identity samples (nothing to correct; :func:`make_sample`).
        options: the generator's and the layout's options (declared in the task module).

    Returns:
        The sample names written, sorted.
    """
    synth = get_generator(task)
    size = synth.size if size is None else size
    split = synth.split if split is None else split
    out_p = Path(out)
    ext = _parse_ext(ext)
    gen, lay = split_options(synth, dict(options))
    _check_out(out_p, split, synth.layout.subdirs, overwrite)
    if num < 1:
        raise ValueError(f"num must be at least 1, got {num}")
    _check_identity(synth, identity_fraction)
    synth.check_options({**gen, **lay}, layout=True)
    if len(size) != 2 or min(size) < 8:
        raise ValueError(f"size must be (H, W) with both at least 8 pixels, got {size}")
    if not split or "/" in split or "\\" in split:
        raise ValueError(f"split must be a folder name such as 'training' or 'test', got {split!r}")
    if photos is None or isinstance(photos, (str, Path)):
        photo_paths = resolve_photos(photos)
    else:
        photo_paths = [str(p) for p in photos]
        missing = [p for p in photo_paths if p not in _GENERATED and not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"photo files not found: {', '.join(missing[:5])}")
    base = {
        "task": synth.name, "seed": int(seed), "size": (int(size[0]), int(size[1])),
        "photos": tuple(str(p) for p in photo_paths), "out": str(out_p), "split": split, "ext": ext,
        "quality": int(quality), "prefilter_sigma": float(prefilter_sigma),
        "options": tuple(sorted(gen.items())), "layout_options": tuple(sorted(lay.items())),
        "identity_fraction": float(identity_fraction),
    }
    jobs = [_Job(index=i, **base) for i in range(start, start + num)]  # type: ignore[arg-type]
    return _run_jobs(jobs, workers, progress)

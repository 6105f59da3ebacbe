"""Synthetic task data: ordinary photos -> training/evaluation samples with exact flow.

The generators live with their tasks in :mod:`stablemotion.tasks` (one module per task:
:mod:`~stablemotion.tasks.sir`, :mod:`~stablemotion.tasks.rsc`,
:mod:`~stablemotion.tasks.rotation`, :mod:`~stablemotion.tasks.lens`); this module is the
stable front door to them: :func:`make_sample` and :func:`write_dataset` work for every
declared task by name (``"rectangling"``, ``"rolling_shutter"``, ``"rotation"``, ``"lens"``
or the task names ``"sir"``, ``"rsc"``), and the per-task names below are kept.

All flows follow the project convention (``stablemotion.core.flow``): backward, pixels,
``(H, W, 2)`` float32 in numpy / on disk, ``target(p) = input(p + flow(p))``. Photos are
lightly low-pass filtered (``prefilter_sigma``) so that the bilinear re-warp reproduces the
target to > 35 dB. Photos come from a folder or, by default, from the natural photos bundled
inside scikit-image (:func:`bundled_photo_paths`): nothing is downloaded.

Layouts: DIR-D for rectangling (``SPLIT/{input,mask,gt}/NNNNN.jpg`` + ``SPLIT/flow/NNNNN.npy``),
RS-Real for rolling shutter (``SPLIT/npz/NNNNN.npz`` with ``condition``, ``out_flow``, ``gs``;
the test split also gets ``jpg/`` and ``jpg_gt/``), and the task-folder layout
(``SPLIT/{input,gt}/NNNNN.jpg`` + ``SPLIT/flow/NNNNN.npy``, read by
:class:`stablemotion.data.TaskFolderDataset`) for rotation and lens correction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from ..io.images import PathLike
from ..tasks._geometry import invert_flow
from ..tasks._photos import (
    _GENERATED,
    BUNDLED_PHOTOS,
    HELD_OUT_PHOTOS,
    PROCEDURAL,
    TRAINING_PHOTOS,
    URBAN,
    _load_photo,
    bundled_photo_paths,
    list_photos,
    procedural_scene,
    random_photo_crop,
    resolve_photos,
    urban_scene,
)
from ..tasks._writer import WarpSample, make_sample, pool_context, sample_rng, write_dataset
from ..tasks.lens import LensParams, make_lens_sample, write_lens_dataset
from ..tasks.rotation import make_rotation_sample, rotation_correction_map, write_rotation_dataset
from ..tasks.rsc import (
    RollingShutterSample,
    camera_rolling_shutter_map,
    make_rolling_shutter_sample,
    rolling_shutter_margin,
)
from ..tasks.sir import (
    RECTANGLING_STYLES,
    RectanglingSample,
    make_rectangling_sample,
    panorama_region,
    random_rectangling_mesh,
    stitched_outline_mesh,
    stitched_region,
)

__all__ = [
    "BUNDLED_PHOTOS",
    "HELD_OUT_PHOTOS",
    "TRAINING_PHOTOS",
    "PROCEDURAL",
    "URBAN",
    "procedural_scene",
    "urban_scene",
    "camera_rolling_shutter_map",
    "bundled_photo_paths",
    "list_photos",
    "resolve_photos",
    "random_photo_crop",
    "invert_flow",
    "random_rectangling_mesh",
    "RectanglingSample",
    "RollingShutterSample",
    "WarpSample",
    "LensParams",
    "make_rectangling_sample",
    "stitched_region",
    "stitched_outline_mesh",
    "panorama_region",
    "RECTANGLING_STYLES",
    "make_rolling_shutter_sample",
    "rolling_shutter_margin",
    "make_rotation_sample",
    "rotation_correction_map",
    "make_lens_sample",
    "sample_rng",
    "make_sample",
    "pool_context",
    "write_dataset",
    "write_rectangling_dataset",
    "write_rolling_shutter_dataset",
    "write_rotation_dataset",
    "write_lens_dataset",
    "generator_names",
]

_ = (_GENERATED, _load_photo)  # kept importable from here for older code


def generator_names() -> list[str]:
    """Names :func:`make_sample` and :func:`write_dataset` accept (one per declared task)."""
    from ..tasks import synth_tasks

    return synth_tasks()


def write_rectangling_dataset(
    out: PathLike,
    num: int,
    size: tuple[int, int] = (384, 512),
    split: str = "training",
    seed: int = 0,
    photos: PathLike | Sequence[PathLike] | None = None,
    ext: str = "jpg",
    quality: int = 95,
    prefilter_sigma: float = 0.7,
    rows: int = 6,
    cols: int = 8,
    max_inset: float = 0.12,
    start: int = 0,
    workers: int = 1,
    overwrite: bool = False,
    progress: Callable[[Iterable[str], int], Iterable[str]] | None = None,
    style: str = "inset",
    white_fraction: float = 0.0,
) -> list[str]:
    """Write ``num`` synthetic rectangling samples in the DIR-D layout.

    Files: ``OUT/SPLIT/{input,mask,gt}/NNNNN.EXT`` (masks are 3-channel, white = content,
    as DIR-D) and ``OUT/SPLIT/flow/NNNNN.npy`` ((H, W, 2) float32, pixels, backward:
    ``gt(p) = input(p + flow(p))``). Sample ``i`` depends only on ``(seed, i)``.

    Args:
        out: dataset root (created).
        num: number of samples; names are ``start .. start+num-1``, zero-padded to 5 digits.
        size: (H, W) in pixels (DIR-D: 384 x 512).
        photos: a folder of photos, a list of photo files, or None for the bundled photos.
        ext: "jpg" (DIR-D's format; lossy, ``quality``) or "png" (lossless).
        prefilter_sigma: Gaussian low-pass of the photo crops, pixels.
        rows, cols, max_inset: mesh parameters (:func:`random_rectangling_mesh`).
        style, white_fraction: border style and share of white empty areas
            (:func:`make_rectangling_sample`; ``"stitched"``: outlines of real stitched panoramas).
        workers: processes; 1 runs in this process.
        overwrite: allow writing into non-empty folders.
        progress: called as ``progress(iterator, total)`` on the finished sample names;
            e.g. ``lambda it, n: tqdm(it, total=n)``.

    Returns:
        The sample names written, sorted.
    """
    return write_dataset(
        "rectangling", out, num, size=size, split=split, seed=seed, photos=photos, ext=ext, quality=quality,
        prefilter_sigma=prefilter_sigma, start=start, workers=workers, overwrite=overwrite, progress=progress,
        rows=rows, cols=cols, max_inset=max_inset, style=style, white_fraction=white_fraction,
    )


def write_rolling_shutter_dataset(
    out: PathLike,
    num: int,
    size: tuple[int, int] = (256, 256),
    split: str = "train",
    seed: int = 0,
    photos: PathLike | Sequence[PathLike] | None = None,
    npz_size: tuple[int, int] | None = None,
    full_res_jpg: bool | None = None,
    ext: str = "jpg",
    quality: int = 95,
    prefilter_sigma: float = 0.7,
    max_translation: float = 0.08,
    max_rotation: float = 3.0,
    motion_model: str = "planar",
    max_displacement: float = 0.1,
    start: int = 0,
    workers: int = 1,
    overwrite: bool = False,
    progress: Callable[[Iterable[str], int], Iterable[str]] | None = None,
) -> list[str]:
    """Write ``num`` synthetic rolling-shutter samples in the RS-Real layout.

    Files: ``OUT/SPLIT/npz/NNNNN.npz`` with ``condition`` (RS image, uint8 (h, w, 3)),
    ``gs`` (GS image, uint8 (h, w, 3)) and ``out_flow`` (float32 (h, w, 2), pixels of the
    npz resolution, our backward convention: ``gs(p) = condition(p + out_flow(p))``, zeros
    padding). With ``full_res_jpg`` (default: for a split named ``test``) also
    ``OUT/SPLIT/jpg/NNNNN.EXT`` (full-resolution RS image) and ``OUT/SPLIT/jpg_gt/NNNNN.EXT``.

    Args:
        size: full-resolution (H, W) of the generated images.
        npz_size: (h, w) of the arrays in the npz (images area-resized, flow rescaled);
            None keeps ``size``.
        max_translation, max_rotation: ``planar`` motion amplitudes (:func:`make_rolling_shutter_sample`).
        motion_model: ``"planar"`` or ``"camera"`` (a 3-D pose per row; :func:`camera_rolling_shutter_map`).
        max_displacement: ``camera`` model: largest displacement, fraction of the width.
        Other arguments as :func:`write_rectangling_dataset`.

    Returns:
        The sample names written, sorted.
    """
    return write_dataset(
        "rolling_shutter", out, num, size=size, split=split, seed=seed, photos=photos, ext=ext, quality=quality,
        prefilter_sigma=prefilter_sigma, start=start, workers=workers, overwrite=overwrite, progress=progress,
        npz_size=None if npz_size is None else (int(npz_size[0]), int(npz_size[1])), full_res_jpg=full_res_jpg,
        max_translation=max_translation, max_rotation=max_rotation, motion_model=motion_model,
        max_displacement=max_displacement,
    )

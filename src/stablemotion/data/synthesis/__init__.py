"""Synthetic task data: ordinary photos -> training/evaluation samples with exact flow.

One module per generator, each declaring its :class:`SynthSpec` with its task
(:func:`declare_task`; the task specs and protocols live in :mod:`stablemotion.tasks`):

* :mod:`.sir` (``rectangling``, task ``sir``): DIR-D layout
  (``SPLIT/{input,mask,gt}/NNNNN.jpg`` + ``SPLIT/flow/NNNNN.npy``),
* :mod:`.rsc` (``rolling_shutter``, task ``rsc``): RS-Real layout (``SPLIT/npz/NNNNN.npz`` with
  ``condition``, ``out_flow``, ``gs``; the test split also gets ``jpg/`` and ``jpg_gt/``),
* :mod:`.rotation` and :mod:`.lens`: the task-folder layout (``SPLIT/{input,gt}/NNNNN.jpg`` +
  ``SPLIT/flow/NNNNN.npy``, read by :class:`stablemotion.data.TaskFolderDataset`).

Shared pieces: :mod:`.registry` (the generator registry), :mod:`.photos` (photo sources, crops,
procedural scenes), :mod:`.geometry` (flow inversion, resampling) and :mod:`.writer`
(:func:`make_sample` and :func:`write_dataset` for every declared generator by name).

All flows follow the project convention (``stablemotion.core.flow``): backward, pixels,
``(H, W, 2)`` float32 in numpy / on disk, ``target(p) = input(p + flow(p))``. Photos are
lightly low-pass filtered (``prefilter_sigma``) so that the bilinear re-warp reproduces the
target to > 35 dB. Photos come from a folder or, by default, from the natural photos bundled
inside scikit-image (:func:`bundled_photo_paths`): nothing is downloaded.
"""

from __future__ import annotations

from . import lens, rotation, rsc, sir  # noqa: F401  (each declares its generator)
from .photos import HELD_OUT_PHOTOS, bundled_photo_paths, resolve_photos
from .registry import (
    Layout,
    SynthOption,
    SynthSpec,
    TaskEntry,
    declare_task,
    generator_names,
    get_entry,
    get_generator,
    synth_tasks,
)
from .writer import (
    FOLDER_SUBDIRS,
    PREFILTER_SIGMA,
    WarpSample,
    make_sample,
    pool_context,
    sample_rng,
    write_dataset,
)

__all__ = [
    "SynthOption",
    "Layout",
    "SynthSpec",
    "TaskEntry",
    "declare_task",
    "get_entry",
    "get_generator",
    "synth_tasks",
    "generator_names",
    "WarpSample",
    "FOLDER_SUBDIRS",
    "PREFILTER_SIGMA",
    "make_sample",
    "sample_rng",
    "write_dataset",
    "pool_context",
    "HELD_OUT_PHOTOS",
    "bundled_photo_paths",
    "resolve_photos",
]

"""The public entry point to synthetic task data (:mod:`stablemotion.data.synthesis`).

:func:`make_sample` and :func:`write_dataset` work for every declared generator by name
(``"rectangling"``, ``"rolling_shutter"``, ``"rotation"``, ``"lens"``, or the task names
``"sir"``, ``"rsc"``); the photo sources (:func:`resolve_photos`, :func:`bundled_photo_paths`)
and the per-task generators and writers that scripts and tests use are importable from here.
The generators themselves live in :mod:`stablemotion.data.synthesis` (one module per
generator).
"""

from __future__ import annotations

from .synthesis import generator_names, make_sample, pool_context, sample_rng, write_dataset
from .synthesis.geometry import invert_flow
from .synthesis.lens import LensParams, make_lens_sample
from .synthesis.photos import (
    HELD_OUT_PHOTOS,
    PROCEDURAL,
    TRAINING_PHOTOS,
    URBAN,
    bundled_photo_paths,
    list_photos,
    procedural_scene,
    random_photo_crop,
    resolve_photos,
    urban_scene,
)
from .synthesis.rotation import make_rotation_sample, rotation_correction_map
from .synthesis.rsc import (
    camera_rolling_shutter_map,
    make_rolling_shutter_sample,
    rolling_shutter_margin,
    write_rolling_shutter_dataset,
)
from .synthesis.sir import (
    make_rectangling_sample,
    panorama_region,
    random_rectangling_mesh,
    stitched_region,
    write_rectangling_dataset,
)

__all__ = [
    "HELD_OUT_PHOTOS",
    "TRAINING_PHOTOS",
    "PROCEDURAL",
    "URBAN",
    "bundled_photo_paths",
    "list_photos",
    "resolve_photos",
    "procedural_scene",
    "urban_scene",
    "random_photo_crop",
    "invert_flow",
    "sample_rng",
    "make_sample",
    "pool_context",
    "write_dataset",
    "generator_names",
    "make_rectangling_sample",
    "random_rectangling_mesh",
    "stitched_region",
    "panorama_region",
    "write_rectangling_dataset",
    "make_rolling_shutter_sample",
    "rolling_shutter_margin",
    "camera_rolling_shutter_map",
    "write_rolling_shutter_dataset",
    "make_rotation_sample",
    "rotation_correction_map",
    "make_lens_sample",
    "LensParams",
]

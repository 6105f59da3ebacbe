"""Batch rectification at scale: ``stablemotion rectify --engine ray`` and :func:`rectify_dataset` (a Ray Data
pipeline: CPU decode tasks feeding a pool of actors that each load the model once), with a Parquet manifest
of every image. Ray is an optional extra (``pip install 'stablemotion[ray]'``), imported only when a run
starts: importing this package does not import it.

* :mod:`stablemotion.batch.ray_engine`: :class:`RayEngine`, :func:`rectify_dataset`.
* :mod:`stablemotion.batch.manifest`: the Parquet manifest (:func:`read_manifest`, :func:`write_manifest`).

Example:
    >>> from stablemotion.batch import stem_of
    >>> stem_of("gs://bucket/frames/a.png")
    'a'
"""

from __future__ import annotations

from .manifest import COLUMNS, STATUSES, read_manifest, write_manifest
from .ray_engine import MANIFEST_FILE, BatchJob, BatchSummary, RayEngine, rectify_dataset, stem_of, summarize

__all__ = ["COLUMNS", "MANIFEST_FILE", "STATUSES", "BatchJob", "BatchSummary", "RayEngine", "read_manifest",
           "rectify_dataset", "stem_of", "summarize", "write_manifest"]

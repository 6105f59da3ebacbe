"""Datasets: DIR-D, RS-Real and a generic per-task folder layout, plus flow-aware augmentation.

Every dataset returns a dict per sample whose keys match the task's condition names, so
a trainer assembles its UNet conditions from ``task.conditions``:

* ``"name"``: the sample's file stem (``str``);
* ``"image"``: the image the flow warps, float32 (3, H, W) in [-1, 1];
* ``"mask"`` (SIR): float32 (1, H, W), thresholded, -1 = no content, 1 = content;
* any other condition of a user task, as an image (or a mask if in ``MASK_CONDITIONS``);
* ``"gt"``: the target image, float32 (3, H, W) in [-1, 1];
* ``"flow"`` (when available): float32 (2, H, W), pixels, backward:
  ``gt(p) ~= image(p + flow(p))`` (see :mod:`stablemotion.core.flow`).

Layouts (files are paired by file stem; no list files):

* DIR-D (:class:`DIRDDataset`): ``ROOT/{training,testing}/{input,mask,gt}/NNNNN.jpg`` plus an
  optional flow folder of ``NNNNN.npy`` ((H, W, 2) float32 pseudo labels, pixels).
* RS-Real (:class:`RSRealDataset`): ``ROOT/SPLIT/[npz/]NNNNN.npz`` holding ``condition``
  (RS image), ``out_flow`` (flow, our backward convention: ``gs(p) = condition(p + flow(p))``,
  pixels, (H, W, 2)) and ``gs`` (GS image); the test split may add ``jpg/`` (full-resolution
  RS images) and ``jpg_gt/`` (full-resolution GS images).
* Any task (:class:`TaskFolderDataset`): ``ROOT/<condition>/`` per condition of the task
  (``input/`` is accepted for ``image``), ``ROOT/gt/`` and optionally ``ROOT/flow/``.

Every dataset validates its folder when built: missing parts, extra files and size
mismatches raise ``ValueError`` naming the files (``FileNotFoundError`` for missing folders).
"""

from __future__ import annotations

from ._common import IMAGE_KEYS_EXCLUDED, Sample, Transform, array_to_image_tensor, mask_to_tensor
from .augment import Augment, hflip_sample, resize_sample, vflip_sample
from .folders import DIRDDataset, PairedFolderDataset, TaskFolderDataset
from .rsreal import RS_KEYS, RSRealDataset

__all__ = [
    "Sample",
    "Transform",
    "PairedFolderDataset",
    "DIRDDataset",
    "TaskFolderDataset",
    "RSRealDataset",
    "RS_KEYS",
    "mask_to_tensor",
    "array_to_image_tensor",
    "hflip_sample",
    "vflip_sample",
    "resize_sample",
    "Augment",
    "IMAGE_KEYS_EXCLUDED",
]

"""Datasets: DIR-D, RS-Real and a generic per-task folder layout, plus flow-aware augmentation.

Every dataset returns a dict per sample whose keys match the task's condition names, so
a trainer assembles its UNet conditions from ``task.conditions``:

* ``"name"``: the sample's file stem (``str``);
* ``"image"``: the image the flow warps, float32 (3, H, W) in [-1, 1];
* ``"mask"`` (SIR): float32 (1, H, W), thresholded, -1 = no content, 1 = content;
* any other condition of a user task, as an image (or a mask if in ``MASK_CONDITIONS``);
* ``"gt"``: the target image, float32 (3, H, W) in [-1, 1];
* ``"flow"`` (when available): float32 (2, H, W), pixels, backward:
  ``gt(p) ~= image(p + flow(p))`` (see :mod:`stablemotion.flow`).

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

import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from ._io import PathLike, image_to_tensor, list_images, load_image
from .flow import read_flow, resize_flow
from .tasks import MASK_CONDITIONS, TaskSpec, get_task

__all__ = [
    "Sample",
    "PairedFolderDataset",
    "DIRDDataset",
    "TaskFolderDataset",
    "RSRealDataset",
    "mask_to_tensor",
    "array_to_image_tensor",
    "hflip_sample",
    "vflip_sample",
    "resize_sample",
    "Augment",
    "IMAGE_KEYS_EXCLUDED",
]

#: A dataset sample: ``name`` (str) plus float tensors (see the module docstring).
Sample = dict[str, Any]
Transform = Callable[[Sample], Sample]

#: Keys of a sample that are not images (never resized as pictures, never thresholded).
IMAGE_KEYS_EXCLUDED = frozenset({"name", "flow"})
_MAX_LISTED = 10


def _listing(problems: Sequence[str], what: str) -> str:
    shown = "\n  ".join(problems[:_MAX_LISTED])
    more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    return f"{what} ({len(problems)} problem{'s' if len(problems) != 1 else ''}):\n  {shown}{more}"


# --------------------------------------------------------------------------- conversions
def mask_to_tensor(mask: np.ndarray, threshold: int = 127) -> torch.Tensor:
    """uint8 mask (H, W) or (H, W, C) (white = content) -> float32 (1, H, W) in {-1, 1}."""
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W) or (H, W, C), got {mask.shape}")
    return torch.from_numpy(mask > threshold).float().mul(2.0).sub(1.0).unsqueeze(0)


def array_to_image_tensor(array: np.ndarray, what: str = "image") -> torch.Tensor:
    """An image array (H, W, 3) or (H, W) -> float32 (3, H, W) in [-1, 1].

    uint8 arrays are read as [0, 255]. Float arrays are read as [0, 255] when their
    maximum exceeds 1.5, as [-1, 1] when their minimum is below 0, else as [0, 1].
    """
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise ValueError(f"{what} must be an image (H, W, 3), got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.dtype == np.uint8:
        return image_to_tensor(arr)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{what} must be uint8 or float, got {arr.dtype}")
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1)
    if float(t.max()) > 1.5:
        return t.div(127.5).sub(1.0).clamp(-1, 1)
    if float(t.min()) < 0:
        return t.clamp(-1, 1)
    return t.mul(2.0).sub(1.0)


def _flow_tensor(flow: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float32)).permute(2, 0, 1).contiguous()


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file from its header."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except OSError as exc:
        raise ValueError(f"cannot read image header of {path}: {exc}") from exc
    return h, w


def _npy_shape(path: Path) -> tuple[int, ...]:
    try:
        return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
    except (ValueError, OSError) as exc:
        raise ValueError(f"cannot read {path} as a .npy array: {exc}") from exc


def _flow_hw(shape: tuple[int, ...]) -> tuple[int, int] | None:
    if len(shape) == 3 and shape[2] == 2:
        return shape[0], shape[1]
    if len(shape) == 3 and shape[0] == 2:
        return shape[1], shape[2]
    return None


# --------------------------------------------------------------------------- paired folders
class PairedFolderDataset(Dataset):
    """Samples assembled from parallel folders whose files are matched by stem.

    Args:
        folders: sample key -> folder of images, e.g. ``{"image": ".../input",
            "mask": ".../mask", "gt": ".../gt"}``.
        flow_dir: optional folder of ``STEM.npy`` / ``.flo`` / ``.png`` flows (pixels);
            when given, every sample must have one (key ``"flow"``, (2, H, W)).
        mask_keys: keys read as binary masks ((1, H, W) in {-1, 1}); others are RGB
            images ((3, H, W) in [-1, 1]).
        transform: applied to every sample dict (e.g. :class:`Augment`).
        check_sizes: read every file's header when built and reject size mismatches.

    Raises:
        FileNotFoundError: a folder is missing.
        ValueError: a sample lacks a part, a flow has no sample, sizes differ, or the
            dataset is empty; the message names the files.
    """

    def __init__(
        self,
        folders: Mapping[str, PathLike],
        flow_dir: PathLike | None = None,
        mask_keys: Sequence[str] = tuple(MASK_CONDITIONS),
        transform: Transform | None = None,
        check_sizes: bool = True,
    ) -> None:
        if not folders:
            raise ValueError("a paired dataset needs at least one folder")
        self.folders = {k: Path(v) for k, v in folders.items()}
        self.mask_keys = frozenset(mask_keys)
        self.transform = transform
        self.flow_dir = None if flow_dir is None else Path(flow_dir)
        files: dict[str, dict[str, Path]] = {}
        for key, folder in self.folders.items():
            if not folder.is_dir():
                raise FileNotFoundError(f"{key} folder not found: {folder}")
            files[key] = list_images(folder)
        if self.flow_dir is not None:
            files["flow"] = self._list_flows(self.flow_dir)
        image_stems = set().union(*(set(files[k]) for k in self.folders))
        problems = []
        for stem in sorted(image_stems):
            for key, folder in self.folders.items():
                if stem not in files[key]:
                    present = next(files[k][stem] for k in self.folders if stem in files[k])
                    problems.append(f"{stem}: missing {key} (no {stem}.* in {folder}; {present} exists)")
            if self.flow_dir is not None and stem not in files["flow"]:
                problems.append(f"{stem}: missing flow (no {stem}.npy in {self.flow_dir})")
        if self.flow_dir is not None:
            for stem in sorted(set(files["flow"]) - image_stems):
                problems.append(f"extra flow file {files['flow'][stem]} has no matching images")
        if problems:
            raise ValueError(_listing(problems, "incomplete dataset"))
        if not image_stems:
            raise ValueError(f"no images found in {', '.join(str(f) for f in self.folders.values())}")
        self.names = sorted(image_stems)
        self.files = {stem: {k: files[k][stem] for k in files} for stem in self.names}
        if check_sizes:
            self.check_sizes()

    @staticmethod
    def _list_flows(folder: Path) -> dict[str, Path]:
        if not folder.is_dir():
            raise FileNotFoundError(f"flow folder not found: {folder}")
        found: dict[str, Path] = {}
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.suffix.lower() in (".npy", ".flo", ".png") and not p.name.startswith("."):
                if p.stem in found:
                    raise ValueError(f"two flow files share the stem {p.stem!r} in {folder}: {found[p.stem].name}, {p.name}")
                found[p.stem] = p
        return found

    def check_sizes(self) -> None:
        """Raise ``ValueError`` naming every sample whose files differ in size (W x H)."""
        problems = []
        for stem in self.names:
            sizes: dict[str, tuple[int, int]] = {}
            for key, path in self.files[stem].items():
                if key == "flow":
                    if path.suffix.lower() != ".npy":
                        continue  # .flo/.png headers are checked when read
                    shape = _npy_shape(path)
                    hw = _flow_hw(shape)
                    if hw is None:
                        problems.append(f"{stem}: flow {path} has shape {shape}, expected (H, W, 2)")
                        continue
                    sizes[key] = hw
                else:
                    sizes[key] = _image_size(path)
            if len(set(sizes.values())) > 1:
                desc = ", ".join(f"{k} {w}x{h}" for k, (h, w) in sizes.items())
                problems.append(f"{stem}: sizes differ (W x H): {desc}")
        if problems:
            raise ValueError(_listing(problems, "mis-sized dataset files"))

    @property
    def has_flow(self) -> bool:
        return self.flow_dir is not None

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int) -> Sample:
        """The untransformed sample ``index``."""
        stem = self.names[index]
        sample: Sample = {"name": stem}
        size = None
        for key, path in self.files[stem].items():
            if key == "flow":
                sample[key] = _flow_tensor(read_flow(path))
            elif key in self.mask_keys:
                sample[key] = mask_to_tensor(load_image(path, mode="L"))
            else:
                sample[key] = image_to_tensor(load_image(path, mode="RGB"))
            hw = tuple(sample[key].shape[-2:])
            if size is not None and hw != size:
                raise ValueError(f"{stem}: {key} {path} is {hw[1]}x{hw[0]} but the sample is {size[1]}x{size[0]} (W x H)")
            size = hw
        return sample

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        sample = self.load(index)
        return self.transform(sample) if self.transform is not None else sample

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={v}" for k, v in self.folders.items())
        return f"{type(self).__name__}({len(self)} samples; {parts}; flow={self.flow_dir})"


def _split_dir(root: Path, split: str | None, marker: str) -> Path:
    """``root/split``, or ``root`` itself when it already is a split folder (holds ``marker``)."""
    if split is not None and (root / split).is_dir():
        return root / split
    if (root / marker).is_dir() or split is None:
        return root
    raise FileNotFoundError(f"split folder not found: {root / split} (and {root} has no {marker}/ folder)")


class DIRDDataset(PairedFolderDataset):
    """The DIR-D rectangling dataset: ``ROOT/SPLIT/{input,mask,gt}/NNNNN.jpg``.

    Samples: ``image`` (3, H, W) (the stitched input), ``mask`` (1, H, W) in {-1, 1},
    ``gt`` (3, H, W), ``flow`` (2, H, W) pixels when a flow folder is used, ``name``.

    Args:
        root: the DIR-D folder (holding ``training/`` and ``testing/``) or a split folder.
        split: ``"training"`` or ``"testing"`` (any folder name works).
        flow_dir: folder of ``NNNNN.npy`` pseudo flows ((H, W, 2), pixels). ``None`` uses
            ``ROOT/SPLIT/flow`` when it exists, else no flows; ``False`` never loads flows.
        transform, check_sizes: see :class:`PairedFolderDataset`.
    """

    def __init__(
        self,
        root: PathLike,
        split: str = "training",
        flow_dir: PathLike | bool | None = None,
        transform: Transform | None = None,
        check_sizes: bool = True,
    ) -> None:
        split_dir = _split_dir(Path(root), split, "input")
        self.root = split_dir
        folders = {"image": split_dir / "input", "mask": split_dir / "mask", "gt": split_dir / "gt"}
        if flow_dir is None:
            flows = split_dir / "flow" if (split_dir / "flow").is_dir() else None
        elif flow_dir is False:
            flows = None
        elif flow_dir is True:
            flows = split_dir / "flow"
        else:
            flows = Path(flow_dir)
        super().__init__(folders, flows, mask_keys=("mask",), transform=transform, check_sizes=check_sizes)


class TaskFolderDataset(PairedFolderDataset):
    """A user's own task: one folder per condition of ``task`` plus the target and flows.

    Layout: ``ROOT/<condition>/`` for each of ``task.conditions`` (``ROOT/input/`` is
    accepted for ``image``), ``ROOT/<target>/`` (default ``gt``) and, optionally,
    ``ROOT/flow/``. Conditions listed in ``MASK_CONDITIONS`` load as masks.

    Args:
        root: dataset folder.
        task: a :class:`TaskSpec`, a registered task name or a task dict.
        target: target folder name (key ``"gt"`` in the samples); None for condition-only
            sets (inference).
        flow_dir: like :class:`DIRDDataset` (``None`` = ``ROOT/flow`` if present).
        folders: override the folder of some keys, e.g. ``{"image": "/data/rs"}``.
        transform, check_sizes: see :class:`PairedFolderDataset`.
    """

    def __init__(
        self,
        root: PathLike,
        task: str | TaskSpec | Mapping[str, Any],
        target: str | None = "gt",
        flow_dir: PathLike | bool | None = None,
        folders: Mapping[str, PathLike] | None = None,
        transform: Transform | None = None,
        check_sizes: bool = True,
    ) -> None:
        self.task = get_task(task)
        root_p = Path(root)
        if not root_p.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {root_p}")
        overrides = {k: Path(v) for k, v in (folders or {}).items()}
        chosen: dict[str, Path] = {}
        for cond in self.task.conditions:
            if cond in overrides:
                chosen[cond] = overrides[cond]
            elif cond == "image" and not (root_p / "image").is_dir() and (root_p / "input").is_dir():
                chosen[cond] = root_p / "input"
            else:
                chosen[cond] = root_p / cond
        if target is not None:
            chosen["gt"] = overrides.get("gt", root_p / target)
        if flow_dir is None:
            flows = root_p / "flow" if (root_p / "flow").is_dir() else None
        elif flow_dir is False:
            flows = None
        elif flow_dir is True:
            flows = root_p / "flow"
        else:
            flows = Path(flow_dir)
        masks = tuple(c for c in self.task.conditions if c in MASK_CONDITIONS)
        super().__init__(chosen, flows, mask_keys=masks, transform=transform, check_sizes=check_sizes)


# --------------------------------------------------------------------------- RS-Real
RS_KEYS = ("condition", "out_flow", "gs")


def _npz_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Array shapes of an ``.npz`` file from its headers (no array data is read)."""
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, _, _ = np.lib.format.read_array_header_1_0(fh)
                    else:
                        shape, _, _ = np.lib.format.read_array_header_2_0(fh)
                shapes[info.filename[:-4]] = tuple(shape)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path} as an .npz archive: {exc}") from exc
    return shapes


def _rs_hw(key: str, shape: tuple[int, ...]) -> tuple[int, int] | None:
    if key == "out_flow":
        return _flow_hw(shape)
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 3 and shape[2] in (1, 3):
        return shape[0], shape[1]
    if len(shape) == 3 and shape[0] in (1, 3):
        return shape[1], shape[2]
    return None


class RSRealDataset(Dataset):
    """RS-Real rolling-shutter data: ``.npz`` files with ``condition``, ``out_flow``, ``gs``.

    Samples: ``image`` (3, h, w) = ``condition`` (the RS image), ``gt`` (3, h, w) = ``gs``,
    ``flow`` (2, h, w) = ``out_flow`` (pixels, backward: ``gt(p) = image(p + flow(p))``
    with zeros padding -- the project convention; a file in another convention must be
    converted first), ``name``; with ``full_res`` also ``image_full`` / ``gt_full``
    (3, H, W) from ``jpg/`` and ``jpg_gt/`` (sizes may differ between samples: use batch
    size 1 or a custom collate).

    Args:
        root: folder holding the splits, a split folder, or the npz folder itself.
        split: ``"train"``, ``"test"``... (None: ``root`` is the split folder).
        full_res: also load the full-resolution images of the test layout.
        transform: applied to every sample dict.
        check: read every npz header when built (keys and sizes).
    """

    def __init__(
        self,
        root: PathLike,
        split: str | None = None,
        full_res: bool = False,
        transform: Transform | None = None,
        check: bool = True,
    ) -> None:
        root_p = Path(root)
        if not root_p.is_dir():
            raise FileNotFoundError(f"RS-Real folder not found: {root_p}")
        split_dir = _split_dir(root_p, split, "npz")
        self.root = split_dir
        self.npz_dir = split_dir / "npz" if (split_dir / "npz").is_dir() else split_dir
        self.transform = transform
        self.full_res = full_res
        files = {p.stem: p for p in sorted(self.npz_dir.glob("*.npz")) if not p.name.startswith(".")}
        if not files:
            raise ValueError(f"no .npz files found in {self.npz_dir}")
        self.names = sorted(files)
        self.files = files
        self.full_files: dict[str, dict[str, Path]] = {}
        problems: list[str] = []
        if full_res:
            jpg = {k: list_images(split_dir / d) for k, d in (("image_full", "jpg"), ("gt_full", "jpg_gt"))}
            for key, found in jpg.items():
                for stem in self.names:
                    if stem not in found:
                        problems.append(f"{stem}: missing {key} (no {stem}.* in {split_dir / ('jpg' if key == 'image_full' else 'jpg_gt')})")
                for stem in sorted(set(found) - set(files)):
                    problems.append(f"extra file {found[stem]} has no matching .npz")
            self.full_files = {s: {k: jpg[k][s] for k in jpg if s in jpg[k]} for s in self.names}
        if check:
            problems.extend(self._check())
        if problems:
            raise ValueError(_listing(problems, f"invalid RS-Real data in {split_dir}"))

    def _check(self) -> list[str]:
        problems = []
        for stem in self.names:
            path = self.files[stem]
            try:
                shapes = _npz_shapes(path)
            except ValueError as exc:
                problems.append(str(exc))
                continue
            missing = [k for k in RS_KEYS if k not in shapes]
            if missing:
                problems.append(f"{path}: missing key(s) {', '.join(missing)} (has {', '.join(sorted(shapes)) or 'none'})")
                continue
            sizes = {k: _rs_hw(k, shapes[k]) for k in RS_KEYS}
            bad = [f"{k} {shapes[k]}" for k, v in sizes.items() if v is None]
            if bad:
                problems.append(f"{path}: unexpected array shapes {', '.join(bad)}")
            elif len(set(sizes.values())) > 1:
                problems.append(f"{path}: sizes differ: " + ", ".join(f"{k} {shapes[k]}" for k in RS_KEYS))
            if self.full_res and stem in self.full_files:
                full = {k: _image_size(p) for k, p in self.full_files[stem].items()}
                if len(set(full.values())) > 1:
                    problems.append(f"{stem}: full-resolution images differ in size: {full}")
        return problems

    def __len__(self) -> int:
        return len(self.names)

    def load(self, index: int) -> Sample:
        stem = self.names[index]
        path = self.files[stem]
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [k for k in RS_KEYS if k not in data.files]
                if missing:
                    raise ValueError(f"{path}: missing key(s) {', '.join(missing)}")
                arrays = {k: np.asarray(data[k]) for k in RS_KEYS}
        except (zipfile.BadZipFile, OSError) as exc:
            raise ValueError(f"cannot read {path}: {exc}") from exc
        flow = arrays["out_flow"]
        if flow.ndim == 3 and flow.shape[0] == 2 and flow.shape[2] != 2:
            flow = flow.transpose(1, 2, 0)
        if flow.ndim != 3 or flow.shape[2] != 2:
            raise ValueError(f"{path}: out_flow has shape {flow.shape}, expected (H, W, 2)")
        sample: Sample = {
            "name": stem,
            "image": array_to_image_tensor(arrays["condition"], f"{path} condition"),
            "gt": array_to_image_tensor(arrays["gs"], f"{path} gs"),
            "flow": _flow_tensor(flow),
        }
        sizes = {k: tuple(sample[k].shape[-2:]) for k in ("image", "gt", "flow")}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"{path}: sizes differ: {sizes}")
        if self.full_res:
            for key, p in self.full_files[stem].items():
                sample[key] = image_to_tensor(load_image(p))
        return sample

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        sample = self.load(index)
        return self.transform(sample) if self.transform is not None else sample

    def __repr__(self) -> str:
        return f"RSRealDataset({len(self)} samples in {self.npz_dir}, full_res={self.full_res})"


# --------------------------------------------------------------------------- augmentation
def _image_keys(sample: Sample) -> list[str]:
    return [k for k, v in sample.items() if k not in IMAGE_KEYS_EXCLUDED and isinstance(v, torch.Tensor) and v.ndim >= 3]


def hflip_sample(sample: Sample) -> Sample:
    """Mirror a sample left-right; the flow is mirrored and its ``u`` negated.

    If ``gt(p) = image(p + f(p))`` then the mirrored images satisfy it with
    ``f'(x, y) = (-u(W-1-x, y), v(W-1-x, y))``.
    """
    out = dict(sample)
    for key in _image_keys(sample):
        out[key] = sample[key].flip(-1)
    if "flow" in sample:
        flow = sample["flow"].flip(-1).clone()
        flow[..., 0, :, :] = -flow[..., 0, :, :]
        out["flow"] = flow
    return out


def vflip_sample(sample: Sample) -> Sample:
    """Mirror a sample top-bottom; the flow's ``v`` is negated.

    Not physical for rolling shutter (it reverses the readout direction); off by default.
    """
    out = dict(sample)
    for key in _image_keys(sample):
        out[key] = sample[key].flip(-2)
    if "flow" in sample:
        flow = sample["flow"].flip(-2).clone()
        flow[..., 1, :, :] = -flow[..., 1, :, :]
        out["flow"] = flow
    return out


def resize_sample(sample: Sample, size: tuple[int, int], mask_keys: Sequence[str] = tuple(MASK_CONDITIONS)) -> Sample:
    """Resize every image, mask and flow of a sample to ``size = (H', W')``.

    Images: bilinear (antialiased when shrinking), pixel-area convention; masks: the same,
    then thresholded at 0 back to {-1, 1}; the flow: :func:`stablemotion.flow.resize_flow`
    with the same convention (``u`` scaled by ``W'/W``, ``v`` by ``H'/H``), which keeps
    ``gt(p) = image(p + flow(p))`` true at the new size.
    """
    th, tw = int(size[0]), int(size[1])
    out = dict(sample)
    for key in _image_keys(sample):
        t = sample[key]
        if tuple(t.shape[-2:]) == (th, tw):
            continue
        shrink = th < t.shape[-2] or tw < t.shape[-1]
        r = F.interpolate(t.unsqueeze(0).float(), size=(th, tw), mode="bilinear", align_corners=False, antialias=shrink)[0]
        if key in mask_keys:
            r = torch.where(r > 0, 1.0, -1.0)
        out[key] = r.to(t.dtype)
    if "flow" in sample and tuple(sample["flow"].shape[-2:]) != (th, tw):
        out["flow"] = resize_flow(sample["flow"], (th, tw), mode="bilinear", align_corners=False)
    return out


class Augment:
    """Random flow-consistent augmentation of sample dicts (a dataset ``transform``).

    Args:
        size: resize every sample to (H, W) first (e.g. the task resolution); None keeps it.
        hflip: probability of a left-right mirror.
        vflip: probability of a top-bottom mirror (0 by default; wrong for rolling shutter).
        mask_keys: keys that are masks (thresholded after resizing).
        generator: torch generator for reproducible draws (default: torch's global RNG,
            which ``DataLoader`` seeds per worker).
    """

    def __init__(
        self,
        size: tuple[int, int] | None = None,
        hflip: float = 0.5,
        vflip: float = 0.0,
        mask_keys: Sequence[str] = tuple(MASK_CONDITIONS),
        generator: torch.Generator | None = None,
    ) -> None:
        for name, p in (("hflip", hflip), ("vflip", vflip)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} probability must be in [0, 1], got {p}")
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ValueError(f"size must be (H, W) with positive entries, got {size}")
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.hflip, self.vflip = float(hflip), float(vflip)
        self.mask_keys = tuple(mask_keys)
        self.generator = generator

    def _coin(self, p: float) -> bool:
        return p > 0 and float(torch.rand((), generator=self.generator)) < p

    def __call__(self, sample: Sample) -> Sample:
        if self.size is not None:
            sample = resize_sample(sample, self.size, self.mask_keys)
        if self._coin(self.hflip):
            sample = hflip_sample(sample)
        if self._coin(self.vflip):
            sample = vflip_sample(sample)
        return sample

    def __repr__(self) -> str:
        return f"Augment(size={self.size}, hflip={self.hflip}, vflip={self.vflip})"

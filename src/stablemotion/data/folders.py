"""Paired-folder datasets: files matched by stem (DIR-D, a user's own task)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core.flow import read_flow
from ..io.images import PathLike, image_to_tensor, list_images, load_image
from ..tasks import MASK_CONDITIONS, TaskSpec, get_task
from ._common import (
    Sample,
    SampleDataset,
    Transform,
    _flow_hw,
    _flow_tensor,
    _image_size,
    _listing,
    _npy_shape,
    mask_to_tensor,
)


class PairedFolderDataset(SampleDataset):
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

    def load(self, index: int) -> Sample:
        """The untransformed sample ``index``."""
        stem = self.names[index]
        sample: Sample = {"name": stem}
        size = None
        for key, path in self.files[stem].items():
            if key == "flow":
                sample[key] = _flow_tensor(read_flow(path))
            elif key in self.mask_keys:
                sample[key] = mask_to_tensor(load_image(path, mode="mask"))
            else:
                sample[key] = image_to_tensor(load_image(path, mode="RGB"))
            hw = tuple(sample[key].shape[-2:])
            if size is not None and hw != size:
                raise ValueError(f"{stem}: {key} {path} is {hw[1]}x{hw[0]} but the sample is {size[1]}x{size[0]} (W x H)")
            size = hw
        return sample

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


def _resolve_flow_dir(root: Path, flow_dir: PathLike | bool | None) -> Path | None:
    """``None``: ``ROOT/flow`` if it exists; ``False``: no flows; ``True``: ``ROOT/flow``; else the path."""
    if flow_dir is None:
        return root / "flow" if (root / "flow").is_dir() else None
    if flow_dir is False:
        return None
    if flow_dir is True:
        return root / "flow"
    return Path(flow_dir)


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
        flows = _resolve_flow_dir(split_dir, flow_dir)
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
        flows = _resolve_flow_dir(root_p, flow_dir)
        masks = tuple(c for c in self.task.conditions if c in MASK_CONDITIONS)
        super().__init__(chosen, flows, mask_keys=masks, transform=transform, check_sizes=check_sizes)



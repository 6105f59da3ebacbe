"""Test sets as the task's evaluation protocol reads them (:mod:`stablemotion.evaluation`).

:func:`open_eval_set` opens a DIR-D, RS-Real or task-folder test split (or a synthetic one written
by ``stablemotion synth``) with the layout, split, metrics and EPE region of the task's
:class:`~stablemotion.tasks.EvalProtocol`, as uint8 samples (:class:`EvalSample`) with the
ground-truth flow when the set has one; :func:`shard_names` splits it between processes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io.images import PathLike, load_image, tensor_to_image
from ..tasks import LAYOUT_KINDS, EvalProtocol

__all__ = ["EvalSample", "EvalSet", "open_eval_set", "layout_of", "shard_names"]


# --------------------------------------------------------------------------- test sets
@dataclass
class EvalSample:
    """One test image, uint8 arrays.

    ``image`` (H, W, 3); ``mask`` (H, W, 3) or (H, W), white = content, exactly as the
    file reads (the pipeline applies its own mask encoding), or None; ``gt`` (H, W, 3);
    ``network_image`` (h, w, 3): the released protocol's own network input when the dataset
    stores one (RS-Real: the ``.npz`` ``condition`` at 256x256, while ``image`` is the
    full-resolution ``jpg``), else None; ``flow_gt`` (h, w, 2) float32 pixels: the ground-truth flow
    when the test set has one (task folders with ``flow/``, RS-Real's ``.npz`` at its network size), else None.
    """

    name: str
    image: np.ndarray
    mask: np.ndarray | None
    gt: np.ndarray
    network_image: np.ndarray | None = None
    flow_gt: np.ndarray | None = None


class EvalSet:
    """A test split as uint8 samples, addressed by name.

    Wraps :class:`~stablemotion.data.DIRDDataset`, :class:`~stablemotion.data.RSRealDataset`
    (full-resolution ``jpg/`` + ``jpg_gt/`` when present, as the released RSC protocol) or
    :class:`~stablemotion.data.TaskFolderDataset`; ``protocol`` is the task's
    :class:`~stablemotion.tasks.EvalProtocol` (metrics, EPE region) the set is scored by.
    """

    def __init__(self, dataset: Any, kind: str, full_res: bool = False, protocol: EvalProtocol | None = None) -> None:
        self.dataset = dataset
        self.kind = kind
        self.full_res = full_res
        self.protocol = protocol if protocol is not None else EvalProtocol(layout=kind if kind in LAYOUT_KINDS else "folder")
        self.names: list[str] = list(dataset.names)
        self._index = {n: i for i, n in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"EvalSet({self.kind}, {len(self)} images, {self.dataset!r})"

    def get(self, name: str) -> EvalSample:
        """The sample ``name`` as uint8 arrays."""
        if name not in self._index:
            raise KeyError(f"no test image named {name!r} in {self.dataset!r}")
        s = self.dataset.load(self._index[name])
        network_image = None
        if self.full_res:
            image, gt = tensor_to_image(s["image_full"]), tensor_to_image(s["gt_full"])
            network_image = tensor_to_image(s["image"])  # the stored condition, as the release feeds it
        else:
            image, gt = tensor_to_image(s["image"]), tensor_to_image(s["gt"])
        mask = None
        entry = getattr(self.dataset, "files", {}).get(name)
        mask_file = entry.get("mask") if isinstance(entry, dict) else None
        if mask_file is not None:  # the file as read (DIR-D: 3-channel JPEG), not the training binarisation
            mask = load_image(mask_file, mode="RGB")
        elif "mask" in s:
            mask = np.where(s["mask"][0].numpy() > 0, 255, 0).astype(np.uint8)
        flow_gt = s["flow"].permute(1, 2, 0).numpy().astype(np.float32) if "flow" in s else None
        return EvalSample(name, image, mask, gt, network_image, flow_gt)

    @property
    def has_flows(self) -> bool:
        """Whether the samples carry a ground-truth flow (so EPE can be scored)."""
        return bool(getattr(self.dataset, "has_flow", False)) or self.kind == "rsreal"


def open_eval_set(root: PathLike, task: str = "sir", split: str | None = None, kind: str = "auto") -> EvalSet:
    """Open the test split of ``task`` as its :class:`~stablemotion.tasks.EvalProtocol` says.

    Args:
        root: the dataset folder (the DIR-D / RS-Real root, a task folder, or a split folder).
        task: ``"sir"``, ``"rsc"`` or a registered task: its protocol (:func:`~stablemotion.tasks.get_protocol`)
            gives the layout, the split, the metrics and the EPE region.
        split: split folder name; default the protocol's (``"testing"`` for DIR-D, ``"test"`` for RS-Real)
            when that folder exists.
        kind: ``"dird"``, ``"rsreal"``, ``"folder"`` (:class:`~stablemotion.data.TaskFolderDataset`)
            or ``"auto"``: the protocol's layout when ``root`` has it, else the layout found
            (``npz/`` files mean RS-Real; ``input/`` + ``mask/`` mean DIR-D; otherwise a task folder).

    Ground-truth flows are read when the set has them (``flow/`` of DIR-D and task folders,
    RS-Real's ``.npz``), so :func:`~stablemotion.evaluation.runner.evaluate` can report EPE.
    """
    from ..tasks import get_protocol

    root_p = Path(root)
    if not root_p.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root_p}")
    protocol = get_protocol(task)
    if kind == "auto":
        kind = layout_of(root_p, split, protocol)
    if kind not in LAYOUT_KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}: use auto, dird, rsreal or folder")
    if protocol.layout != kind:
        protocol = dataclasses.replace(protocol, layout=kind)
    if split is None and (root_p / protocol.split).is_dir():
        split = protocol.split
    return _OPENERS[kind](root_p, task, split, protocol)


def _open_dird(root: Path, task: str, split: str | None, protocol: EvalProtocol) -> EvalSet:
    from ..data import DIRDDataset

    return EvalSet(_with_flows(DIRDDataset, root, split=split or "testing"), "dird", protocol=protocol)


def _open_rsreal(root: Path, task: str, split: str | None, protocol: EvalProtocol) -> EvalSet:
    from ..data import RSRealDataset

    sp = split if split is not None else ("test" if (root / "test").is_dir() else None)
    base = root / sp if sp is not None and (root / sp).is_dir() else root
    full = (base / "jpg").is_dir() and (base / "jpg_gt").is_dir()
    return EvalSet(RSRealDataset(root, split=sp, full_res=full), "rsreal", full_res=full, protocol=protocol)


def _open_folder(root: Path, task: str, split: str | None, protocol: EvalProtocol) -> EvalSet:
    from ..data import TaskFolderDataset

    base = root / split if split is not None and (root / split).is_dir() else root
    return EvalSet(_with_flows(TaskFolderDataset, base, task), "folder", protocol=protocol)


_OPENERS: dict[str, Callable[[Path, str, str | None, EvalProtocol], EvalSet]] = {
    "dird": _open_dird, "rsreal": _open_rsreal, "folder": _open_folder,
}


def _with_flows(cls: Any, *args: Any, **kwargs: Any) -> Any:
    """``cls`` reading its ``flow/`` folder when there is a complete one, else without flows."""
    try:
        return cls(*args, flow_dir=None, **kwargs)
    except (ValueError, FileNotFoundError):  # flow/ incomplete or unreadable: score without EPE
        return cls(*args, flow_dir=False, **kwargs)


def _layout_found(c: Path) -> str | None:
    if (c / "npz").is_dir() or any(c.glob("*.npz")):
        return "rsreal"
    if (c / "input").is_dir() and (c / "mask").is_dir():
        return "dird"
    return None


def layout_of(root: Path, split: str | None, protocol: EvalProtocol | None = None) -> str:
    """The layout of the test set under ``root``: the protocol's when found there, else the one found.

    Example:
        >>> import tempfile
        >>> from stablemotion.tasks import get_protocol
        >>> with tempfile.TemporaryDirectory() as d:
        ...     (Path(d) / "test" / "npz").mkdir(parents=True)
        ...     layout_of(Path(d), None, get_protocol("rsc")), layout_of(Path(d) / "test" / "npz", None)
        ('rsreal', 'folder')
    """
    cands = [root / split] if split else []
    if protocol is not None:
        cands.append(root / protocol.split)
    cands += [root / "testing", root / "test", root]
    found = [k for k in (_layout_found(c) for c in cands) if k is not None]
    if protocol is not None and protocol.layout in found:
        return protocol.layout
    return found[0] if found else "folder"


def shard_names(names: Sequence[str], rank: int, world: int) -> list[str]:
    """Names of shard ``rank`` of ``world``: every ``world``-th name (sorted order).

    Example:
        >>> shard_names(["c", "a", "b"], 1, 2)
        ['b']
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"invalid shard {rank} of {world}")
    return sorted(names)[rank::world]

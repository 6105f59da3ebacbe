"""RS-Real rolling-shutter data: ``.npz`` files (``condition``, ``out_flow``, ``gs``) and the test layout."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..io.images import PathLike, image_to_tensor, list_images, load_image
from ._common import (
    Sample,
    SampleDataset,
    Transform,
    _flow_hw,
    _flow_tensor,
    _image_size,
    _listing,
    array_to_image_tensor,
)
from .folders import _split_dir

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


class RSRealDataset(SampleDataset):
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

    def __repr__(self) -> str:
        return f"RSRealDataset({len(self)} samples in {self.npz_dir}, full_res={self.full_res})"



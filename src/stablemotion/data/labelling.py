"""Pseudo-flow labelling: estimate the backward flow that warps an input onto its ground truth.

For datasets that have (input, gt) pairs but no flow (the DIR-D training set), every
pair gets the flow ``f`` with ``gt(p) ~= input(p + f(p))`` (the convention of
:mod:`stablemotion.core.flow`), estimated as:

1. dense correspondence gt -> input with OpenCV's DIS optical flow (itself coarse-to-fine
   over an image pyramid), with a per-pixel confidence from forward-backward consistency,
   the photometric error and, when a mask is given, whether the match lands on content;
2. a robust (IRLS, Huber) least-squares fit of a smooth mesh -- vertex displacements of a
   coarse rigid grid, bilinear inside the cells, with a second-difference smoothness
   penalty -- which fills in unreliable regions and removes noise;
3. coarse-to-fine refinement: the input is warped with the coarse mesh flow, DIS measures
   the small residual motion, the two are composed (``r + f1(p + r)``) and fitted again
   with a finer mesh;
4. polishing: DIS measures the residual motion left by the fine mesh flow; it is smoothed
   by confidence-weighted Gaussian filtering (normalised convolution, ``polish_sigma``)
   and composed with the mesh flow, which recovers detail the mesh cannot represent;
5. per image, the candidate with the better warp PSNR is kept: the polished ("dense")
   flow must beat the pure mesh flow by ``select_margin`` dB.

On synthetic 384 x 512 pairs (``benchmarks/labelling.py``) the end-point error against
the exact flow is a few tenths of a pixel.

:func:`label_flows` runs this over a folder in parallel processes, skips pairs whose flow
already exists (resumable; files are written atomically), and reports per image the
PSNR/SSIM of ``warp(input, flow)`` against the gt (the released protocol on uint8).
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ..core.constants import DIS_PRESET_NAMES
from ..core.flow import PADDING_MODES, fit_mesh_flow, read_flow, warp, write_flow
from ..core.image_processing import mask_valid
from ..core.metrics import ScoreTable, psnr, ssim
from ..io.images import PathLike, atomic_path, load_image
from . import PairedFolderDataset
from .synth import pool_context

__all__ = [
    "DIS_PRESETS",
    "LabelConfig",
    "LabelResult",
    "LabelReport",
    "dis_flow",
    "flow_confidence",
    "fit_mesh_flow",
    "compose_flows",
    "warp_numpy",
    "estimate_flow",
    "label_pair",
    "label_flows",
]

DIS_PRESETS = dict(zip(DIS_PRESET_NAMES, (cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, cv2.DISOPTICAL_FLOW_PRESET_FAST,
                                          cv2.DISOPTICAL_FLOW_PRESET_MEDIUM), strict=True))
REPORT_NAME = "labelling_report.csv"


@dataclass(frozen=True)
class LabelConfig:
    """Settings of the pseudo-flow estimator.

    Attributes:
        preset: DIS preset, ``"ultrafast"``, ``"fast"`` or ``"medium"``.
        coarse_cell: cell size (pixels) of the first mesh fit.
        cell: cell size (pixels) of the final mesh fit.
        smoothness: weight of the second-difference penalty on mesh vertices, relative to
            the average data weight per vertex.
        irls: robust re-weighting iterations of each mesh fit.
        huber: Huber threshold of the fit residual, pixels.
        refine: run the second (residual) DIS pass and the fine mesh fit.
        polish_sigma: Gaussian sigma (pixels) of the confidence-weighted smoothing of the
            last residual flow; 0 makes the dense candidate the raw composed DIS flow.
        select_margin: dB by which the dense flow's warp PSNR must beat the mesh flow's
            for it to be chosen; ``math.inf`` always keeps the mesh flow.
        padding: warp padding used to score candidates (``"border"`` for SIR).
    """

    preset: str = "medium"
    coarse_cell: int = 96
    cell: int = 32
    smoothness: float = 0.03
    irls: int = 3
    huber: float = 1.0
    refine: bool = True
    polish_sigma: float = 3.0
    select_margin: float = 0.0
    padding: str = "border"

    def __post_init__(self) -> None:
        if self.preset not in DIS_PRESETS:
            raise ValueError(f"preset must be one of {sorted(DIS_PRESETS)}, got {self.preset!r}")
        if self.cell < 4 or self.coarse_cell < 4:
            raise ValueError(f"mesh cells must be at least 4 pixels, got cell={self.cell}, coarse_cell={self.coarse_cell}")
        if self.smoothness < 0 or self.irls < 1 or self.huber <= 0 or self.polish_sigma < 0:
            raise ValueError("smoothness and polish_sigma must be >= 0, irls >= 1 and huber > 0")
        if self.padding not in PADDING_MODES:
            raise ValueError(f"padding must be one of {PADDING_MODES}, got {self.padding!r}")


@dataclass
class LabelResult:
    """A pseudo flow and how well it explains the pair.

    Attributes:
        flow: float32 (H, W, 2), pixels, backward: ``gt(p) ~= input(p + flow(p))``.
        method: ``"mesh"`` (smooth mesh fit) or ``"dense"`` (mesh + polished residual).
        psnr, ssim: of ``warp(input, flow)`` against gt (uint8, released protocol).
        identity_psnr, identity_ssim: of the input itself against gt (zero flow).
    """

    flow: np.ndarray
    method: str
    psnr: float
    ssim: float
    identity_psnr: float
    identity_ssim: float


# --------------------------------------------------------------------------- building blocks
def _gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return np.ascontiguousarray(image)
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)


def dis_flow(source: np.ndarray, target: np.ndarray, preset: str = "medium") -> np.ndarray:
    """DIS optical flow from ``source`` to ``target``: ``source(p) ~= target(p + flow(p))``.

    Called as ``dis_flow(gt, input)`` it is the backward flow that warps the input onto
    the gt.

    Args:
        source, target: uint8 (H, W, 3) RGB or (H, W) gray, same size.
        preset: see :data:`DIS_PRESETS`.

    Returns:
        float32 (H, W, 2), pixels.
    """
    if source.shape[:2] != target.shape[:2]:
        raise ValueError(f"images differ in size: {source.shape[:2]} vs {target.shape[:2]}")
    dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
    flow = dis.calc(_gray(source), _gray(target), None)
    return np.ascontiguousarray(flow, dtype=np.float32)


def warp_numpy(image: np.ndarray, flow: np.ndarray, padding: str = "border") -> np.ndarray:
    """:func:`stablemotion.core.flow.warp` for numpy: image (H, W[, C]) any dtype, flow (H, W, 2) pixels."""
    squeeze = image.ndim == 2
    arr = image[..., None] if squeeze else image
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
    f = torch.from_numpy(np.ascontiguousarray(flow, dtype=np.float32)).permute(2, 0, 1)
    out = warp(t, f, padding=padding).permute(1, 2, 0).numpy()
    return out[..., 0] if squeeze else out


def compose_flows(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """Backward flows compose as ``inner(p) + outer(p + inner(p))``.

    If ``a(p) = b(p + inner(p))`` and ``b(q) = c(q + outer(q))`` then ``a(p) = c(p + result(p))``.
    Both (H, W, 2), pixels; returns float32 (H, W, 2).
    """
    return (inner + warp_numpy(outer.astype(np.float32), inner, padding="border")).astype(np.float32)


def flow_confidence(
    flow: np.ndarray,
    back: np.ndarray | None,
    source: np.ndarray,
    target: np.ndarray,
    mask: np.ndarray | None = None,
    fb_sigma: float = 1.5,
    photo_sigma: float = 20.0,
) -> np.ndarray:
    """Per-pixel confidence in [0, 1] of a backward flow ``source(p) ~= target(p + flow(p))``.

    Args:
        flow: (H, W, 2) pixels; back: (H, W, 2) flow target -> source, or None.
        source, target: uint8 images; mask: optional uint8/bool (H, W) of the target's
            content (matches landing outside get 0).
        fb_sigma: forward-backward error (pixels) at which confidence halves.
        photo_sigma: gray-level error at which confidence halves.

    Returns:
        float64 (H, W).
    """
    conf = np.ones(flow.shape[:2])
    if back is not None:
        err = np.linalg.norm(flow + warp_numpy(back, flow, padding="border"), axis=-1)
        conf *= 1.0 / (1.0 + (err / fb_sigma) ** 2)
    warped = warp_numpy(_gray(target).astype(np.float32), flow, padding="border")
    photo = np.abs(warped - _gray(source).astype(np.float32))
    conf *= 1.0 / (1.0 + (photo / photo_sigma) ** 2)
    if mask is not None:
        m = (np.asarray(mask) > 0).astype(np.float32)
        if m.ndim == 3:
            m = m.max(axis=2)
        conf *= warp_numpy(m, flow, padding="zeros") > 0.99
    return conf


def _normalized_blur(flow: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """Confidence-weighted Gaussian smoothing (normalised convolution) of a flow (H, W, 2)."""
    wgt = weight.astype(np.float32)
    num = cv2.GaussianBlur(flow * wgt[..., None], (0, 0), sigma)
    den = cv2.GaussianBlur(wgt, (0, 0), sigma)[..., None]
    return (num / np.maximum(den, 1e-6)).astype(np.float32)


def _mesh_shape(h: int, w: int, cell: int) -> tuple[int, int]:
    return max(1, round((h - 1) / cell)), max(1, round((w - 1) / cell))


def _scores(image: np.ndarray, gt: np.ndarray, flow: np.ndarray, padding: str) -> tuple[float, float]:
    out = warp_numpy(image, flow, padding=padding)
    return psnr(out, gt), ssim(out, gt)


# --------------------------------------------------------------------------- estimator
def estimate_flow(
    image: np.ndarray,
    gt: np.ndarray,
    mask: np.ndarray | None = None,
    config: LabelConfig | None = None,
) -> LabelResult:
    """Estimate the backward flow with ``gt(p) ~= image(p + flow(p))``.

    Args:
        image: uint8 (H, W, 3), the input (e.g. the stitched image).
        gt: uint8 (H, W, 3), the target.
        mask: optional uint8 (H, W) or (H, W, 3) content mask of ``image`` (white = content).
        config: :class:`LabelConfig` (defaults if None).

    Returns:
        :class:`LabelResult` (flow (H, W, 2) float32, pixels).
    """
    cfg = config or LabelConfig()
    for name, arr in (("image", image), ("gt", gt)):
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"{name} must be uint8 (H, W, 3), got {arr.dtype} {arr.shape}")
    if image.shape != gt.shape:
        raise ValueError(f"image {image.shape} and gt {gt.shape} differ in size")
    h, w = gt.shape[:2]

    fwd = dis_flow(gt, image, cfg.preset)
    back = dis_flow(image, gt, cfg.preset)
    conf = flow_confidence(fwd, back, gt, image, mask)
    _, coarse = fit_mesh_flow(fwd, conf, *_mesh_shape(h, w, cfg.coarse_cell), cfg.smoothness, cfg.irls, cfg.huber)
    dense, mesh_flow = fwd, coarse
    if cfg.refine:
        warped = warp_numpy(image, coarse, padding=cfg.padding)
        res = dis_flow(gt, warped, cfg.preset)
        res_back = dis_flow(warped, gt, cfg.preset)
        dense = compose_flows(coarse, res)
        conf = flow_confidence(res, res_back, gt, warped)
        if mask is not None:
            conf *= flow_confidence(dense, None, gt, image, mask, photo_sigma=1e9)
        _, mesh_flow = fit_mesh_flow(dense, conf, *_mesh_shape(h, w, cfg.cell), cfg.smoothness, cfg.irls, cfg.huber)
        if cfg.polish_sigma > 0:
            warped = warp_numpy(image, mesh_flow, padding=cfg.padding)
            res = dis_flow(gt, warped, cfg.preset)
            res_back = dis_flow(warped, gt, cfg.preset)
            conf = flow_confidence(res, res_back, gt, warped)
            if mask is not None:
                conf *= flow_confidence(compose_flows(mesh_flow, res), None, gt, image, mask, photo_sigma=1e9)
            res = _normalized_blur(res, conf, cfg.polish_sigma)
            dense = compose_flows(mesh_flow, res)

    # PSNR picks the candidate; SSIM (slower) is computed for the chosen one only.
    flow, method = mesh_flow, "mesh"
    warped = warp_numpy(image, mesh_flow, padding=cfg.padding)
    best = psnr(warped, gt)
    if math.isfinite(cfg.select_margin):
        warped_dense = warp_numpy(image, dense, padding=cfg.padding)
        d_psnr = psnr(warped_dense, gt)
        if d_psnr > best + cfg.select_margin:
            flow, method, warped, best = np.ascontiguousarray(dense, dtype=np.float32), "dense", warped_dense, d_psnr
    return LabelResult(flow, method, best, ssim(warped, gt), psnr(image, gt), ssim(image, gt))


# --------------------------------------------------------------------------- datasets
class LabelReport(ScoreTable):
    """Per-image rows of a labelling run and their means: a :class:`~stablemotion.core.metrics.ScoreTable`
    whose means skip infinite values (an image already aligned scores inf dB), with the run's ``seconds``.

    Example:
        >>> rep = LabelReport(rows=[{"name": "a", "psnr": 30.0, "ssim": 0.9}, {"name": "b", "psnr": math.inf}])
        >>> rep.mean_psnr, rep.summary()["labelled"]
        (30.0, 2)
    """

    finite_means = True

    def summary(self) -> dict[str, object]:
        labelled = [r for r in self.rows if not r.get("skipped")]
        return {
            "images": len(self.rows),
            "labelled": len(labelled),
            "skipped": len(self.rows) - len(labelled),
            "mean_psnr": self.mean_psnr,
            "mean_ssim": self.mean_ssim,
            "mean_identity_psnr": self.mean_identity_psnr,
            "mean_identity_ssim": self.mean_identity_ssim,
            "dense_chosen": sum(1 for r in self.rows if r.get("method") == "dense"),
            "seconds": self.seconds,
        }

    def write(self, csv_path: PathLike, json_path: PathLike | None = None) -> None:
        """Write per-image rows as CSV (and the summary as JSON), atomically."""
        keys = ["name", "psnr", "ssim", "identity_psnr", "identity_ssim", "method", "skipped", "seconds"]
        with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
            writer.writeheader()
            for row in sorted(self.rows, key=lambda r: str(r["name"])):
                writer.writerow({k: (f"{row[k]:.4f}" if isinstance(row.get(k), float) else row.get(k)) for k in keys})
        if json_path is not None:
            with atomic_path(json_path) as tmp:
                tmp.write_text(json.dumps(self.summary(), indent=2) + "\n")


@dataclass(frozen=True)
class _LabelJob:
    name: str
    image: str
    gt: str
    mask: str | None
    out: str
    skip: bool
    config: LabelConfig


def label_pair(job: _LabelJob) -> dict[str, object]:
    """Label (or, with ``job.skip``, only score the existing flow of) one pair; a report row."""
    start = time.perf_counter()
    image, gt = load_image(job.image), load_image(job.gt)
    if image.shape != gt.shape:
        raise ValueError(f"{job.name}: input {job.image} and gt {job.gt} differ in size")
    if job.skip:
        flow = read_flow(job.out)
        if flow.shape[:2] != gt.shape[:2]:
            raise ValueError(f"{job.name}: existing flow {job.out} is {flow.shape[1]}x{flow.shape[0]}, images are "
                             f"{gt.shape[1]}x{gt.shape[0]}; delete it or pass overwrite")
        p, s = _scores(image, gt, flow, job.config.padding)
        return {"name": job.name, "psnr": p, "ssim": s, "identity_psnr": psnr(image, gt),
                "identity_ssim": ssim(image, gt), "method": "existing", "skipped": True,
                "seconds": time.perf_counter() - start}
    mask = np.where(mask_valid(load_image(job.mask, mode="mask")), 255, 0).astype(np.uint8) if job.mask else None
    res = estimate_flow(image, gt, mask, job.config)
    write_flow(job.out, res.flow)
    return {"name": job.name, "psnr": res.psnr, "ssim": res.ssim, "identity_psnr": res.identity_psnr,
            "identity_ssim": res.identity_ssim, "method": res.method, "skipped": False,
            "seconds": time.perf_counter() - start}


def _init_worker() -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def _resolve_pairs(dataset: Path, split: str | None) -> tuple[Path, PairedFolderDataset]:
    candidates = [dataset / split] if split else []
    candidates += [dataset, dataset / "training"]
    for d in candidates:
        if (d / "input").is_dir() and (d / "gt").is_dir():
            folders = {"image": d / "input", "gt": d / "gt"}
            if (d / "mask").is_dir():
                folders["mask"] = d / "mask"
            return d, PairedFolderDataset(folders, None, mask_keys=("mask",))
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"no input/ and gt/ folders found (looked in {tried})")


def label_flows(
    dataset: PathLike,
    out: PathLike,
    split: str | None = None,
    config: LabelConfig | None = None,
    workers: int = 2,
    overwrite: bool = False,
    limit: int | None = None,
    progress: Callable[[Iterable[dict[str, object]], int], Iterable[dict[str, object]]] | None = None,
    report: PathLike | None = None,
) -> LabelReport:
    """Write a pseudo flow ``OUT/STEM.npy`` for every (input, gt) pair of a dataset.

    Args:
        dataset: a folder with ``input/`` and ``gt/`` (and optionally ``mask/``), or a
            DIR-D root (``split`` picks the split; default ``training``).
        out: flow folder (created); flows are (H, W, 2) float32 ``.npy``, pixels.
        split: split folder name inside ``dataset``.
        config: :class:`LabelConfig`.
        workers: processes; 1 runs in this process.
        overwrite: re-label pairs whose flow exists (default: skip them, only scoring them).
        limit: label only the first ``limit`` pairs (by name).
        progress: called as ``progress(iterator, total)`` on the finished report rows;
            e.g. ``lambda it, n: tqdm(it, total=n)``.
        report: CSV path of the per-image report (default ``OUT/labelling_report.csv``; a
            JSON summary is written next to it).

    Returns:
        :class:`LabelReport`.
    """
    cfg = config or LabelConfig()
    root, pairs = _resolve_pairs(Path(dataset), split)
    out_p = Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    names = pairs.names if limit is None else pairs.names[: max(0, int(limit))]
    jobs = []
    for name in names:
        files = pairs.files[name]
        target = out_p / f"{name}.npy"
        jobs.append(_LabelJob(name, str(files["image"]), str(files["gt"]),
                              str(files["mask"]) if "mask" in files else None, str(target),
                              target.is_file() and not overwrite, cfg))
    start = time.perf_counter()
    if workers <= 1 or len(jobs) <= 1:
        results: Iterable[dict[str, object]] = map(label_pair, jobs)
        if progress is not None:
            results = progress(results, len(jobs))
        rows = list(results)
    else:
        with pool_context().Pool(min(workers, len(jobs)), initializer=_init_worker) as pool:
            results = pool.imap_unordered(label_pair, jobs, chunksize=1)
            if progress is not None:
                results = progress(results, len(jobs))
            rows = list(results)
    rep = LabelReport(rows=sorted(rows, key=lambda r: str(r["name"])), seconds=time.perf_counter() - start)
    csv_path = Path(report) if report is not None else out_p / REPORT_NAME
    rep.write(csv_path, csv_path.with_suffix(".json"))
    return rep


def config_to_dict(config: LabelConfig) -> dict[str, object]:
    """The config as a plain dict (for reports)."""
    return asdict(config)

"""Image-quality metrics of the rectification protocol.

* :func:`psnr` / :func:`ssim` reproduce the released evaluation bit-for-bit: scikit-image
  on uint8 (H, W, 3) images, ``data_range=255``, SSIM with ``channel_axis=2`` and the
  default 7x7 uniform window, whole image, no mask.
* :func:`psnr_torch` / :func:`ssim_torch` are batched torch versions of the same formulas
  for training-time validation (agree with scikit-image to ~1e-6 in float64).
* :func:`epe` is the one end-point error of the package on (H, W, 2) numpy flows, over all
  pixels or the valid region (it calls :func:`stablemotion.core.flow.end_point_error`).
* :func:`score_pair` scores one (output, gt[, flow, gt flow]) pair with a protocol's metrics;
  :class:`ScoreTable` holds per-image rows and their means: the one result table of
  ``stablemotion evaluate``, labelling's report, the benchmarks and the tasks
  (:mod:`stablemotion.evaluation.score` scores whole sets into it).
* :func:`evaluate_folder` scores a folder of results against a folder of ground truths.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ..io.images import SIDE_FILE_SUFFIXES, PathLike, atomic_path, list_images, load_image

__all__ = [
    "psnr",
    "ssim",
    "psnr_torch",
    "ssim_torch",
    "epe",
    "EPE_REGIONS",
    "score_pair",
    "SCORE_FIELDS",
    "ScoreTable",
    "EvaluationResult",
    "evaluate_folder",
    "evaluate_pairs",
    "match_folders",
    "SIDE_FILE_SUFFIXES",
]

# Stem suffixes of the side files `stablemotion rectify` writes next to each result NAME.png:
# NAME_flow.png (+ NAME_flow.npy/.flo), NAME_mask.png, NAME_uncertainty.png (+ .npy).

_SSIM_WIN = 7
_SSIM_K1, _SSIM_K2 = 0.01, 0.03


def _check_uint8_pair(pred: np.ndarray, target: np.ndarray, what: str = "") -> None:
    for name, arr in (("prediction", pred), ("ground truth", target)):
        if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8:
            got = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
            raise ValueError(f"{name}{what} must be a uint8 array (H, W, 3) as in the released protocol, got {got}")
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"{name}{what} must have shape (H, W, 3), got {arr.shape}")
    if pred.shape != target.shape:
        raise ValueError(f"prediction{what} shape {pred.shape} differs from ground truth {target.shape}")


def psnr(pred: np.ndarray, target: np.ndarray) -> float:
    """PSNR in dB of uint8 (H, W, 3) images, data range 255 (scikit-image). ``inf`` when equal.

    Example:
        >>> a = np.zeros((8, 8, 3), np.uint8)
        >>> round(psnr(a + 1, a), 2)
        48.13
        >>> psnr(a, a)
        inf
    """
    _check_uint8_pair(pred, target)
    if np.array_equal(pred, target):
        return math.inf
    return float(peak_signal_noise_ratio(target, pred, data_range=255))


def ssim(pred: np.ndarray, target: np.ndarray) -> float:
    """SSIM in [-1, 1] of uint8 (H, W, 3) images (H, W >= 7): scikit-image, data range 255, 7x7 uniform
    window, channel_axis=2, whole image, no mask (the released settings).

    Example:
        >>> a = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
        >>> ssim(a, a)
        1.0
    """
    _check_uint8_pair(pred, target)
    return float(structural_similarity(target, pred, data_range=255, channel_axis=2))


#: Regions EPE may be taken over: every pixel, or where the gt flow samples inside the input.
EPE_REGIONS = ("all", "valid")


def epe(flow: np.ndarray, flow_gt: np.ndarray, region: str = "all") -> float:
    """Mean end-point error in pixels between (H, W, 2) flows (x, y displacements in pixels).

    ``region="valid"`` averages only where the gt flow samples inside the image
    (:func:`stablemotion.core.flow.valid_mask`; all pixels when none is valid). The per-pixel
    error is :func:`stablemotion.core.flow.end_point_error` (the torch version training uses).

    Example:
        >>> gt = np.zeros((4, 5, 2), np.float32)
        >>> epe(gt + np.array([3.0, 4.0], np.float32), gt)
        5.0
        >>> gt[:, :1, 0] = -9.0  # the first column looks outside the frame
        >>> epe(gt + np.array([3.0, 4.0], np.float32), gt, region="valid")
        5.0
    """
    from .flow import end_point_error, valid_mask

    if region not in EPE_REGIONS:
        raise ValueError(f"EPE region must be one of {EPE_REGIONS}, got {region!r}")
    f, g = np.asarray(flow), np.asarray(flow_gt)
    if f.shape != g.shape or f.ndim != 3 or f.shape[-1] != 2:
        raise ValueError(f"flows must both be (H, W, 2), got {f.shape} and {g.shape}")
    ft = torch.from_numpy(np.ascontiguousarray(f, np.float32)).permute(2, 0, 1)[None]
    gt = torch.from_numpy(np.ascontiguousarray(g, np.float32)).permute(2, 0, 1)[None]
    mask = None
    if region == "valid":
        keep = valid_mask(gt[0])
        mask = keep[None] if bool(keep.any()) else None
    return float(end_point_error(ft, gt, mask)[0])


#: Columns of a :class:`ScoreTable` in their CSV order (after ``name``), each present when scored.
SCORE_FIELDS = ("name", "psnr", "ssim", "epe", "identity_psnr", "identity_ssim", "identity_epe", "seconds")


def score_pair(output: np.ndarray, gt: np.ndarray, flow: np.ndarray | None = None, flow_gt: np.ndarray | None = None,
               metrics: Sequence[str] = ("psnr", "ssim", "epe"), epe_region: str = "all") -> dict[str, float]:
    """Score one result: PSNR (dB) / SSIM of uint8 (H, W, 3) ``output`` against ``gt``, and EPE (pixels,
    :func:`epe` over ``epe_region``) of the (H, W, 2) ``flow`` against ``flow_gt`` when both are given.

    Returns:
        ``{metric: value}`` for the ``metrics`` the arguments allow.

    Example:
        >>> gt = np.zeros((8, 8, 3), np.uint8)
        >>> flow_gt = np.zeros((8, 8, 2), np.float32)
        >>> score_pair(gt, gt, flow_gt + np.array([3.0, 4.0], np.float32), flow_gt, metrics=("psnr", "epe"))
        {'psnr': inf, 'epe': 5.0}
    """
    out: dict[str, float] = {}
    if "psnr" in metrics:
        out["psnr"] = psnr(output, gt)
    if "ssim" in metrics:
        out["ssim"] = ssim(output, gt)
    if "epe" in metrics and flow is not None and flow_gt is not None:
        out["epe"] = epe(flow, flow_gt, epe_region)
    return out


def _check_torch_pair(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.ndim == 3:
        pred, target = pred.unsqueeze(0), target.unsqueeze(0)
    if pred.ndim != 4 or pred.shape != target.shape:
        raise ValueError(f"expected two (B, C, H, W) tensors of the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    return pred, target


def psnr_torch(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Batched PSNR in dB.

    Args:
        pred, target: (B, C, H, W); ``data_range`` is max - min of the value range
            (2.0 for images in [-1, 1], 255 for uint8 values).

    Returns:
        (B,) float64; ``inf`` for identical samples.
    """
    pred, target = _check_torch_pair(pred, target)
    mse = (pred.double() - target.double()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(data_range**2 / mse)


def ssim_torch(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Batched SSIM with scikit-image's defaults (7x7 uniform window, sample covariance).

    The mean is taken over the pixels whose window lies inside the image (scikit-image
    crops the same 3-pixel border) and then over channels, as ``channel_axis=2`` does.

    Args:
        pred, target: (B, C, H, W), H and W >= 7; ``data_range`` as in :func:`psnr_torch`.

    Returns:
        (B,) float64.
    """
    pred, target = _check_torch_pair(pred, target)
    if min(pred.shape[-2:]) < _SSIM_WIN:
        raise ValueError(f"SSIM needs images of at least {_SSIM_WIN}x{_SSIM_WIN}, got {tuple(pred.shape[-2:])}")
    x, y = pred.double(), target.double()
    b, c, h, w = x.shape
    n = _SSIM_WIN * _SSIM_WIN

    def mean_filter(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t.reshape(b * c, 1, h, w), _SSIM_WIN, stride=1)

    ux, uy = mean_filter(x), mean_filter(y)
    cov_norm = n / (n - 1)
    vx = cov_norm * (mean_filter(x * x) - ux * ux)
    vy = cov_norm * (mean_filter(y * y) - uy * uy)
    vxy = cov_norm * (mean_filter(x * y) - ux * uy)
    c1 = (_SSIM_K1 * data_range) ** 2
    c2 = (_SSIM_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.view(b, c, -1).mean(-1).mean(-1)


@dataclass
class ScoreTable:
    """Per-image scores and their means: the one result table of every scorer.

    ``rows``: one dict per image, ``{"name", "psnr" (dB), "ssim", "epe" (pixels), "identity_*"
    (the input scored as the result), "seconds"}`` as scored (see :data:`SCORE_FIELDS`; other keys
    are kept). ``method``, ``settings`` and ``extra`` (e.g. ``{"fid": {...}}``) describe the run;
    ``seconds`` is its total time. Means skip missing and NaN values.

    Example:
        >>> t = ScoreTable([{"name": "a", "psnr": 30.0, "ssim": 0.9}, {"name": "b", "psnr": 20.0, "ssim": 0.7}])
        >>> t.mean_psnr, round(t.mean_ssim, 3), len(t)
        (25.0, 0.8, 2)
        >>> math.isnan(t.mean_epe)
        True
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    method: str = "StableMotion"
    settings: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    #: Whether means also skip infinite values (labelling's report does: identical images give inf dB).
    finite_means: ClassVar[bool] = False

    def __len__(self) -> int:
        return len(self.rows)

    def mean(self, key: str) -> float:
        """Mean of column ``key`` over the rows that have a number there (NaN when none)."""
        vals = [float(r[key]) for r in self.rows if isinstance(r.get(key), (int, float)) and not isinstance(r[key], bool)]
        vals = [v for v in vals if (math.isfinite(v) if self.finite_means else not math.isnan(v))]
        return float(np.mean(vals)) if vals else math.nan

    @property
    def means(self) -> dict[str, float]:
        """``{column: mean}`` for every score column of :data:`SCORE_FIELDS`."""
        return {k: self.mean(k) for k in SCORE_FIELDS[1:]}

    @property
    def mean_psnr(self) -> float:
        return self.mean("psnr")

    @property
    def mean_ssim(self) -> float:
        return self.mean("ssim")

    @property
    def mean_epe(self) -> float:
        return self.mean("epe")

    @property
    def mean_identity_psnr(self) -> float:
        return self.mean("identity_psnr")

    @property
    def mean_identity_ssim(self) -> float:
        return self.mean("identity_ssim")

    @property
    def seconds_per_image(self) -> float:
        return self.mean("seconds")

    def columns(self) -> list[str]:
        """The :data:`SCORE_FIELDS` some row has (at least name, psnr, ssim)."""
        return [f for f in SCORE_FIELDS if any(f in r for r in self.rows)] or ["name", "psnr", "ssim"]

    def write_csv(self, path: PathLike, with_mean: bool = True) -> Path:
        """Write the rows' score columns (6 decimals, NaN empty) and a final ``mean`` row, atomically."""
        fields = self.columns()
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(fields)
            for r in self.rows:
                writer.writerow([_fmt(r.get(k, math.nan)) for k in fields])
            if with_mean and self.rows:
                writer.writerow(["mean"] + [_fmt(self.mean(k)) for k in fields[1:]])
        return Path(path)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6f}"
    return str(v)


#: The folder scorer's result (now :class:`ScoreTable`; the old name keeps working).
EvaluationResult = ScoreTable


def evaluate_pairs(
    pairs: Iterable[tuple[str, PathLike, PathLike]],
    progress: Callable[[Iterable], Iterable] | None = None,
) -> EvaluationResult:
    """Score ``(name, result_path, gt_path)`` pairs with :func:`psnr` and :func:`ssim`."""
    pairs = list(pairs)
    result = EvaluationResult()
    it = progress(pairs) if progress is not None else pairs
    for name, pred_path, gt_path in it:
        pred, gt = load_image(pred_path), load_image(gt_path)
        if pred.shape != gt.shape:
            raise ValueError(
                f"size mismatch for {name!r}: result {pred_path} is {pred.shape[1]}x{pred.shape[0]}, "
                f"ground truth {gt_path} is {gt.shape[1]}x{gt.shape[0]} (W x H)"
            )
        result.rows.append({"name": name, **score_pair(pred, gt, metrics=("psnr", "ssim"))})
    return result


def match_folders(
    results_dir: PathLike, gt_dir: PathLike, strict: bool = True
) -> tuple[dict[str, Path], dict[str, Path], list[str]]:
    """Pair result images with ground truths by file stem.

    Returns ``(results, gts, common)``: stem -> path maps of both folders and the sorted
    common stems. With ``strict`` a ground truth without result, or a result without
    ground truth, raises ``ValueError`` naming them; there must be at least one pair.

    ``rectify``'s side files in the results folder are not results: a stem
    ``NAME<suffix>`` (suffix in :data:`SIDE_FILE_SUFFIXES`, e.g. ``NAME_flow.png``) is left
    out when ``NAME`` is a result too and ``NAME<suffix>`` is not a ground-truth name.
    """
    results, gts = list_images(results_dir), list_images(gt_dir)
    results = {
        stem: path for stem, path in results.items()
        if stem in gts or not any(stem.endswith(sfx) and stem[: -len(sfx)] in results for sfx in SIDE_FILE_SUFFIXES)
    }
    missing = sorted(set(gts) - set(results))
    extra = sorted(set(results) - set(gts))

    def preview(names: list[str]) -> str:
        return ", ".join(names[:5]) + (f" ... ({len(names)} in all)" if len(names) > 5 else "")

    if strict and (missing or extra):
        msgs = []
        if missing:
            msgs.append(f"no result in {results_dir} for ground truth {preview(missing)}")
        if extra:
            msgs.append(f"no ground truth in {gt_dir} for result {preview(extra)}")
        raise ValueError("; ".join(msgs) + " (files are matched by name without extension)")
    common = sorted(set(results) & set(gts))
    if not common:
        raise ValueError(f"no images with matching names in {results_dir} and {gt_dir}")
    return results, gts, common


def evaluate_folder(
    results_dir: PathLike,
    gt_dir: PathLike,
    strict: bool = True,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> EvaluationResult:
    """Evaluate every result image against the ground truth with the same file stem.

    Args:
        results_dir: folder of rectified images (any common image extension).
        gt_dir: folder of ground-truth images.
        strict: raise ``ValueError`` when a ground truth has no result or a result has no
            ground truth; with ``strict=False`` only the common stems are scored (at least one).
        progress: optional wrapper such as ``tqdm`` for a progress bar.

    Returns:
        :class:`EvaluationResult` with rows sorted by name.
    """
    results, gts, common = match_folders(results_dir, gt_dir, strict=strict)
    return evaluate_pairs(((n, results[n], gts[n]) for n in common), progress=progress)

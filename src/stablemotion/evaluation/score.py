"""Scoring: a set of (output, gt[, flow, gt flow]) pairs into one :class:`ScoreTable`.

* :func:`score` scores :class:`ScoreItem` s (arrays or image / ``.npy`` paths) with a task's
  metrics and EPE region (:class:`~stablemotion.tasks.EvalProtocol`), and the identity baseline
  (the input itself scored as the result; a zero flow for EPE) when the item has its input.
* :func:`score_shard` / :func:`merge_shards` score the results of an evaluation run and write
  ``per_image.csv``, ``summary.md`` and ``summary.json``; :func:`score_folders` scores any
  method's results folder against a gt folder.

The primitives are :func:`stablemotion.core.metrics.psnr` / :func:`~stablemotion.core.metrics.ssim`
(scikit-image on uint8, full resolution, no mask: the released protocol) and
:func:`~stablemotion.core.metrics.epe` (mean end-point error, pixels).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.metrics import SCORE_FIELDS, ScoreTable, epe, match_folders, score_pair
from ..io.images import PathLike, atomic_path, list_images, load_image
from ..tasks import EvalProtocol
from .protocol import EvalSet

__all__ = [
    "ScoreTable",
    "EvalSummary",
    "ScoreItem",
    "score",
    "score_item",
    "ROW_FIELDS",
    "score_shard",
    "merge_shards",
    "score_folders",
    "write_rows_csv",
    "summary_markdown",
]

#: The result table of ``stablemotion evaluate`` (now :class:`ScoreTable`; the old name keeps working).
EvalSummary = ScoreTable
#: Columns of ``per_image.csv`` (:data:`stablemotion.core.metrics.SCORE_FIELDS`).
ROW_FIELDS = SCORE_FIELDS

ArrayOrPath = np.ndarray | PathLike


@dataclass
class ScoreItem:
    """One pair to score: ``output`` / ``gt`` uint8 (H, W, 3) images (or image paths); optional
    ``flow`` / ``flow_gt`` (H, W, 2) float pixels (or ``.npy`` paths); optional ``input`` image
    for the identity baseline."""

    name: str
    output: ArrayOrPath
    gt: ArrayOrPath
    flow: ArrayOrPath | None = None
    flow_gt: ArrayOrPath | None = None
    input: ArrayOrPath | None = None


def _image(a: ArrayOrPath) -> np.ndarray:
    return a if isinstance(a, np.ndarray) else load_image(a)


def _flow(a: ArrayOrPath | None, size: tuple[int, int] | None = None) -> np.ndarray | None:
    """A (H, W, 2) float32 flow; resampled to ``size`` (H, W) with its vectors rescaled when it differs."""
    if a is None:
        return None
    f = np.asarray(a if isinstance(a, np.ndarray) else np.load(a), np.float32)
    if size is not None and f.shape[:2] != tuple(size):
        import torch

        from ..core.flow import resize_flow

        f = resize_flow(torch.from_numpy(f).permute(2, 0, 1)[None], size)[0].permute(1, 2, 0).numpy()
    return f


def score_item(item: ScoreItem, metrics: Sequence[str] = ("psnr", "ssim", "epe"), epe_region: str = "all",
               identity: bool = True) -> dict[str, Any]:
    """One row: ``name`` and the ``metrics`` of ``item`` (EPE at the gt flow's size), plus
    ``identity_*`` when ``identity`` and the item has its input (NaN when its size differs from the gt's).

    Example:
        >>> gt = np.zeros((8, 8, 3), np.uint8)
        >>> row = score_item(ScoreItem("a", gt, gt, flow=np.ones((8, 8, 2)), flow_gt=np.zeros((8, 8, 2)), input=gt))
        >>> row["psnr"], row["identity_epe"], round(row["epe"], 4)
        (inf, 0.0, 1.4142)
    """
    pred, gt = _image(item.output), _image(item.gt)
    if pred.shape != gt.shape:
        where = "" if isinstance(item.output, np.ndarray) else f" {item.output}"
        raise ValueError(f"size mismatch for {item.name!r}: result{where} is {pred.shape[1]}x{pred.shape[0]}, "
                         f"ground truth is {gt.shape[1]}x{gt.shape[0]} (W x H)")
    flow_gt = _flow(item.flow_gt)
    flow = _flow(item.flow, None if flow_gt is None else flow_gt.shape[:2])
    row: dict[str, Any] = {"name": item.name, **score_pair(pred, gt, flow, flow_gt, metrics, epe_region)}
    if "epe" in metrics and flow_gt is not None and "epe" not in row:
        row["epe"] = math.nan  # the set has gt flows but this result has none
    if not identity or item.input is None:
        return row
    image = _image(item.input)
    image_metrics = [m for m in metrics if m != "epe"]
    same = image.shape == gt.shape
    ident = score_pair(image, gt, metrics=image_metrics) if same else dict.fromkeys(image_metrics, math.nan)
    row.update({f"identity_{k}": v for k, v in ident.items()})
    if "epe" in metrics and flow_gt is not None:
        row["identity_epe"] = epe(np.zeros_like(flow_gt), flow_gt, epe_region)
    return row


def score(items: Iterable[ScoreItem], protocol: EvalProtocol | None = None, method: str = "StableMotion",
          identity: bool = True, progress: Callable[[Iterable], Iterable] | None = None) -> ScoreTable:
    """Score a set of pairs with ``protocol``'s metrics and EPE region (default: PSNR, SSIM, EPE on all pixels).

    Returns:
        A :class:`ScoreTable`, one row per item (:func:`score_item`) in the given order.

    Example:
        >>> gt = np.zeros((8, 8, 3), np.uint8)
        >>> f = np.zeros((8, 8, 2), np.float32)
        >>> table = score([ScoreItem("a", gt, gt, f + np.float32([3, 4]), f), ScoreItem("b", gt, gt, f, f)])
        >>> len(table), table.mean_epe, table.mean_psnr
        (2, 2.5, inf)
    """
    protocol = protocol or EvalProtocol()
    items = list(items)
    it = progress(items) if progress is not None else items
    rows = [score_item(i, protocol.metrics, protocol.epe_region, identity) for i in it]
    return ScoreTable(rows, method=method)


# --------------------------------------------------------------------------- evaluation runs
def _eval_item(eval_set: EvalSet, out: Path, name: str) -> ScoreItem:
    s = eval_set.get(name)
    flow = out / "flows" / f"{name}.npy"
    return ScoreItem(name, out / "results" / f"{name}.png", s.gt, flow if flow.is_file() else None, s.flow_gt, s.image)


def score_shard(eval_set: EvalSet, out: PathLike, names: Sequence[str], rank: int = 0,
                progress: Callable[[Iterable], Iterable] | None = None) -> Path:
    """Score the results of ``names`` by ``eval_set.protocol`` and write ``OUT/shards/rank{rank}.csv``.

    EPE is scored where ``OUT/flows/NAME.npy`` and the gt flow exist. Raises ``ValueError`` naming
    the images whose result is missing.
    """
    out = Path(out)
    missing = [n for n in names if not (out / "results" / f"{n}.png").is_file()]
    if missing:
        raise ValueError(f"no result in {out / 'results'} for {', '.join(missing[:5])}"
                         f"{f' ... ({len(missing)} in all)' if len(missing) > 5 else ''}")
    table = score((_eval_item(eval_set, out, n) for n in names), eval_set.protocol, progress=progress)
    return write_rows_csv(table.rows, out / "shards" / f"rank{rank}.csv", with_mean=False)


def write_rows_csv(rows: Sequence[dict[str, Any]], path: PathLike, with_mean: bool = True) -> Path:
    """Write per-image rows (:data:`ROW_FIELDS`) and optionally a ``mean`` row, atomically."""
    return ScoreTable(list(rows)).write_csv(path, with_mean=with_mean)


def _read_rows_csv(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, newline="") as f:
        for rec in csv.DictReader(f):
            if rec["name"] == "mean":
                continue
            rows.append({k: (rec[k] if k == "name" else (float(rec[k]) if rec[k] != "" else math.nan)) for k in rec})
    return rows


def _read_timings(out: Path) -> dict[str, float]:
    times: dict[str, float] = {}
    folder = out / "timings"
    if not folder.is_dir():
        return times
    for path in sorted(folder.glob("rank*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
                times[str(rec["name"])] = float(rec["seconds"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # a line cut by a crash
    return times


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4f}"
    return str(v) if isinstance(v, (int, float)) else "n/a"


def summary_markdown(summary: ScoreTable, title: str = "Evaluation") -> str:
    """The paper's table layout: one row for the input (identity) and one for the method
    (EPE in pixels when the rows have it)."""
    m = summary.means
    with_epe = any("epe" in r for r in summary.rows)
    extra_cols = [k for k in ("fid", "lpips") if k in summary.extra]
    head = ["method", "PSNR (dB) ↑", "SSIM ↑"] + (["EPE (px) ↓"] if with_epe else [])
    head += [{"fid": "FID ↓", "lpips": "LPIPS ↓"}[k] for k in extra_cols] + ["images", "s / image"]
    lines = [f"# {title}", ""]
    if summary.settings:
        lines += ["Settings: " + ", ".join(f"{k}={v}" for k, v in summary.settings.items()), ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    n = len(summary.rows)
    for label, prefix, seconds in (("Input (identity)", "identity_", "-"), (summary.method, "", _cell(m["seconds"]))):
        cells = [label, _cell(m[prefix + "psnr"]), _cell(m[prefix + "ssim"])] + ([_cell(m[prefix + "epe"])] if with_epe else [])
        key = "identity" if prefix else "method"
        cells += [_cell(summary.extra[k].get(key)) if isinstance(summary.extra[k], dict) else "n/a" for k in extra_cols]
        lines.append("| " + " | ".join([*cells, str(n), seconds]) + " |")
    notes = [f"- {k.upper()}: {v['note']}" for k, v in summary.extra.items() if isinstance(v, dict) and v.get("note")]
    if notes:
        lines += ["", *notes]
    lines += ["", "PSNR/SSIM: scikit-image on uint8 images, data range 255, SSIM 7x7 window, channel_axis=2, "
              "whole image at full resolution, no mask (the released protocol); per-image values in per_image.csv."]
    if with_epe:
        region = summary.settings.get("epe_region", "all")
        lines.append(f"EPE: mean end-point error of the flow against the gt flow in pixels, at the gt flow's size, "
                     f"over {'the valid region' if region == 'valid' else 'all pixels'}; identity = a zero flow.")
    return "\n".join(lines) + "\n"


def merge_shards(out: PathLike, names: Sequence[str], settings: dict[str, Any] | None = None,
                 method: str = "StableMotion", extra: dict[str, Any] | None = None) -> ScoreTable:
    """Merge ``OUT/shards/*.csv`` into ``per_image.csv``, ``summary.md`` and ``summary.json``.

    Raises ``ValueError`` when an image of ``names`` has no scored row (a shard failed).
    """
    out = Path(out)
    rows: dict[str, dict[str, Any]] = {}
    for path in sorted((out / "shards").glob("rank*.csv")):
        for r in _read_rows_csv(path):
            rows[r["name"]] = r
    missing = [n for n in names if n not in rows]
    if missing:
        raise ValueError(f"merging {out / 'shards'}: no scores for {', '.join(missing[:5])} ({len(missing)} in all)")
    times = _read_timings(out)
    merged = [{**rows[n], "seconds": times.get(n, math.nan)} for n in sorted(names)]
    summary = ScoreTable(merged, method=method, settings=settings or {}, extra=extra or {})
    write_rows_csv(merged, out / "per_image.csv")
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(summary_markdown(summary))
    keys = ("psnr", "ssim", "identity_psnr", "identity_ssim", "seconds")
    means = {k: v for k, v in summary.means.items() if k in keys or k in summary.columns()}
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps({"method": method, "settings": summary.settings, "images": len(merged),
                                   "means": means, "extra": summary.extra}, indent=1, default=str))
    return summary


def score_folders(results: PathLike, gt: PathLike, inputs: PathLike | None = None, strict: bool = True) -> ScoreTable:
    """Score any method's results folder against a gt folder (files matched by stem).

    With ``inputs`` the identity baseline (input vs gt) is scored on the same images.
    """
    res, gts, common = match_folders(results, gt, strict=strict)
    ins = list_images(inputs) if inputs is not None else {}
    if inputs is not None:
        lacking = [n for n in common if n not in ins]
        if lacking:
            raise ValueError(f"no input in {inputs} for {', '.join(lacking[:5])} (needed for the identity baseline)")
    items = (ScoreItem(n, res[n], gts[n], input=ins.get(n)) for n in common)
    table = score(items, EvalProtocol(metrics=("psnr", "ssim")), identity=inputs is not None)
    table.method = str(Path(results).resolve().name)
    return table

"""Evaluation of a StableMotion pipeline on a test split, and the paper's two studies.

* :func:`open_eval_set` reads a DIR-D, RS-Real or task-folder test split (or a synthetic one
  written by :mod:`stablemotion.data.synth`) as uint8 images: ``image`` (H, W, 3), optional
  ``mask`` (H, W) (255 = content), ``gt`` (H, W, 3).
* :func:`run_inference` rectifies every image of one shard into ``OUT/results/NAME.png``
  (atomic writes; finished images are skipped, so an interrupted run resumes), and
  appends each image's inference time to ``OUT/timings/rankR.jsonl``.
* :func:`score_shard` / :func:`merge_shards` score the results by the released protocol
  (:func:`stablemotion.core.metrics.psnr` / :func:`~stablemotion.core.metrics.ssim`: scikit-image on
  uint8, full resolution, no mask) together with the identity baseline (the input itself
  against the gt) on the same images, and write ``per_image.csv``, ``summary.md`` and
  ``summary.json``.
* :func:`evaluate` runs the three for one process; under ``accelerate launch`` each
  process takes every ``world``-th image and the main process merges the shards.
* :func:`optional_metrics` adds FID (pytorch-fid) / LPIPS when their packages and weights
  are available offline, and otherwise says exactly what is missing.
* :func:`study_steps` / :func:`study_ensemble` reproduce the Sampling Steps Disaster curve
  and the AES ablation (CSV, markdown, PNG).

Per-image seeding: each image's noise comes from ``torch.Generator().manual_seed(seed)``,
as ``stablemotion rectify`` does, so results do not depend on sharding or resuming.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..core.metrics import match_folders, psnr, ssim
from ..io.images import PathLike, atomic_path, list_images, load_image, save_image, tensor_to_image

if TYPE_CHECKING:
    from ..model.pipeline import StableMotionPipeline

__all__ = [
    "EvalSample",
    "EvalSet",
    "EvalSettings",
    "EvalSummary",
    "open_eval_set",
    "shard_names",
    "run_inference",
    "score_shard",
    "merge_shards",
    "evaluate",
    "score_folders",
    "optional_metrics",
    "write_rows_csv",
    "summary_markdown",
    "StudyResult",
    "study_steps",
    "study_ensemble",
    "STEPS_DEFAULT",
    "ENSEMBLE_SIZES_DEFAULT",
]

#: DDIM step counts of the Sampling Steps Disaster study.
STEPS_DEFAULT = (1, 2, 4, 8, 16, 50)
#: Ensemble sizes of the AES ablation.
ENSEMBLE_SIZES_DEFAULT = tuple(range(1, 9))
_SETTINGS_FILE = "run.json"


# --------------------------------------------------------------------------- test sets
@dataclass
class EvalSample:
    """One test image, uint8 arrays.

    ``image`` (H, W, 3); ``mask`` (H, W, 3) or (H, W), white = content, exactly as the
    file reads (the pipeline applies its own mask encoding), or None; ``gt`` (H, W, 3);
    ``network_image`` (h, w, 3): the released protocol's own network input when the dataset
    stores one (RS-Real: the ``.npz`` ``condition`` at 256x256, while ``image`` is the
    full-resolution ``jpg``), else None.
    """

    name: str
    image: np.ndarray
    mask: np.ndarray | None
    gt: np.ndarray
    network_image: np.ndarray | None = None


class EvalSet:
    """A test split as uint8 samples, addressed by name.

    Wraps :class:`~stablemotion.data.DIRDDataset`, :class:`~stablemotion.data.RSRealDataset`
    (full-resolution ``jpg/`` + ``jpg_gt/`` when present, as the released RSC protocol) or
    :class:`~stablemotion.data.TaskFolderDataset`.
    """

    def __init__(self, dataset: Any, kind: str, full_res: bool = False) -> None:
        self.dataset = dataset
        self.kind = kind
        self.full_res = full_res
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
        return EvalSample(name, image, mask, gt, network_image)


def open_eval_set(root: PathLike, task: str = "sir", split: str | None = None, kind: str = "auto") -> EvalSet:
    """Open a test split.

    Args:
        root: the dataset folder (the DIR-D / RS-Real root, or a split folder).
        task: ``"sir"``, ``"rsc"`` or a registered task (for task folders).
        split: split folder name; default ``"testing"`` for DIR-D and ``"test"`` for RS-Real.
        kind: ``"dird"``, ``"rsreal"``, ``"folder"`` (:class:`~stablemotion.data.TaskFolderDataset`)
            or ``"auto"`` (from the layout: ``npz/`` files mean RS-Real; ``input/`` +
            ``mask/`` mean DIR-D; otherwise a task folder).
    """
    from ..data import DIRDDataset, RSRealDataset, TaskFolderDataset

    root_p = Path(root)
    if not root_p.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root_p}")
    if kind == "auto":
        kind = _detect_kind(root_p, split)
    if kind == "dird":
        ds = DIRDDataset(root_p, split=split or "testing", flow_dir=False)
        return EvalSet(ds, "dird")
    if kind == "rsreal":
        sp = split if split is not None else ("test" if (root_p / "test").is_dir() else None)
        base = root_p / sp if sp is not None and (root_p / sp).is_dir() else root_p
        full = (base / "jpg").is_dir() and (base / "jpg_gt").is_dir()
        ds = RSRealDataset(root_p, split=sp, full_res=full)
        return EvalSet(ds, "rsreal", full_res=full)
    if kind == "folder":
        base = root_p / split if split is not None and (root_p / split).is_dir() else root_p
        return EvalSet(TaskFolderDataset(base, task, flow_dir=False), "folder")
    raise ValueError(f"unknown dataset kind {kind!r}: use auto, dird, rsreal or folder")


def _detect_kind(root: Path, split: str | None) -> str:
    cands = [root / split] if split else []
    cands += [root / "testing", root / "test", root]
    for c in cands:
        if (c / "npz").is_dir() or any(c.glob("*.npz")):
            return "rsreal"
        if (c / "input").is_dir() and (c / "mask").is_dir():
            return "dird"
    return "folder"


def shard_names(names: Sequence[str], rank: int, world: int) -> list[str]:
    """Names of shard ``rank`` of ``world``: every ``world``-th name (sorted order)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"invalid shard {rank} of {world}")
    return sorted(names)[rank::world]


# --------------------------------------------------------------------------- inference
@dataclass
class EvalSettings:
    """Inference settings of an evaluation run (``None`` = the model's default)."""

    steps: int | None = None
    ensemble: int | None = None
    ensemble_mode: str | None = None
    processing_resolution: int | tuple[int, int] | None = None
    decode_scale: int = 1
    seed: int = 0
    dtype: str = "fp32"
    final_step: str | None = None
    flow_regularization: str | None = None
    task: str | None = None  # which task of a multi-task model (None = its default task)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if isinstance(d["processing_resolution"], tuple):
            d["processing_resolution"] = list(d["processing_resolution"])
        return d


def _check_settings(out: Path, settings: EvalSettings, model: str, dataset: str) -> None:
    """Refuse to mix results made with other settings in one folder; record the settings."""
    path = out / _SETTINGS_FILE
    current = {"model": model, "dataset": dataset, "settings": settings.to_json()}
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}); delete it or use a new output folder") from exc
        if saved != current:
            raise ValueError(
                f"{out} holds results of another run ({path}: {saved}) but this run is {current}; "
                "use a new --out folder (or delete the old results) so results are never mixed"
            )
        return
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(current, indent=1))


def run_inference(
    pipe: StableMotionPipeline,
    eval_set: EvalSet,
    out: PathLike,
    settings: EvalSettings,
    names: Sequence[str] | None = None,
    rank: int = 0,
    save_flow: bool = False,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> list[str]:
    """Rectify the images ``names`` (default all) into ``OUT/results/NAME.png``.

    Images whose result already exists are skipped (the resume rule: results are written
    atomically, so an existing file is complete). Each processed image's pipeline time in
    seconds is appended to ``OUT/timings/rank{rank}.jsonl``; with ``save_flow`` the flow
    ((H, W, 2) float32, pixels) goes to ``OUT/flows/NAME.npy``.

    Returns:
        The names processed in this call (skipped ones excluded).
    """
    from ..core.flow import write_flow

    out = Path(out)
    results = out / "results"
    results.mkdir(parents=True, exist_ok=True)
    todo = [n for n in (eval_set.names if names is None else names) if not (results / f"{n}.png").is_file()]
    timings = out / "timings" / f"rank{rank}.jsonl"
    timings.parent.mkdir(parents=True, exist_ok=True)
    device = pipe._execution_device
    spec = pipe.resolve_task(settings.task)
    done = []
    it = progress(todo) if progress is not None else todo
    for name in it:
        sample = eval_set.get(name)
        if "mask" in spec.conditions and sample.mask is None:
            raise ValueError(f"{name}: the {spec.name} model needs a mask but the dataset has none")
        kwargs: dict[str, Any] = {"mask": sample.mask} if "mask" in spec.conditions else {}
        if sample.network_image is not None and settings.processing_resolution is None:
            kwargs["processing_image"] = sample.network_image  # RS-Real: the stored 256x256 condition
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        res = pipe(
            sample.image,
            num_inference_steps=settings.steps,
            ensemble_size=settings.ensemble,
            ensemble_mode=settings.ensemble_mode,
            processing_resolution=settings.processing_resolution,
            decode_scale=settings.decode_scale,
            final_step=settings.final_step,
            flow_regularization=settings.flow_regularization,
            generator=torch.Generator().manual_seed(settings.seed),
            output_type="np",
            show_progress_bar=False,
            task=spec.name,
            **kwargs,
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        save_image((res.image[0] * 255.0).round().astype(np.uint8), results / f"{name}.png")
        if save_flow:
            write_flow(out / "flows" / f"{name}.npy", res.flow[0])
        with open(timings, "a") as f:
            f.write(json.dumps({"name": name, "seconds": seconds}) + "\n")
        done.append(name)
    return done


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


# --------------------------------------------------------------------------- scoring
ROW_FIELDS = ("name", "psnr", "ssim", "identity_psnr", "identity_ssim", "seconds")


def _score_one(name: str, result_path: Path, sample: EvalSample, identity: bool = True) -> dict[str, Any]:
    pred = load_image(result_path)
    if pred.shape != sample.gt.shape:
        raise ValueError(
            f"size mismatch for {name!r}: result {result_path} is {pred.shape[1]}x{pred.shape[0]}, "
            f"ground truth is {sample.gt.shape[1]}x{sample.gt.shape[0]} (W x H)"
        )
    row: dict[str, Any] = {"name": name, "psnr": psnr(pred, sample.gt), "ssim": ssim(pred, sample.gt)}
    if not identity:
        return row
    if sample.image.shape == sample.gt.shape:
        row["identity_psnr"] = psnr(sample.image, sample.gt)
        row["identity_ssim"] = ssim(sample.image, sample.gt)
    else:
        row["identity_psnr"] = row["identity_ssim"] = math.nan
    return row


def score_shard(eval_set: EvalSet, out: PathLike, names: Sequence[str], rank: int = 0,
                progress: Callable[[Iterable], Iterable] | None = None) -> Path:
    """Score the results of ``names`` and write ``OUT/shards/rank{rank}.csv``.

    Raises ``ValueError`` naming the images whose result is missing.
    """
    out = Path(out)
    missing = [n for n in names if not (out / "results" / f"{n}.png").is_file()]
    if missing:
        raise ValueError(f"no result in {out / 'results'} for {', '.join(missing[:5])}"
                         f"{f' ... ({len(missing)} in all)' if len(missing) > 5 else ''}")
    rows = []
    it = progress(list(names)) if progress is not None else names
    for name in it:
        rows.append(_score_one(name, out / "results" / f"{name}.png", eval_set.get(name)))
    return write_rows_csv(rows, out / "shards" / f"rank{rank}.csv", with_mean=False)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6f}"
    return str(v)


def write_rows_csv(rows: Sequence[dict[str, Any]], path: PathLike, with_mean: bool = True) -> Path:
    """Write per-image rows (:data:`ROW_FIELDS`) and optionally a ``mean`` row, atomically."""
    fields = [f for f in ROW_FIELDS if any(f in r for r in rows)] or ["name", "psnr", "ssim"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for r in rows:
            w.writerow([_fmt(r.get(k, math.nan)) for k in fields])
        if with_mean and rows:
            means = _means(rows)
            w.writerow(["mean"] + [_fmt(means.get(k, math.nan)) for k in fields[1:]])
    return Path(path)


def _read_rows_csv(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, newline="") as f:
        for rec in csv.DictReader(f):
            if rec["name"] == "mean":
                continue
            rows.append({k: (rec[k] if k == "name" else (float(rec[k]) if rec[k] != "" else math.nan)) for k in rec})
    return rows


def _means(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    out = {}
    for k in ROW_FIELDS[1:]:
        vals = [r[k] for r in rows if k in r and not math.isnan(r[k])]
        out[k] = float(np.mean(vals)) if vals else math.nan
    return out


@dataclass
class EvalSummary:
    """Merged results of an evaluation: per-image ``rows`` (see :data:`ROW_FIELDS`), means, extras."""

    rows: list[dict[str, Any]]
    method: str = "StableMotion"
    settings: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # {"fid": value or note, ...}

    @property
    def means(self) -> dict[str, float]:
        return _means(self.rows)

    @property
    def mean_psnr(self) -> float:
        return self.means["psnr"]

    @property
    def mean_ssim(self) -> float:
        return self.means["ssim"]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def seconds_per_image(self) -> float:
        return self.means["seconds"]


def summary_markdown(summary: EvalSummary, title: str = "Evaluation") -> str:
    """The paper's table layout: one row for the input (identity) and one for the method."""
    m = summary.means
    extra_cols = [k for k in ("fid", "lpips") if k in summary.extra]
    head = ["method", "PSNR (dB) ↑", "SSIM ↑"] + [{"fid": "FID ↓", "lpips": "LPIPS ↓"}[k] for k in extra_cols]
    head += ["images", "s / image"]

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "n/a" if math.isnan(v) else f"{v:.4f}"
        return str(v) if isinstance(v, (int, float)) else "n/a"

    lines = [f"# {title}", ""]
    if summary.settings:
        lines += ["Settings: " + ", ".join(f"{k}={v}" for k, v in summary.settings.items()), ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    n = len(summary.rows)
    ident = ["Input (identity)", cell(m["identity_psnr"]), cell(m["identity_ssim"])]
    ident += [cell(summary.extra[k].get("identity")) if isinstance(summary.extra[k], dict) else "n/a" for k in extra_cols]
    lines.append("| " + " | ".join([*ident, str(n), "-"]) + " |")
    meth = [summary.method, cell(m["psnr"]), cell(m["ssim"])]
    meth += [cell(summary.extra[k].get("method")) if isinstance(summary.extra[k], dict) else "n/a" for k in extra_cols]
    lines.append("| " + " | ".join([*meth, str(n), cell(m["seconds"])]) + " |")
    notes = [f"- {k.upper()}: {v['note']}" for k, v in summary.extra.items() if isinstance(v, dict) and v.get("note")]
    if notes:
        lines += ["", *notes]
    lines += ["", "PSNR/SSIM: scikit-image on uint8 images, data range 255, SSIM 7x7 window, channel_axis=2, "
              "whole image at full resolution, no mask (the released protocol); per-image values in per_image.csv."]
    return "\n".join(lines) + "\n"


def merge_shards(out: PathLike, names: Sequence[str], settings: dict[str, Any] | None = None,
                 method: str = "StableMotion", extra: dict[str, Any] | None = None) -> EvalSummary:
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
    merged = []
    for n in sorted(names):
        r = dict(rows[n])
        r["seconds"] = times.get(n, math.nan)
        merged.append(r)
    summary = EvalSummary(merged, method=method, settings=settings or {}, extra=extra or {})
    write_rows_csv(merged, out / "per_image.csv")
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text(summary_markdown(summary))
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps({"method": method, "settings": summary.settings, "images": len(merged),
                                   "means": summary.means, "extra": summary.extra}, indent=1, default=str))
    return summary


def evaluate(
    pipe: StableMotionPipeline,
    eval_set: EvalSet,
    out: PathLike,
    settings: EvalSettings | None = None,
    model_name: str = "",
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] | None = None,
    limit: int | None = None,
    save_flow: bool = False,
    extra_metrics: Sequence[str] = (),
    progress: Callable[[Iterable], Iterable] | None = None,
) -> EvalSummary | None:
    """Run, score and merge an evaluation (one process of ``world``).

    Every process rectifies and scores its shard (:func:`shard_names`); after ``barrier``
    (e.g. ``accelerate``'s ``wait_for_everyone``) the main process (``rank == 0``) merges
    the shards and returns the :class:`EvalSummary`; other ranks return ``None``.

    Args:
        limit: evaluate only the first ``limit`` images (sorted names).
        extra_metrics: any of ``"fid"``, ``"lpips"`` (see :func:`optional_metrics`).
    """
    settings = settings or EvalSettings()
    out = Path(out)
    names = sorted(eval_set.names)[: limit if limit else None]
    if rank == 0:
        _check_settings(out, settings, model_name, repr(eval_set.dataset))
    if barrier is not None:
        barrier()
    mine = shard_names(names, rank, world)
    run_inference(pipe, eval_set, out, settings, mine, rank=rank, save_flow=save_flow, progress=progress)
    score_shard(eval_set, out, mine, rank=rank)
    if barrier is not None:
        barrier()
    if rank != 0:
        return None
    extra = optional_metrics(extra_metrics, eval_set, out / "results", names, pipe._execution_device) if extra_metrics else {}
    desc = {k: v for k, v in settings.to_json().items() if v is not None}
    return merge_shards(out, names, settings=desc, extra=extra)


def score_folders(results: PathLike, gt: PathLike, inputs: PathLike | None = None, strict: bool = True) -> EvalSummary:
    """Score any method's results folder against a gt folder (files matched by stem).

    With ``inputs`` the identity baseline (input vs gt) is scored on the same images.
    """
    res, gts, common = match_folders(results, gt, strict=strict)
    ins = list_images(inputs) if inputs is not None else {}
    if inputs is not None:
        lacking = [n for n in common if n not in ins]
        if lacking:
            raise ValueError(f"no input in {inputs} for {', '.join(lacking[:5])} (needed for the identity baseline)")
    rows = []
    for n in common:
        g = load_image(gts[n])
        sample = EvalSample(n, load_image(ins[n]) if n in ins else np.zeros((0, 0, 3), np.uint8), None, g)
        rows.append(_score_one(n, res[n], sample, identity=inputs is not None))
    return EvalSummary(rows, method=str(Path(results).resolve().name))


# --------------------------------------------------------------------------- optional metrics
def _hub_checkpoint(filename: str) -> Path | None:
    p = Path(torch.hub.get_dir()) / "checkpoints" / filename
    return p if p.is_file() else None


FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
LPIPS_BACKBONE = "alexnet-owt-7be5be79.pth"


def optional_metrics(which: Sequence[str], eval_set: EvalSet, results: Path, names: Sequence[str],
                     device: torch.device | str = "cpu") -> dict[str, dict[str, Any]]:
    """FID / LPIPS of the results (and the identity baseline) when available offline.

    Nothing is downloaded: each metric needs its package (``pytorch-fid``, ``lpips``) and its
    network weights already in the torch hub cache (``torch.hub.get_dir()/checkpoints``).
    When something is missing the entry is ``{"note": "<what is missing and how to get it>"}``.

    Returns:
        ``{"fid": {"method": float, "identity": float} | {"note": str}, "lpips": ...}``.
    """
    out: dict[str, dict[str, Any]] = {}
    for m in which:
        if m not in ("fid", "lpips"):
            raise ValueError(f"unknown extra metric {m!r}: use fid or lpips")
        pkg = {"fid": "pytorch_fid", "lpips": "lpips"}[m]
        weights = {"fid": FID_WEIGHTS, "lpips": LPIPS_BACKBONE}[m]
        try:
            module = __import__(pkg)
        except ImportError:
            out[m] = {"note": f"not computed: package {pkg.replace('_', '-')} is not installed "
                              f"(pip install {pkg.replace('_', '-')})"}
            continue
        ckpt = _hub_checkpoint(weights)
        if ckpt is None:
            out[m] = {"note": f"not computed: its weights {weights} are not in {Path(torch.hub.get_dir()) / 'checkpoints'} "
                              "and downloads are disabled; fetch them once on a machine with internet"}
            continue
        try:
            out[m] = _fid(eval_set, results, names, device) if m == "fid" else _lpips(module, eval_set, results, names, device)
        except Exception as exc:  # a broken optional dependency must not lose the PSNR/SSIM results
            out[m] = {"note": f"failed: {type(exc).__name__}: {exc}"}
    return out


def _lpips(module: Any, eval_set: EvalSet, results: Path, names: Sequence[str], device: Any) -> dict[str, Any]:
    net = module.LPIPS(net="alex", verbose=False).to(device).eval()

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).permute(2, 0, 1)[None].float().div(127.5).sub(1).to(device)

    vals, ident = [], []
    with torch.no_grad():
        for n in names:
            s = eval_set.get(n)
            vals.append(float(net(t(load_image(results / f"{n}.png")), t(s.gt))))
            if s.image.shape == s.gt.shape:
                ident.append(float(net(t(s.image), t(s.gt))))
    return {"method": float(np.mean(vals)), "identity": float(np.mean(ident)) if ident else math.nan}


def _fid(eval_set: EvalSet, results: Path, names: Sequence[str], device: Any) -> dict[str, Any]:
    import tempfile

    from pytorch_fid.fid_score import calculate_fid_given_paths

    with tempfile.TemporaryDirectory() as tmp:
        gt_dir, in_dir = Path(tmp) / "gt", Path(tmp) / "input"
        for n in names:
            s = eval_set.get(n)
            save_image(s.gt, gt_dir / f"{n}.png")
            save_image(s.image, in_dir / f"{n}.png")
        dev = str(device)
        fid = calculate_fid_given_paths([str(results), str(gt_dir)], 8, dev, 2048, num_workers=0)
        ident = calculate_fid_given_paths([str(in_dir), str(gt_dir)], 8, dev, 2048, num_workers=0)
    return {"method": float(fid), "identity": float(ident)}


# --------------------------------------------------------------------------- studies
@dataclass
class StudyResult:
    """Rows of a study (dicts), and the files written."""

    rows: list[dict[str, Any]]
    csv: Path
    markdown: Path
    plot: Path


def _write_study(out: Path, stem: str, rows: list[dict[str, Any]], fields: Sequence[str], title: str,
                 note: str, plot: Callable[[Path], None]) -> StudyResult:
    csv_path = out / f"{stem}.csv"
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for r in rows:
            w.writerow([_fmt(r[k]) if isinstance(r[k], float) else r[k] for k in fields])
    md = [f"# {title}", "", note, "", "| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    for r in rows:
        md.append("| " + " | ".join((f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k])) for k in fields) + " |")
    md_path = out / f"{stem}.md"
    with atomic_path(md_path) as tmp:
        tmp.write_text("\n".join(md) + "\n")
    png = out / f"{stem}.png"
    plot(png)
    return StudyResult(rows, csv_path, md_path, png)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("the study plots need matplotlib: pip install 'stablemotion[eval]' (or matplotlib)") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_fig(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")


def study_steps(
    pipe: StableMotionPipeline,
    eval_set: EvalSet,
    out: PathLike,
    steps: Sequence[int] = STEPS_DEFAULT,
    base: EvalSettings | None = None,
    model_name: str = "",
    limit: int | None = None,
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> StudyResult | None:
    """PSNR/SSIM versus DDIM steps (the Sampling Steps Disaster curve).

    One resumable evaluation per step count in ``OUT/steps_K/``; writes
    ``OUT/steps.{csv,md,png}`` (main process only; other ranks return ``None``).
    """
    base = base or EvalSettings()
    out = Path(out)
    rows = []
    for k in steps:
        s = EvalSettings(**{**asdict(base), "steps": int(k)})
        summ = evaluate(pipe, eval_set, out / f"steps_{k}", s, model_name, rank, world, barrier, limit, progress=progress)
        if summ is not None:
            rows.append({"steps": int(k), "psnr": summ.mean_psnr, "ssim": summ.mean_ssim,
                         "seconds_per_image": summ.seconds_per_image, "images": len(summ.rows)})
    if rank != 0:
        return None

    def plot(path: Path) -> None:
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        xs = [r["steps"] for r in rows]
        ax.plot(xs, [r["psnr"] for r in rows], "o-", color="tab:blue", label="PSNR")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("DDIM steps")
        ax.set_ylabel("PSNR (dB)", color="tab:blue")
        ax2 = ax.twinx()
        ax2.plot(xs, [r["ssim"] for r in rows], "s--", color="tab:orange", label="SSIM")
        ax2.set_ylabel("SSIM", color="tab:orange")
        ax.set_title(f"Sampling steps ({len(eval_set) if limit is None else min(limit, len(eval_set))} images)")
        _save_fig(fig, path)
        plt.close(fig)

    note = (f"Model {model_name or '(in memory)'}; dataset {eval_set!r}; settings {base.to_json()} with the steps varied. "
            "One step is the trained path; more steps leave it (docs/method.md, 'Inference').")
    return _write_study(out, "steps", rows, ["steps", "psnr", "ssim", "seconds_per_image", "images"],
                        "Sampling Steps Disaster: quality versus DDIM steps", note, plot)


def study_ensemble(
    pipe: StableMotionPipeline,
    eval_set: EvalSet,
    out: PathLike,
    sizes: Sequence[int] = ENSEMBLE_SIZES_DEFAULT,
    modes: Sequence[str] = ("image", "flow", "latent"),
    base: EvalSettings | None = None,
    model_name: str = "",
    limit: int | None = None,
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> StudyResult | None:
    """PSNR/SSIM and time per image versus AES size for each AES mode.

    Size 1 is the same run for every mode (evaluated once in ``OUT/aes_1/``); other runs
    in ``OUT/aes_{mode}_{N}/``. Writes ``OUT/ensemble.{csv,md,png}``.
    """
    base = base or EvalSettings()
    out = Path(out)
    rows = []
    single: EvalSummary | None = None
    for mode in modes:
        for n in sizes:
            s = EvalSettings(**{**asdict(base), "ensemble": int(n), "ensemble_mode": mode if n > 1 else None})
            if n == 1:
                if single is None:
                    single = evaluate(pipe, eval_set, out / "aes_1", s, model_name, rank, world, barrier, limit,
                                      progress=progress)
                summ = single
            else:
                summ = evaluate(pipe, eval_set, out / f"aes_{mode}_{n}", s, model_name, rank, world, barrier, limit,
                                progress=progress)
            if summ is not None:
                rows.append({"mode": mode, "size": int(n), "psnr": summ.mean_psnr, "ssim": summ.mean_ssim,
                             "seconds_per_image": summ.seconds_per_image, "images": len(summ.rows)})
    if rank != 0:
        return None

    def plot(path: Path) -> None:
        plt = _pyplot()
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        for mode in modes:
            rs = [r for r in rows if r["mode"] == mode]
            xs = [r["size"] for r in rs]
            for ax, key in zip(axes, ("psnr", "ssim", "seconds_per_image"), strict=True):
                ax.plot(xs, [r[key] for r in rs], "o-", label=mode)
        for ax, label in zip(axes, ("PSNR (dB)", "SSIM", "seconds / image"), strict=True):
            ax.set_xlabel("AES members")
            ax.set_ylabel(label)
            ax.legend()
        fig.suptitle("Adaptive Ensemble Strategy: quality and time versus members")
        _save_fig(fig, path)
        plt.close(fig)

    note = (f"Model {model_name or '(in memory)'}; dataset {eval_set!r}; settings {base.to_json()} with the ensemble "
            "varied. Modes: image = released AES (median of warped images, minimum in the border band); flow = median "
            "flow; latent = median x0 latent, one decode. Time: wall seconds per image on this machine.")
    return _write_study(out, "ensemble", rows, ["mode", "size", "psnr", "ssim", "seconds_per_image", "images"],
                        "AES ablation: quality and time versus ensemble size", note, plot)

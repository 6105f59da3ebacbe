"""The paper's two studies: :func:`study_steps` (the Sampling Steps Disaster curve: quality versus
DDIM steps) and :func:`study_ensemble` (the AES ablation: quality and time versus ensemble size),
each a set of resumable :func:`~stablemotion.evaluation.runner.evaluate` runs written as CSV,
markdown and a PNG plot.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.metrics import ScoreTable, _fmt
from ..io.images import PathLike, atomic_path
from .protocol import EvalSet
from .runner import EvalSettings, evaluate

if TYPE_CHECKING:
    from ..model.pipeline import StableMotionPipeline

__all__ = ["StudyResult", "study_steps", "study_ensemble", "STEPS_DEFAULT", "ENSEMBLE_SIZES_DEFAULT"]

#: DDIM step counts of the Sampling Steps Disaster study.
STEPS_DEFAULT = (1, 2, 4, 8, 16, 50)
#: Ensemble sizes of the AES ablation.
ENSEMBLE_SIZES_DEFAULT = tuple(range(1, 9))


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
    single: ScoreTable | None = None
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

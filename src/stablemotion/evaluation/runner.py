"""Evaluation of a StableMotion pipeline on a test split by its task's protocol.

* :func:`~stablemotion.evaluation.protocol.open_eval_set` opens the test split the task's
  :class:`~stablemotion.tasks.EvalProtocol` names (layout, split, metrics, EPE region).
* :func:`run_inference` rectifies every image of one shard into ``OUT/results/NAME.png``
  (atomic writes; finished images are skipped, so an interrupted run resumes), the flow into
  ``OUT/flows/NAME.npy`` when asked (or when the protocol scores EPE and the set has gt flows),
  and appends each image's inference time to ``OUT/timings/rankR.jsonl``.
* :func:`~stablemotion.evaluation.score.score_shard` / :func:`~stablemotion.evaluation.score.merge_shards`
  score the results by the protocol (PSNR / SSIM by the released settings, EPE in pixels) with
  the identity baseline, and write ``per_image.csv``, ``summary.md`` and ``summary.json``.
* :func:`evaluate` runs the three for one process; under ``accelerate launch`` each
  process takes every ``world``-th image and the main process merges the shards.
* :func:`~stablemotion.evaluation.extra_metrics.optional_metrics` adds FID / LPIPS when available
  offline; :mod:`stablemotion.evaluation.studies` holds the steps and AES studies.

Every name of those modules stays importable from here. Per-image seeding: each image's noise
comes from ``torch.Generator().manual_seed(seed)``, as ``stablemotion rectify`` does, so results
do not depend on sharding or resuming.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io.images import PathLike, atomic_path
from .extra_metrics import FID_WEIGHTS, LPIPS_BACKBONE, optional_metrics
from .protocol import EvalSample, EvalSet, open_eval_set, shard_names
from .score import (
    ROW_FIELDS,
    EvalSummary,
    ScoreTable,
    merge_shards,
    score_folders,
    score_shard,
    summary_markdown,
    write_rows_csv,
)

if TYPE_CHECKING:
    from ..model.pipeline import StableMotionPipeline

__all__ = [
    "EvalSample",
    "EvalSet",
    "EvalSettings",
    "EvalSummary",
    "ScoreTable",
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
    "StudyResult",  # noqa: F822 (lazy, see __getattr__)
    "study_steps",  # noqa: F822 (lazy, see __getattr__)
    "study_ensemble",  # noqa: F822 (lazy, see __getattr__)
    "STEPS_DEFAULT",  # noqa: F822 (lazy, see __getattr__)
    "ENSEMBLE_SIZES_DEFAULT",  # noqa: F822 (lazy, see __getattr__)
]

_ = (ROW_FIELDS, FID_WEIGHTS, LPIPS_BACKBONE)  # importable from here, as before the split
_SETTINGS_FILE = "run.json"
#: Names of :mod:`.studies`, importable from here (lazily: the studies module imports this one).
_STUDY_NAMES = frozenset({"StudyResult", "study_steps", "study_ensemble", "STEPS_DEFAULT", "ENSEMBLE_SIZES_DEFAULT"})


def __getattr__(name: str) -> Any:
    if name in _STUDY_NAMES:
        return getattr(importlib.import_module(".studies", __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    out = Path(out)
    results = out / "results"
    results.mkdir(parents=True, exist_ok=True)
    todo = [n for n in (eval_set.names if names is None else names) if not (results / f"{n}.png").is_file()]
    timings = out / "timings" / f"rank{rank}.jsonl"
    timings.parent.mkdir(parents=True, exist_ok=True)
    spec = pipe.resolve_task(settings.task)
    done = []
    it = progress(todo) if progress is not None else todo
    for name in it:
        paths = {"image": results / f"{name}.png", **({"flow": out / "flows" / f"{name}.npy"} if save_flow else {})}
        seconds = _rectify_sample(pipe, spec, eval_set.get(name), settings, paths)
        with open(timings, "a") as f:
            f.write(json.dumps({"name": name, "seconds": seconds}) + "\n")
        done.append(name)
    return done


def _rectify_sample(pipe: StableMotionPipeline, spec: Any, sample: EvalSample, settings: EvalSettings,
                    paths: dict[str, Path]) -> float:
    """Rectify one test image at full size (no working-size cap, the dataset's mask as it is) through the
    rectify service (:mod:`stablemotion.model.service`) and write ``paths`` -> the pipeline's seconds."""
    from ..model.service import RectifyRequest, rectify, write_results

    if "mask" in spec.conditions and sample.mask is None:
        raise ValueError(f"{sample.name}: the {spec.name} model needs a mask but the dataset has none")
    mask = sample.mask if "mask" in spec.conditions else None
    kwargs: dict[str, Any] = {}
    if sample.network_image is not None and settings.processing_resolution is None:
        kwargs["processing_image"] = sample.network_image  # RS-Real: the stored 256x256 condition
    request = RectifyRequest(sample.image, mask, spec, mask_given=True)
    res = rectify(pipe, request, max_work_pixels=0, seed=settings.seed, num_inference_steps=settings.steps,
                  ensemble_size=settings.ensemble, ensemble_mode=settings.ensemble_mode,
                  processing_resolution=settings.processing_resolution,
                  decode_scale=settings.decode_scale, final_step=settings.final_step,
                  flow_regularization=settings.flow_regularization, **kwargs)
    write_results(res, paths)
    return res.pipe_seconds


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
) -> ScoreTable | None:
    """Run, score and merge an evaluation (one process of ``world``) by ``eval_set.protocol``.

    Every process rectifies and scores its shard (:func:`shard_names`); after ``barrier``
    (e.g. ``accelerate``'s ``wait_for_everyone``) the main process (``rank == 0``) merges
    the shards and returns the :class:`~stablemotion.core.metrics.ScoreTable`; other ranks
    return ``None``. When the protocol scores EPE and the set has gt flows, the flows are
    saved and EPE (mean pixels, over the protocol's region) is reported with PSNR / SSIM.

    Args:
        limit: evaluate only the first ``limit`` images (sorted names).
        save_flow: also write each flow to ``OUT/flows/NAME.npy`` (always done when EPE is scored).
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
    with_epe = "epe" in eval_set.protocol.metrics and eval_set.has_flows
    run_inference(pipe, eval_set, out, settings, mine, rank=rank, save_flow=save_flow or with_epe, progress=progress)
    score_shard(eval_set, out, mine, rank=rank)
    if barrier is not None:
        barrier()
    if rank != 0:
        return None
    extra = optional_metrics(extra_metrics, eval_set, out / "results", names, pipe._execution_device) if extra_metrics else {}
    desc = {k: v for k, v in settings.to_json().items() if v is not None}
    if with_epe:
        desc["epe_region"] = eval_set.protocol.epe_region
    return merge_shards(out, names, settings=desc, extra=extra)

"""``stablemotion rectify --engine {local,ray}``: the engine options and the calls into :mod:`stablemotion.batch`.

``--engine local`` (default) rectifies in this process (or in each process under ``accelerate launch``);
``--engine ray`` hands the planned images to a Ray actor pool (:class:`stablemotion.batch.RayEngine`),
after the same planning (inputs, masks, output names, resuming, header checks) in this process.
Ray is imported only when ``--engine ray`` runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._options import int_arg


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """``--engine``, ``--ray-address``, ``--actors``, ``--manifest``."""
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process (default); ray: a pool of Ray actors, each loading the model once "
                        "(pip install 'stablemotion[ray]'; README, Batch at scale)")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="--engine ray: the cluster to join (auto, ray://HEAD:10001); default: start one on this machine")
    p.add_argument("--actors", type=int_arg(1, 4096), default=None, metavar="N",
                   help="--engine ray: actors (model copies); default: one per GPU of the cluster, else one per CPU "
                        "left after one for decoding")
    p.add_argument("--manifest", type=Path, default=None, metavar="PATH",
                   help="--engine ray: the Parquet manifest of every image (input, output, task, status, error, "
                        "settings, seconds); default OUT/.stablemotion-rectify.parquet")


def start_ray(args: argparse.Namespace) -> Any:
    """Join or start the Ray cluster for ``args`` and resolve ``args.dtype`` where the actors run (printed once)
    -> the :class:`stablemotion.batch.RayEngine`."""
    from ..batch import RayEngine

    engine = RayEngine(address=args.ray_address, actors=args.actors,
                       gpus_per_actor=0.0 if str(args.device) == "cpu" else None)
    try:
        asked = args.dtype
        args.dtype, line = engine.resolve_dtype(asked)
        if asked == "auto":
            print(line)
    except BaseException:
        engine.close()
        raise
    return engine


def run_ray(args: argparse.Namespace, todo: list[Any], skipped: list[Any], failures: dict[str, str],
            kwargs: dict[str, Any], record: dict[str, Any], needs_mask: bool, ensemble: int) -> tuple[int, dict[str, str]]:
    """Rectify the planned jobs ``todo`` (``cli.rectify._Job``) on ``args.ray`` and write the Parquet manifest
    rows of the run (``skipped``: done by an earlier run; ``failures``: refused by the header checks)
    -> (images processed, failures by stem). Images left unchanged are added to ``args.unchanged``."""
    import json

    from ..batch import MANIFEST_FILE, BatchJob, summarize, write_manifest
    from .rectify import _file_options

    settings = json.dumps(record, sort_keys=True, default=str)

    def row(job: Any, status: str, error: str = "") -> dict[str, Any]:
        return {"stem": job.stem, "input": str(job.image), "output": str(job.outputs["image"]), "task": "",
                "status": status, "error": error, "settings": settings, "seconds": 0.0}

    by_stem = {j.stem: j for j in todo}
    rows = [row(j, "skipped") for j in skipped]
    rows += [row(j, "failed", why) for stem, why in failures.items() if (j := by_stem.get(stem)) is not None]
    jobs = [BatchJob(j.stem, str(j.image), None if j.mask is None else str(j.mask)) for j in todo
            if j.stem not in failures]
    summary = summarize(args.ray.run(jobs, model=None if args.model is None else str(args.model), task=args.task,
                                     dtype=args.dtype, channels_last=args.channels_last,
                                     options=_file_options(args, kwargs), out=args.out, record=record,
                                     needs_mask=needs_mask, ensemble=ensemble))
    write_manifest(args.manifest or args.out / MANIFEST_FILE, rows + summary.rows)
    args.unchanged.update(summary.unchanged)
    return summary.processed, summary.failures

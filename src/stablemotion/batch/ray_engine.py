"""Rectify a collection of images on a Ray cluster: Ray Data streams the inputs through CPU decode tasks into a
pool of actors that each load the pipeline once (``stablemotion rectify --engine ray``, :func:`rectify_dataset`).

The pipeline of a run::

    rows (stem, input path or URI, mask)  --map_batches, CPU tasks-->  decoded inputs
        --map_batches, actor pool (num_gpus per actor on GPU machines, else CPU)-->  files written + one row each

Each actor runs the same code as ``--engine local``
(:func:`stablemotion.model.rectify_files.rectify_decoded`): same names, side files, atomic writes
and seed, hence byte-identical files for the same images and settings on the same kind of device
and thread count. Inputs are local paths (a shared file system on a multi-node cluster) or
``pyarrow`` file-system URIs (``s3://``, ``gs://``, ``hdfs://`` ...: read in the decode tasks);
the output folder is a local or shared path. Each actor journals every finished image into the
output folder (``.stablemotion-rectify/journal-rankray-*.jsonl``), so a killed run resumes from the
folder's manifest like a local one. A bad image becomes a ``failed`` row, never a failed job.
Ray is imported only here, when a run starts (``pip install 'stablemotion[ray]'``).

Example (a local Ray cluster; ``ray.init`` takes seconds, so the doctest is skipped):
    >>> import ray                                                           # doctest: +SKIP
    >>> ray.init(num_cpus=2, include_dashboard=False)                        # doctest: +SKIP
    >>> ds = ray.data.read_binary_files("s3://bucket/frames/", include_paths=True)  # doctest: +SKIP
    >>> rectify_dataset(ds, "results/", task="rsc", actors=2).processed      # doctest: +SKIP
    1000
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..model.rectify_files import DecodedInput, FileOptions, output_paths, read_input

__all__ = ["BatchJob", "BatchSummary", "RayEngine", "rectify_dataset", "stem_of"]

#: The Parquet manifest's default name in the output folder.
MANIFEST_FILE = ".stablemotion-rectify.parquet"


def stem_of(source: str) -> str:
    """The output name of an input path or URI: its file name without the extension.

    Example:
        >>> stem_of("s3://bucket/frames/a.b.png"), stem_of("/data/x.jpg")
        ('a.b', 'x')
    """
    return PurePosixPath(source.split("://", 1)[-1].split("?", 1)[0]).stem


@dataclass
class BatchJob:
    """One input of a run: ``stem`` (names its outputs), ``input`` (a path or URI), ``mask`` (a mask file, or
    ``None``: derived from the empty border / none for tasks without a mask).

    Example:
        >>> BatchJob("a", "in/a.png").mask is None
        True
    """

    stem: str
    input: str
    mask: str | None = None


@dataclass
class BatchSummary:
    """What a run did: images ``processed`` (rectified or written unchanged), of which ``unchanged``
    (stem -> reason), ``skipped`` (already done), ``failures`` (stem -> reason), the manifest's
    ``rows`` of this run, and the wall ``seconds`` of the Ray part.

    Example:
        >>> BatchSummary(processed=2).failures
        {}
    """

    processed: int = 0
    unchanged: dict[str, str] = field(default_factory=dict)
    skipped: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


# --------------------------------------------------------------------------- decode tasks (CPU)
def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _fetch(uri: str, folder: str) -> Path:
    """Copy the file at a pyarrow file-system ``uri`` into ``folder`` (same suffix) -> the local copy."""
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(uri)
    local = Path(folder) / f"input{PurePosixPath(path).suffix}"
    with filesystem.open_input_stream(path) as src, open(local, "wb") as dst:
        while chunk := src.read(1 << 22):
            dst.write(chunk)
    return local


def _decode_one(source: str, mask: str | None, data: bytes | None, image: Any, options: FileOptions) -> DecodedInput:
    """Read one input by :func:`~stablemotion.model.rectify_files.read_input` (a URI or given bytes through a
    temporary local copy, so that the same reading rules apply; messages name ``source``)."""
    if image is not None:  # already decoded (ray.data.read_images): (H, W, 3) uint8
        array = np.asarray(image)
        if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
            raise ValueError(f"{source}: the image column holds {array.dtype} {array.shape}; expected (H, W, 3) uint8")
        return DecodedInput(array, name=source)
    if data is None and "://" not in source and (mask is None or "://" not in mask):
        return read_input(source, options, mask)
    with tempfile.TemporaryDirectory(prefix="stablemotion-ray-") as tmp:
        if data is not None:
            local = Path(tmp) / f"input{PurePosixPath(source).suffix}"
            local.write_bytes(data)
        else:
            local = _fetch(source, tmp) if "://" in source else Path(source)
        local_mask = None if mask is None else _fetch(mask, tmp + "/m") if "://" in mask else Path(mask)
        try:
            return read_input(local, options, local_mask, name=source)
        except (ValueError, OSError) as exc:
            raise ValueError(str(exc).replace(str(local), source)) from None


def _pack(decoded: DecodedInput) -> bytes:
    """A decoded input as ``.npz`` bytes (no pickle) for the actor."""
    empty = np.zeros((0, 0), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, image=decoded.image, alpha=empty if decoded.alpha is None else decoded.alpha,
             mask=empty if decoded.mask is None else decoded.mask)
    return buf.getvalue()


def _unpack(payload: bytes, note: str, name: str, mask_name: str) -> DecodedInput:
    with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
        alpha, mask = npz["alpha"], npz["mask"]
        return DecodedInput(npz["image"], None if alpha.size == 0 else alpha, None if mask.size == 0 else mask,
                            note, name, mask_name)


def _decode_batch(batch: dict[str, Any], options: FileOptions) -> dict[str, list[Any]]:
    """Ray Data decode stage (a CPU task): each row's input read and decoded, or its error."""
    out: dict[str, list[Any]] = {k: [] for k in ("stem", "input", "payload", "note", "name", "mask_name", "error",
                                                 "read_seconds")}
    for i in range(len(batch["input"])):
        t0 = time.perf_counter()
        source = str(batch["input"][i])
        stem = str(batch["stem"][i]) if "stem" in batch else stem_of(source)
        mask = str(batch["mask"][i]) if "mask" in batch and batch["mask"][i] else None
        data = bytes(batch["bytes"][i]) if "bytes" in batch else None
        image = batch["image"][i] if "image" in batch else None
        try:
            decoded = _decode_one(source, mask, data, image, options)
            payload, note, name, mask_name, error = _pack(decoded), decoded.note, decoded.name, decoded.mask_name, ""
        except (ValueError, OSError) as exc:
            payload, note, name, mask_name, error = b"", "", source, "", _first_line(exc)
        for key, value in (("stem", stem), ("input", source), ("payload", payload), ("note", note), ("name", name),
                           ("mask_name", mask_name), ("error", error), ("read_seconds", time.perf_counter() - t0)):
            out[key].append(value)
    return out


# --------------------------------------------------------------------------- the actors
@dataclass(frozen=True)
class _ModelSpec:
    """What each actor loads and how it writes: model folder (``None``: bundled for ``task``), task, dtype name,
    channels_last, threads, whether on a GPU, the output folder, the settings record and its key."""

    model: str | None
    task: str | None
    dtype: str
    channels_last: bool
    threads: int
    gpu: bool
    out: str
    record: str
    key: str
    needs_mask: bool
    ensemble: int


class _Rectifier:
    """A Ray Data actor: loads the pipeline once, then rectifies and writes each decoded input."""

    def __init__(self, spec: _ModelSpec, options: FileOptions) -> None:
        import torch

        from ..io.outdir import Journal
        from ..model.catalog import bundled_model_path
        from ..model.loading import load_pipeline, prepare_for_inference

        if spec.threads > 0:
            torch.set_num_threads(spec.threads)
        if spec.model is None:
            name = spec.task or "sir"
            pipe = load_pipeline(bundled_model_path(name), spec.dtype, progress=False).set_default_task(name)
        else:
            pipe = load_pipeline(spec.model, spec.dtype, progress=False)
        self.pipe = prepare_for_inference(pipe, "cuda" if spec.gpu else "cpu", spec.channels_last)
        self.task = self.pipe.resolve_task(spec.task)
        self.spec, self.options = spec, options
        self.journal = Journal(Path(spec.out), f"ray-{uuid.uuid4().hex[:12]}")  # type: ignore[arg-type]

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        from ..core.errors import is_out_of_memory
        from ..model.rectify_files import rectify_decoded

        rows: dict[str, list[Any]] = {k: [] for k in ("stem", "input", "output", "task", "status", "error",
                                                      "seconds", "notes")}
        for i in range(len(batch["stem"])):
            t0 = time.perf_counter()
            stem, source, error = str(batch["stem"][i]), str(batch["input"][i]), str(batch["error"][i])
            outputs = output_paths(Path(self.spec.out), stem, self.options, self.spec.needs_mask, self.spec.ensemble)
            notes: list[str] = []
            status, task = "failed", ""
            if not error:
                try:
                    decoded = _unpack(batch["payload"][i], str(batch["note"][i]), str(batch["name"][i]),
                                      str(batch["mask_name"][i]))
                    res = rectify_decoded(self.pipe, self.task, decoded, outputs, self.options, stem, notes.append)
                    self.journal.add(stem, self.spec.key, (p.name for p in outputs.values()))
                    status, task, error = ("unchanged", res.task, res.reason) if res.unchanged else ("done", res.task, "")
                except (ValueError, OSError) as exc:
                    error = _first_line(exc)
                except (MemoryError, RuntimeError) as exc:  # one image too large: the others still run
                    if not is_out_of_memory(exc):
                        raise
                    error = f"out of memory ({_first_line(exc)[:200]}); try a smaller --max-work-pixels"
            for key, value in (("stem", stem), ("input", source), ("output", str(outputs["image"])), ("task", task),
                               ("status", status), ("error", error),
                               ("seconds", float(batch["read_seconds"][i]) + time.perf_counter() - t0),
                               ("notes", "\n".join(notes))):
                rows[key].append(value)
        return rows


def _probe_dtype(name: str, gpu: bool) -> tuple[str, str]:
    """In a Ray task with an actor's resources: ``--dtype name`` resolved where the actors run -> (name, line)."""
    from ..model.precision import describe_choice, resolve_dtype_name

    device = "cuda" if gpu else "cpu"
    return resolve_dtype_name(name, device), describe_choice(name, device)


# --------------------------------------------------------------------------- the engine
class RayEngine:
    """A connection to a Ray cluster and the shape of its actor pool.

    ``address``: a running cluster (``"auto"``, ``"ray://head:10001"``); ``None`` joins the cluster this
    process already initialised or starts a local one (all this machine's CPUs). ``actors``: pool size
    (default: one per GPU of the cluster, else one per ``cpus_per_actor`` CPUs left after one for
    decoding); ``gpus_per_actor``: default 1 when the cluster has GPUs, else 0 (CPU actors, each running
    torch on ``cpus_per_actor`` threads). ``decode_cpus``: CPUs a decode task asks for (fractional: decoding
    is light next to the model). :meth:`close` shuts down a cluster this engine started, and only that.

    Example:
        >>> RayEngine.__name__
        'RayEngine'
    """

    def __init__(self, address: str | None = None, actors: int | None = None, gpus_per_actor: float | None = None,
                 cpus_per_actor: float = 1.0, decode_cpus: float = 0.25, quiet: bool = False) -> None:
        try:
            import ray
        except ImportError:
            raise ValueError("--engine ray needs Ray: pip install 'stablemotion[ray]'") from None
        self._started = False
        if not ray.is_initialized():
            local = {} if address else {"include_dashboard": False}  # a running cluster keeps its own settings
            ray.init(address=address, log_to_driver=False, logging_level="warning", **local)
            self._started = True
        ray.data.DataContext.get_current().enable_progress_bars = False
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0.0))
        self.gpus_per_actor = (1.0 if gpus else 0.0) if gpus_per_actor is None else float(gpus_per_actor)
        self.cpus_per_actor = float(cpus_per_actor)
        self.decode_cpus = float(decode_cpus)
        if actors is None:
            cpus = float(resources.get("CPU", 1.0))
            actors = int(gpus // self.gpus_per_actor) if self.gpus_per_actor else int(
                max(1.0, (cpus - 1.0) // self.cpus_per_actor))
        if actors < 1:
            raise ValueError(f"--actors must be at least 1, got {actors}")
        self.actors = actors
        self.quiet = quiet
        # what each actor reserves: its CPUs, less where the pool would leave no room for the decode tasks
        # (2 CPU actors on 2 CPUs), which would otherwise wait for ever; torch still runs cpus_per_actor threads
        cpus = float(resources.get("CPU", 1.0))
        self.actor_cpus = min(self.cpus_per_actor, max(0.01, (cpus - self.decode_cpus) / actors))

    def resolve_dtype(self, name: str) -> tuple[str, str]:
        """``--dtype name`` (``auto``) resolved on a worker with an actor's resources -> (name, the line to print)."""
        import ray

        probe = ray.remote(_probe_dtype).options(num_cpus=min(self.actor_cpus, 1.0),
                                                 num_gpus=self.gpus_per_actor)
        return tuple(ray.get(probe.remote(name, self.gpus_per_actor > 0)))  # type: ignore[return-value]

    def run(self, rows: Any, *, model: str | None, task: str | None, dtype: str, channels_last: bool,
            options: FileOptions, out: Path, record: dict[str, Any], needs_mask: bool, ensemble: int,
            log: Callable[[str], None] = print) -> Iterator[dict[str, Any]]:
        """Rectify ``rows`` (a list of :class:`BatchJob` or a ``ray.data.Dataset`` with an ``input`` column, and
        optional ``stem``, ``mask``, ``bytes`` or ``image`` columns) into ``out`` -> an iterator over the
        manifest rows as they finish (notes and failures are passed to ``log``)."""
        import ray

        from ..io.outdir import settings_key

        if isinstance(rows, list):
            if not rows:
                return
            items = [{"stem": j.stem, "input": j.input, "mask": j.mask or ""} for j in rows]
            ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 8 * self.actors)))
        else:
            ds = rows
        spec = _ModelSpec(None if model is None else str(model), task, dtype, channels_last,
                          0 if self.gpus_per_actor else max(1, int(self.cpus_per_actor)), self.gpus_per_actor > 0,
                          str(out), json.dumps(record, sort_keys=True, default=str), settings_key(record),
                          needs_mask, ensemble)
        decoded = ds.map_batches(_decode_batch, fn_kwargs={"options": options}, batch_size=1,
                                 num_cpus=self.decode_cpus)
        done = decoded.map_batches(_Rectifier, fn_constructor_kwargs={"spec": spec, "options": options},
                                   batch_size=1, concurrency=self.actors, num_cpus=self.actor_cpus,
                                   num_gpus=self.gpus_per_actor or None)
        for row in done.iter_rows():
            for note in filter(None, str(row["notes"]).split("\n")):
                log(note)
            if row["status"] == "failed":
                log(f"{row['stem']}: failed: {row['error']}")
            yield {"stem": row["stem"], "input": row["input"], "output": row["output"], "task": row["task"],
                   "status": row["status"], "error": row["error"], "settings": spec.record,
                   "seconds": float(row["seconds"])}

    def close(self) -> None:
        """Shut down the Ray cluster this engine started (one it joined is left running)."""
        if self._started:
            import ray

            ray.shutdown()
            self._started = False


def summarize(rows: Iterable[dict[str, Any]], summary: BatchSummary | None = None) -> BatchSummary:
    """Count manifest rows into a :class:`BatchSummary` (keyed by stem).

    Example:
        >>> s = summarize([{"stem": "a", "status": "done"}, {"stem": "b", "status": "failed", "error": "x"}])
        >>> s.processed, s.failures
        (1, {'b': 'x'})
    """
    summary = summary or BatchSummary()
    for row in rows:
        summary.rows.append(row)
        if row["status"] in ("done", "unchanged"):
            summary.processed += 1
            if row["status"] == "unchanged":
                summary.unchanged[row["stem"]] = row.get("error", "")
        elif row["status"] == "failed":
            summary.failures[row["stem"]] = row.get("error", "")
        else:
            summary.skipped += 1
    return summary


def rectify_dataset(ds: Any, out: str | os.PathLike, *, model: str | os.PathLike | None = None,
                    task: str | None = None, dtype: str = "auto", options: FileOptions | None = None,
                    pipe_kwargs: dict[str, Any] | None = None, manifest: str | os.PathLike | None = None,
                    engine: RayEngine | None = None, actors: int | None = None, channels_last: bool = True,
                    force: bool = False, log: Callable[[str], None] = print) -> BatchSummary:
    """Rectify every image of ``ds`` into the folder ``out`` on Ray, as ``stablemotion rectify --engine ray`` does.

    ``ds``: a ``ray.data.Dataset`` with a ``path`` column (paths or URIs: each names its outputs by its
    stem), optionally ``bytes`` (``ray.data.read_binary_files(..., include_paths=True)``) or ``image``
    ((H, W, 3) uint8: ``ray.data.read_images(..., include_paths=True)``); or a list of paths / URIs.
    ``model``: a pipeline folder (``None``: the bundled model of ``task``). ``options``: the per-file
    options (seed, mask rule, side files ...; :class:`~stablemotion.model.rectify_files.FileOptions`);
    ``pipe_kwargs``: inference options (``num_inference_steps`` ... as ``stablemotion rectify`` records
    them). ``dtype``: ``auto`` resolves where the actors run. The output folder is locked for the run;
    images already done with the same settings are skipped (``force`` redoes them); the per-image rows
    go to the Parquet ``manifest`` (default ``out/.stablemotion-rectify.parquet``).

    Returns:
        :class:`BatchSummary`; a bad image is a failure in it (and a ``failed`` manifest row), never an exception.
    """
    from ..io.outdir import FolderLock, Manifest, settings_key
    from ..model.catalog import bundled_model_path
    from ..model.rectify_files import settings_record
    from ..model.rectify_folder import check_out_folder, clean_litter, plan_resume, read_model_tasks
    from ..model.service import takes_mask
    from .manifest import write_manifest

    out = Path(out)
    options = options or FileOptions()
    folder = bundled_model_path(task or "sir") if model is None else Path(model)
    tasks = read_model_tasks(folder)
    spec = tasks.served[task] if task is not None else tasks.default
    needs_mask = takes_mask(spec)
    kwargs = dict(pipe_kwargs or {})
    options = FileOptions(**{**options.__dict__, "pipe_kwargs": {k: v for k, v in kwargs.items() if v is not None}})
    own = engine is None
    engine = engine or RayEngine(actors=actors)
    try:
        dtype, line = engine.resolve_dtype(dtype)
        log(line)
        if isinstance(ds, (list, tuple)):
            import ray

            ds = ray.data.from_items([{"path": str(p)} for p in ds])
        ds = ds.rename_columns({"path": "input"})
        sources = [str(r["input"]) for r in ds.select_columns(["input"]).take_all()]
        stems: dict[str, str] = {}
        for source in sources:
            stem = stem_of(source)
            if stems.setdefault(stem, source) != source:
                raise ValueError(f"two inputs share the name {stem!r} ({stems[stem]}, {source}); outputs would collide")
        ensemble = kwargs.get("ensemble_size") or tasks.ensemble
        jobs = {stem: output_paths(out, stem, options, needs_mask, ensemble) for stem in stems}
        record = settings_record(str(model) if model else f"bundled:{spec.name}", options, kwargs, dtype)
        check_out_folder(out)
        with FolderLock(out):
            removed = clean_litter(out)
            if removed:
                log(f"removed {removed} temporary file(s) left in {out} by an interrupted run")
            done, notes = plan_resume(out, jobs, record, settings_key(record), force)
            for note in notes:
                log(note)
            skip = set(done)
            todo = ds.filter(lambda row: stem_of(str(row["input"])) not in skip) if skip else ds
            t0 = time.perf_counter()
            summary = summarize({"stem": s, "input": stems[s], "output": str(jobs[s]["image"]), "task": spec.name,
                                 "status": "skipped", "error": "", "settings": json.dumps(record, sort_keys=True,
                                                                                          default=str),
                                 "seconds": 0.0} for s in sorted(skip))
            if len(skip) < len(stems):
                summarize(engine.run(todo, model=None if model is None else str(model), task=task or spec.name,
                                     dtype=dtype, channels_last=channels_last, options=options, out=out,
                                     record=record, needs_mask=needs_mask, ensemble=ensemble, log=log), summary)
            summary.seconds = time.perf_counter() - t0
            man = Manifest.load(out)
            man.merge_journals()
            man.save()
            man.clear_journals()
            write_manifest(Path(manifest) if manifest else out / MANIFEST_FILE, summary.rows)
        return summary
    finally:
        if own:
            engine.close()

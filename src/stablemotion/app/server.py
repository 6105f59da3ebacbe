"""The web app: upload an image, get it rectified, with its flow and uncertainty.

:func:`create_app` builds a FastAPI application serving one static page
(``assets/app/index.html``, no external resources: it works offline) and a small JSON API:

* ``GET /`` -- the page.
* ``GET /api/info`` -- ``tasks`` (name, model, description, whether it takes a mask), ``auto``
  (the automatic choice: label, description, threshold), the input limits and formats (the
  page builds its form from it).
* ``GET /api/status`` -- the inference queue: ``{"busy", "pending", "max_queue"}``.
* ``POST /api/rectify`` -- multipart form: ``image`` (file), ``mask`` (file, SIR only, optional:
  derived from the empty border when absent), ``task`` (a task of ``/api/info`` or ``auto``;
  default: the first task), ``steps``, ``ensemble``, ``seed``. Returns JSON with the result's
  id, the task used (``task``; with ``auto``, ``"auto": {"confidence", "reason"}`` says why,
  else ``"auto": null``), size, timings and the URLs of its files.
* ``GET /api/results/{id}/{file}`` -- ``rectified.png``, ``flow.png`` (Middlebury colours),
  ``uncertainty.png`` (ensemble spread, inferno colour map; ensemble > 1 only),
  ``mask.png`` (SIR: the mask used), ``flow.npy`` / ``flow.flo`` (backward flow (H, W, 2), px).

Errors are JSON ``{"detail": message}`` with status 400 (bad input), 403 (cross-origin
request), 408 (upload stalled), 413 (too large), 415 (file type), 422 (``auto`` found no
task to run) or 503 (queue full). The parts:

* :mod:`~stablemotion.app.middleware` -- body size and timeouts, the Host check (DNS
  rebinding) and the Origin check (cross-site requests);
* :mod:`~stablemotion.app.admission` -- at most ``max_queue`` requests admitted before their
  body is read (more get 503), ``max_decodes`` decodes at once, one inference worker thread,
  the result folders (the newest ``max_results``), the memory bounds (:func:`peak_memory_bound`);
* :mod:`~stablemotion.app.forms` -- the form's fields, the uploads' checks and decoding, the
  ``auto`` task choice (a 422 with the words of ``rectify --task auto`` when it cannot tell);
* :mod:`~stablemotion.app.models` -- the task models, loaded on first use in the worker,
  one loaded pipeline per model (the tasks of a multi-task model share it);
* here -- the routes and the inference of one request.

**Working size.** An image over ``max_work_pixels`` (default 1024 x 1024) runs the pipeline,
ensemble included, at :func:`working_size` (aspect ratio kept); its flow is upsampled to the
input's size and the input warped there in strips
(:func:`~stablemotion.core.large_image.rectify_capped`). Downloads are always at the input's
size; images within the cap are processed exactly as ``rectify`` does. Memory per request
above the loaded model: :func:`memory_bound` (1.8 GiB with the default limits). What the
cap costs and the measurements: the README's "Web app" and "Reliability" sections.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse

from ..core.constants import DEFAULT_CORRECTION_GATE
from ..core.flow import write_flow
from ..core.large_image import (
    MAX_WORK_PIXELS,
    memory_bound,
    working_size,
)
from ..io.images import PathLike
from ..model.service import RectifyRequest, unchanged_reason, unchanged_result, write_results
from ..model.service import rectify as rectify_request
from ..tasks import get_task
from .admission import (  # noqa: F401  (the app's names, importable from here as before the split)
    ADMISSION_SLACK,
    DECODE_BYTES_PER_PIXEL,
    HELD_BYTES_PER_PIXEL,
    RESULT_FILES,
    RESULT_LOCK,
    RESULT_PREFIX,
    AppLimits,
    _lock,
    _Queue,
    _Results,
    admission_memory_bound,
    peak_memory_bound,
    remove_dead_result_folders,
)
from .errors import _InputError, _mb  # noqa: F401
from .forms import (  # noqa: F401
    ACCEPTED_FORMATS,
    _accepted,
    _choose_task,
    _decode_inputs,
    _decode_upload,
    _int_field,
    _needs_mask,
    _open_image,
    _Params,
    _parse_params,
    _read_form,
    _read_upload,
    _task_mask,
    _to_rgb,
    _unchanged_choice,
)
from .middleware import (  # noqa: F401
    LOOPBACK_HOSTS,
    SAFE_METHODS,
    _BodyGuard,
    _BodyLimit,
    _HostCheck,
    _is_ip,
    _origin_host,
    _OriginCheck,
    _request_host,
    _shown_host,
    add_guards,
    allowed_hosts_for,
    normalise_host,
)
from .models import AUTO, AUTO_DESCRIPTION, ModelSpec, _check_serves, _Models, _served  # noqa: F401

__all__ = ["AppLimits", "ModelSpec", "admission_memory_bound", "allowed_hosts_for", "create_app", "memory_bound",
           "peak_memory_bound", "remove_dead_result_folders", "working_size"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- inference
#: A result's files by :func:`~stablemotion.model.service.write_results` key, in the order the answer lists them.
_RESULT_NAMES = {"image": "rectified.png", "flow_color": "flow.png", "flow": "flow.npy",
                 "uncertainty_color": "uncertainty.png", "mask": "mask.png"}


def _rectify(
    models: _Models,
    params: _Params,
    request: RectifyRequest,
    folder: Path,
    max_work_pixels: int = MAX_WORK_PIXELS,
    reason: str = "",
) -> dict[str, Any]:
    """Run on the inference worker: rectify ``request`` with the rectify service and write the result
    files into ``folder`` (:mod:`stablemotion.model.service`) -> the answer's metadata.

    Images over ``max_work_pixels`` run the pipeline at :func:`working_size` and are warped
    at full size with its flow (see the module docstring); the others as ``rectify`` does. An
    image the service leaves unchanged before the model runs (zero flow) does not load the model;
    the correction gate (:data:`DEFAULT_CORRECTION_GATE`, off with ``params.always_correct``)
    may leave it unchanged after. ``reason`` (or ``params.task`` ``None``: no task) returns it
    unchanged without running anything.
    """
    reason = reason or unchanged_reason(request)
    if reason:
        res = unchanged_result(request, reason)
    else:
        res = rectify_request(models.get(params.task), request, max_work_pixels=max_work_pixels,
                              seed=params.seed, num_inference_steps=params.steps,
                              ensemble_size=params.ensemble, correction_gate=DEFAULT_CORRECTION_GATE,
                              always_correct=params.always_correct, **dict(getattr(models, "inference", {})))
    paths = {key: folder / name for key, name in _RESULT_NAMES.items()
             if key != "uncertainty_color" or res.spread is not None}
    files = [path.name for path in write_results(res, paths, png_compress_level=3)]
    files.insert(files.index("flow.npy") + 1, "flow.flo")  # written on its first download
    info: dict[str, Any] = {"seconds": round(res.seconds, 3), "flow_max_px": round(res.flow_max, 3),
                            "work_width": res.work_size[1], "work_height": res.work_size[0],
                            "unchanged": bool(res.unchanged), "reason": res.reason,
                            "confidence": None if res.confidence is None else round(float(res.confidence), 3),
                            "always_correct": bool(params.always_correct)}
    if res.spread is not None:
        info["uncertainty_max_px"] = round(res.spread_max, 3)
    info["files"] = files
    return info


# --------------------------------------------------------------------------- the app
def _page() -> str:
    return resources.files("stablemotion").joinpath("assets/app/index.html").read_text(encoding="utf-8")


def create_app(
    models: Mapping[str, ModelSpec] | None = None,
    *,
    max_upload_bytes: int = AppLimits.max_upload_bytes,
    max_side: int = AppLimits.max_side,
    min_side: int = AppLimits.min_side,
    max_steps: int = AppLimits.max_steps,
    max_ensemble: int = AppLimits.max_ensemble,
    max_queue: int = AppLimits.max_queue,
    max_work_pixels: int = AppLimits.max_work_pixels,
    max_decodes: int = AppLimits.max_decodes,
    max_connections: int = AppLimits.max_connections,
    body_timeout: float = AppLimits.body_timeout,
    body_idle_timeout: float = AppLimits.body_idle_timeout,
    header_timeout: float = AppLimits.header_timeout,
    max_results: int = 16,
    device: str | torch.device = "cpu",
    torch_dtype: torch.dtype = torch.float32,
    result_root: PathLike | None = None,
    allowed_hosts: Sequence[str] | None = None,
    inference: Mapping[str, Any] | None = None,
    task_threshold: float | None = None,
) -> FastAPI:
    """The web app (a FastAPI/ASGI application; serve it with ``uvicorn``).

    Args:
        models: task name -> model (see :data:`ModelSpec`); default: the bundled
            ``stablemotion-mini`` model of every task that has one
            (:data:`~stablemotion.model.catalog.BUNDLED_MODELS`). Tasks given the same model (a
            multi-task model's folder or pipeline) share one loaded copy. The page lists the
            tasks in this order, then ``auto``; the first is the default.
        max_upload_bytes, max_side, min_side, max_steps, max_ensemble, max_queue: input
            limits (:class:`AppLimits`).
        max_work_pixels: images with more pixels run the pipeline shrunk to this many and
            are warped at full size with its flow (the memory bound; see the module docstring).
        max_decodes: uploads decoded at the same time (the others' admitted requests wait).
        body_timeout, body_idle_timeout: seconds for a whole request body to arrive, and the
            longest gap in it; a slower upload gets 408 and its connection is closed.
        max_connections, header_timeout: open connections, and seconds for a request's headers
            to arrive; enforced by the server: ``uvicorn.run(app, **server_options(app))``
            (:func:`stablemotion.app.server_options.server_options`; ``serve`` does).
        max_results: how many results are kept for download (oldest deleted first).
        inference: pipeline keyword arguments applied to every request (``serve``'s shared
            inference options: ``processing_resolution``, ``decode_scale``, ``final_step``).
        device, torch_dtype: where and in what precision models loaded by the app run.
        result_root: parent of the temporary result folder (default: the system's).
        allowed_hosts: the ``Host`` names (without port) the app answers to; others get 400
            (DNS-rebinding protection). Default: ``localhost``, ``127.0.0.1``, ``::1``, as
            :func:`allowed_hosts_for` gives for a server bound to 127.0.0.1; ``"*"`` allows any.
        task_threshold: ``task=auto``: the task classifier's least calibrated confidence to act on
            (:func:`~stablemotion.model.task_choice.choose_task`'s ``threshold``; None = the
            classifier's own).

    Example:
        >>> from stablemotion.model.tiny import tiny_pipeline
        >>> app = create_app({"rsc": tiny_pipeline("rsc")}, max_queue=2)
        >>> app.state.limits.max_queue, app.state.allowed_hosts
        (2, ['127.0.0.1', 'localhost', '::1'])
        >>> app.state.results.close()
    """
    from ..model.catalog import BUNDLED_MODELS

    limits = AppLimits(max_upload_bytes=max_upload_bytes, max_side=max_side, min_side=min_side, max_steps=max_steps,
                       max_ensemble=max_ensemble, max_queue=max_queue, max_work_pixels=max_work_pixels,
                       max_decodes=max_decodes, max_connections=max_connections, body_timeout=body_timeout,
                       body_idle_timeout=body_idle_timeout, header_timeout=header_timeout)
    if task_threshold is not None and not 0.0 <= task_threshold <= 1.0:
        raise ValueError(f"task_threshold must be in [0, 1], got {task_threshold}")
    hosts = _allowed_hosts(allowed_hosts)
    registry = _Models({t: None for t in BUNDLED_MODELS} if models is None else models, device, torch_dtype)
    registry.inference = {k: v for k, v in dict(inference or {}).items() if v is not None}
    queue = _Queue(limits.max_queue, limits.max_decodes)
    results = _Results(max_results, result_root)
    app = _new_app(queue, results)
    add_guards(app, hosts, 2 * limits.max_upload_bytes + 64 * 1024, limits.body_timeout, limits.body_idle_timeout)
    app.state.limits, app.state.models, app.state.queue, app.state.results = limits, registry, queue, results
    app.state.allowed_hosts = hosts
    _add_page_routes(app, registry, limits, queue, task_threshold)
    _add_rectify_route(app, registry, limits, queue, results, task_threshold)
    _add_result_route(app, results)
    return app


def _allowed_hosts(allowed_hosts: Sequence[str] | None) -> list[str]:
    """``create_app``'s ``allowed_hosts`` checked and normalised (default: the loopback names)."""
    hosts = list(LOOPBACK_HOSTS) if allowed_hosts is None else [normalise_host(h) for h in allowed_hosts]
    if not hosts:
        raise ValueError("allowed_hosts is empty: the app would refuse every request (give '*' to allow any host)")
    return hosts


def _new_app(queue: _Queue, results: _Results) -> FastAPI:
    """An empty FastAPI app (no API docs pages) that stops the worker and removes its results when it stops."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        queue.shutdown()
        results.close()

    return FastAPI(title="StableMotion", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)


def _add_page_routes(app: FastAPI, registry: _Models, limits: AppLimits, queue: _Queue,
                     task_threshold: float | None) -> None:
    """``GET /`` (the page), ``GET /api/info`` (tasks, limits, formats) and ``GET /api/status`` (the queue)."""
    page = _page()

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        tasks = [{"name": name, "model": registry.names[name], "description": get_task(name).description,
                  "mask": _needs_mask(name)} for name in registry.tasks]
        auto = {"name": AUTO, "label": f"{AUTO} (detect the task)", "description": AUTO_DESCRIPTION,
                "threshold": task_threshold, "mask": any(t["mask"] for t in tasks)}  # a mask is used if SIR is chosen
        return {"tasks": tasks, "auto": auto, "limits": asdict(limits), "formats": list(ACCEPTED_FORMATS.values())}

    @app.get("/api/status")
    async def status() -> dict[str, Any]:
        return queue.state()


def _add_rectify_route(app: FastAPI, registry: _Models, limits: AppLimits, queue: _Queue, results: _Results,
                       task_threshold: float | None) -> None:
    """``POST /api/rectify``: admit, read and decode the upload, run it on the worker, answer its result's JSON."""

    @app.post("/api/rectify")
    async def rectify(request: Request) -> dict[str, Any]:
        with queue.admit():  # before the body is read: a refused request costs no memory
            return await _rectify_admitted(request)

    async def _rectify_admitted(request: Request) -> dict[str, Any]:
        params, image_data, mask_data = await _read_form(request, registry.tasks, limits)
        auto = params.task == AUTO
        async with queue.decodes:
            image, given, mask, mask_note = await run_in_threadpool(_decode_upload, image_data, mask_data,
                                                                    params.task, limits)
        del image_data, mask_data  # a waiting request holds its decoded arrays only

        def job() -> dict[str, Any]:
            task, choice, work_mask, note = params.task, None, mask, mask_note
            if auto:  # chosen here, on the worker: the classifier is a model too
                choice = _choose_task(image, registry.tasks, task_threshold)
                skip = _unchanged_choice(choice)
                if skip:  # nothing to correct, or the task cannot be told: the image comes back as it is
                    rid, folder = results.new()
                    kept = RectifyRequest(image, None, None)
                    return {"id": rid, "task": "none" if choice.task == "none" else None, "choice": choice,
                            "mask": "", "meta": _rectify(registry, params, kept, folder, limits.max_work_pixels,
                                                         reason=skip)}
                task = choice.task
                work_mask, note = _task_mask(image, given, task, f" (the task was chosen automatically: {choice.reason})")
            rid, folder = results.new()
            request = RectifyRequest(image, work_mask, task, mask_given=given is not None, note=note)
            reason = unchanged_reason(request)  # SIR with no empty border and no uploaded mask
            if reason:
                note = f"{reason}, the image is returned unchanged (upload a mask to force a run)"
            meta = _rectify(registry, replace(params, task=task), request, folder, limits.max_work_pixels)
            return {"id": rid, "task": task, "choice": choice, "mask": note, "meta": meta}

        try:
            done, ahead = await queue.run(job)
        except HTTPException:
            raise
        except ValueError as exc:  # the pipeline refused the input
            raise _InputError(str(exc)) from None
        except Exception as exc:
            log.exception("rectification failed")
            raise HTTPException(500, f"rectification failed: {type(exc).__name__}: {exc}") from None
        return _answer(done, ahead, registry, params, image)


def _answer(done: dict[str, Any], ahead: int, registry: _Models, params: _Params, image: np.ndarray) -> dict[str, Any]:
    """The JSON of a finished request: ``done`` as the worker's job returned it, ``ahead`` requests were queued before it."""
    rid, task, choice, meta = done["id"], done["task"], done["choice"], done["meta"]
    urls = {name: f"/api/results/{rid}/{name}" for name in meta.pop("files")}
    return {
        "id": rid, "task": task, "model": registry.names.get(task) if task else None,
        "auto": None if choice is None else {"confidence": round(float(choice.confidence), 3),
                                             "reason": choice.reason},
        "width": int(image.shape[1]), "height": int(image.shape[0]),
        "steps": params.steps, "ensemble": params.ensemble, "seed": params.seed,
        "mask": done["mask"], "queued_behind": ahead, "urls": urls, **meta,
    }


def _add_result_route(app: FastAPI, results: _Results) -> None:
    """``GET /api/results/{id}/{file}``: a result's file (``flow.flo`` written on first request)."""

    @app.get("/api/results/{rid}/{name}")
    async def result_file(rid: str, name: str) -> FileResponse:
        path = results.path(rid, name)
        if path is not None and name == "flow.flo" and not path.exists():
            npy = path.with_suffix(".npy")
            if npy.exists():  # .flo files are written on first request
                await run_in_threadpool(lambda: write_flow(path, np.load(npy)))
        if path is None or not path.is_file():
            raise HTTPException(404, "no such result (results are kept for the newest requests only)")
        download = None if name.endswith(".png") else f"stablemotion_{rid}_{name}"
        return FileResponse(path, filename=download, headers={"Cache-Control": "no-store"})

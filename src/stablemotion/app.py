"""The web app: upload an image, get it rectified, with its flow and uncertainty.

:func:`create_app` builds a FastAPI application serving one static page
(``assets/app/index.html``, no external resources: it works offline) and a small JSON API:

* ``GET /`` -- the page.
* ``GET /api/info`` -- tasks, their models and the input limits (the page builds its form from it).
* ``GET /api/status`` -- the inference queue: ``{"busy", "pending", "max_queue"}``.
* ``POST /api/rectify`` -- multipart form: ``image`` (file), ``mask`` (file, SIR only, optional:
  derived from the empty border when absent), ``task``, ``steps``, ``ensemble``, ``seed``.
  Returns JSON with the result's id, size, timings and the URLs of its files.
* ``GET /api/results/{id}/{file}`` -- ``rectified.png``, ``flow.png`` (Middlebury colours),
  ``uncertainty.png`` (ensemble spread, inferno colour map; ensemble > 1 only),
  ``mask.png`` (SIR: the mask used), ``flow.npy`` / ``flow.flo`` (backward flow (H, W, 2), px).

Validation happens before any inference, in a thread pool (so it is answered while a
slow inference runs): at most ``max_upload_bytes`` per file (the request body is cut off
past twice that), formats PNG/JPEG/WebP/BMP/TIFF by content (not by file name), at most
``max_side`` pixels per side (checked from the header, before decoding), RGB only (the
library's rule: grey/RGBA are refused with a message), a SIR mask of the image's size,
no mask for RSC (refused: the page hides the field), ``steps`` / ``ensemble`` in range.
Errors are JSON ``{"detail": message}`` with status 400 (bad input), 413 (too large),
415 (file type) or 503 (queue full; checked before the upload is decoded).

Inference runs on one worker thread (one model in memory, the CPU/GPU used by one request
at a time); requests queue for it, at most ``max_queue`` waiting or running, and the event
loop stays free for pages, status polls and validation errors meanwhile. Models load lazily
on first use, one per task, in that worker. Results are kept on disk in a temporary
folder, the newest ``max_results`` of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from PIL import Image, ImageOps, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._io import PathLike, mask_array
from .flow import write_flow
from .image_processing import pil_to_rgb, prepare_mask
from .tasks import MASK_CONDITIONS, get_task

__all__ = ["AppLimits", "ModelSpec", "create_app"]

log = logging.getLogger(__name__)

#: What a task's model may be given as: ``None`` (the bundled model), a pipeline folder or
#: hub id (loaded on first use), or a ready pipeline (anything called like
#: :class:`~stablemotion.pipeline.StableMotionPipeline` with ``output_type="np"``).
ModelSpec = Any

#: PIL format name -> what the page calls it.
ACCEPTED_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP", "BMP": "BMP", "TIFF": "TIFF"}
#: Files a result may have (``GET /api/results/{id}/{name}``).
RESULT_FILES = ("rectified.png", "flow.png", "uncertainty.png", "mask.png", "flow.npy", "flow.flo")


@dataclass(frozen=True)
class AppLimits:
    """Input limits of the app (also shown on the page)."""

    max_upload_bytes: int = 10 * 1024 * 1024  #: per uploaded file
    max_side: int = 4096  #: max width and height, pixels
    min_side: int = 8  #: min width and height, pixels
    max_steps: int = 50  #: denoising steps
    max_ensemble: int = 8  #: ensemble members
    max_queue: int = 8  #: requests waiting or running; more get 503

    def __post_init__(self) -> None:
        for key, value in asdict(self).items():
            if value < 1:
                raise ValueError(f"app limit {key} must be >= 1, got {value}")
        if self.min_side > self.max_side:
            raise ValueError(f"min_side {self.min_side} > max_side {self.max_side}")


class _InputError(HTTPException):
    """A user-fixable problem with the request: its message is shown on the page."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(status_code=status, detail=message)


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 1024:.0f} KB"


# --------------------------------------------------------------------------- request body limit
class _BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"the request is larger than {_mb(self.limit)}; upload smaller files"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await JSONResponse({"detail": message}, status_code=413)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > self.limit:  # a streamed (chunked) body: stop reading it
                raise _InputError(message, 413)
            return msg

        await self.app(scope, limited, send)


# --------------------------------------------------------------------------- models
class _Models:
    """The model of each task, loaded on first use (in the inference thread) and kept."""

    def __init__(self, models: Mapping[str, ModelSpec], device: str | torch.device, dtype: torch.dtype) -> None:
        from .model import BUNDLED_MODELS

        self._specs = dict(models)
        self._loaded: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.device, self.dtype = torch.device(device), dtype
        self.names: dict[str, str] = {}
        for task, spec in self._specs.items():
            get_task(task)  # unknown task names fail here
            if spec is None:
                if task not in BUNDLED_MODELS:
                    raise ValueError(f"no bundled model for task {task!r}; give a model for it")
                self.names[task] = f"{BUNDLED_MODELS[task]} (bundled)"
            elif isinstance(spec, (str, os.PathLike)):
                self.names[task] = Path(spec).name or str(spec)
            else:
                self.names[task] = getattr(spec, "name_or_path", None) or getattr(
                    getattr(spec, "config", None), "_name_or_path", None) or type(spec).__name__
        if not self._specs:
            raise ValueError("the app needs at least one task model")

    @property
    def tasks(self) -> list[str]:
        return list(self._specs)

    def get(self, task: str) -> Any:
        with self._lock:
            if task not in self._loaded:
                self._loaded[task] = self._load(task, self._specs[task])
            return self._loaded[task]

    def _load(self, task: str, spec: ModelSpec) -> Any:
        from .model import bundled_model_path, load_pipeline

        if spec is not None and not isinstance(spec, (str, os.PathLike)):
            return spec  # a ready pipeline (or a test double): used as given
        path = bundled_model_path(task) if spec is None else spec
        log.info("loading the %s model from %s", task, path)
        pipe = load_pipeline(path, self.dtype, progress=spec is not None)
        if pipe.task.name != task:
            raise ValueError(f"the model {path} is a {pipe.task.name!r} model, not {task!r}")
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(self.device)


# --------------------------------------------------------------------------- inference queue
class _Queue:
    """One inference worker thread; counts requests waiting or running (event-loop side only)."""

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self.pending = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stablemotion-inference")

    def state(self) -> dict[str, Any]:
        return {"busy": self.pending > 0, "pending": self.pending, "max_queue": self.max_pending}

    def check(self) -> None:
        """Raise 503 when the queue is full."""
        if self.pending >= self.max_pending:
            raise HTTPException(
                503, f"the server is busy ({self.pending} requests queued); try again in a moment",
                headers={"Retry-After": "5"},
            )

    async def run(self, fn: Callable[[], Any]) -> tuple[Any, int]:
        """Run ``fn`` on the worker; returns its result and how many requests were ahead of it."""
        self.check()
        ahead = self.pending
        self.pending += 1
        try:
            return await asyncio.wrap_future(self._executor.submit(fn)), ahead
        finally:
            self.pending -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- results on disk
class _Results:
    """The newest ``keep`` results, one folder each under a temporary directory."""

    def __init__(self, keep: int, root: PathLike | None = None) -> None:
        if keep < 1:
            raise ValueError(f"max_results must be >= 1, got {keep}")
        self.keep = keep
        self.root = Path(tempfile.mkdtemp(prefix="stablemotion-app-", dir=root))
        self._ids: OrderedDict[str, Path] = OrderedDict()
        self._lock = threading.Lock()

    def new(self) -> tuple[str, Path]:
        rid = secrets.token_hex(8)
        folder = self.root / rid
        folder.mkdir()
        with self._lock:
            self._ids[rid] = folder
            while len(self._ids) > self.keep:
                shutil.rmtree(self._ids.popitem(last=False)[1], ignore_errors=True)
        return rid, folder

    def path(self, rid: str, name: str) -> Path | None:
        with self._lock:
            folder = self._ids.get(rid)
        if folder is None or name not in RESULT_FILES:
            return None
        return folder / name

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------- input validation
@dataclass
class _Params:
    task: str
    steps: int | None
    ensemble: int | None
    seed: int


def _int_field(form: Mapping[str, Any], key: str, label: str, low: int, high: int) -> int | None:
    raw = form.get(key)
    if raw is None or (isinstance(raw, str) and raw.strip() == ""):
        return None
    if not isinstance(raw, str):
        raise _InputError(f"{label} must be a number, not a file")
    try:
        value = int(raw.strip())
    except ValueError:
        raise _InputError(f"{label} must be a whole number, got {raw.strip()[:20]!r}") from None
    if not low <= value <= high:
        raise _InputError(f"{label} must be between {low} and {high}, got {value}")
    return value


def _parse_params(form: Mapping[str, Any], tasks: list[str], limits: AppLimits) -> _Params:
    task = form.get("task") or tasks[0]
    if not isinstance(task, str) or task not in tasks:
        raise _InputError(f"unknown task {str(task)[:20]!r}; this server has {', '.join(tasks)}")
    steps = _int_field(form, "steps", "steps", 1, limits.max_steps)
    ensemble = _int_field(form, "ensemble", "ensemble size", 1, limits.max_ensemble)
    seed = _int_field(form, "seed", "seed", 0, 2**32 - 1)
    return _Params(task, steps, ensemble, 0 if seed is None else seed)


async def _read_upload(form: Mapping[str, Any], key: str, label: str, limits: AppLimits) -> bytes | None:
    item = form.get(key)
    if item is None or (isinstance(item, str) and item == ""):
        return None
    if not isinstance(item, UploadFile):
        raise _InputError(f"{label} must be sent as a file upload (form field {key!r})")
    data = await item.read(limits.max_upload_bytes + 1)
    if len(data) > limits.max_upload_bytes:
        raise _InputError(f"the {label} file is larger than the {_mb(limits.max_upload_bytes)} limit", 413)
    if not data:
        raise _InputError(f"the {label} file is empty")
    return data


def _accepted() -> str:
    return ", ".join(ACCEPTED_FORMATS.values())


def _open_image(data: bytes, label: str, limits: AppLimits) -> Image.Image:
    """Decode an upload after checking its type (by content) and size (from its header)."""
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise _InputError(f"the {label} has too many pixels (limit {limits.max_side}x{limits.max_side})", 413) from None
    except (UnidentifiedImageError, OSError):
        raise _InputError(f"the {label} file is not an image of an accepted type ({_accepted()})", 415) from None
    if im.format not in ACCEPTED_FORMATS:
        raise _InputError(f"{im.format} images are not accepted; upload {_accepted()}", 415)
    w, h = im.size
    if w > limits.max_side or h > limits.max_side:
        raise _InputError(
            f"the {label} is {w}x{h} px; the limit is {limits.max_side}x{limits.max_side} px (W x H)", 413)
    if w < limits.min_side or h < limits.min_side:
        raise _InputError(f"the {label} is {w}x{h} px; it must be at least {limits.min_side} px on each side")
    try:
        im.load()
        return ImageOps.exif_transpose(im)  # as the browser shows it
    except (OSError, ValueError, SyntaxError) as exc:
        raise _InputError(f"the {label} file is corrupt or truncated ({im.format}: {exc})") from None


def _decode_inputs(
    image_data: bytes, mask_data: bytes | None, task: str, limits: AppLimits
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """-> image uint8 (H, W, 3), mask uint8 (H, W[, 3]) white = valid (as uploaded) or None, a note on the mask."""
    try:
        image = pil_to_rgb(_open_image(image_data, "image", limits), name="the image")
    except ValueError as exc:  # grey / RGBA / CMYK: the library's message
        raise _InputError(str(exc)) from None
    needs_mask = any(c in MASK_CONDITIONS for c in get_task(task).conditions)
    h, w = image.shape[:2]
    if mask_data is not None and not needs_mask:
        raise _InputError(f"the {task} task takes no mask; remove the mask file")
    if not needs_mask:
        return image, None, ""
    given = None if mask_data is None else mask_array(_open_image(mask_data, "mask", limits))
    try:
        mask, note = prepare_mask(image, given)
    except ValueError as exc:
        raise _InputError(str(exc)) from None
    return image, mask, note.replace("derived mask from", "mask derived from")


# --------------------------------------------------------------------------- inference
def _uncertainty_png(spread: np.ndarray) -> tuple[np.ndarray, float]:
    """(H, W) spread in px -> inferno colours scaled to its maximum (RGB uint8), and that maximum."""
    top = float(spread.max(initial=0.0))
    scaled = np.clip(spread / top, 0, 1) if top > 0 else np.zeros_like(spread)
    bgr = cv2.applyColorMap((scaled * 255).round().astype(np.uint8), cv2.COLORMAP_INFERNO)
    return np.ascontiguousarray(bgr[..., ::-1]), top


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=3)


def _rectify(
    models: _Models, params: _Params, image: np.ndarray, mask: np.ndarray | None, folder: Path
) -> dict[str, Any]:
    """Run on the inference worker: rectify and write the result files into ``folder``."""
    pipe = models.get(params.task)
    t0 = time.perf_counter()
    out = pipe(
        image,
        mask=mask,
        num_inference_steps=params.steps,
        ensemble_size=params.ensemble,
        generator=torch.Generator().manual_seed(params.seed),
        output_type="np",
        show_progress_bar=False,
    )
    seconds = time.perf_counter() - t0
    rectified = (np.clip(out.image[0], 0, 1) * 255.0).round().astype(np.uint8)
    flow = np.asarray(out.flow[0], dtype=np.float32)
    _save_png(rectified, folder / "rectified.png")
    _save_png(np.asarray(out.flow_colored[0], dtype=np.uint8), folder / "flow.png")
    write_flow(folder / "flow.npy", flow)
    files = ["rectified.png", "flow.png", "flow.npy", "flow.flo"]
    magnitude = np.hypot(flow[..., 0], flow[..., 1])
    info: dict[str, Any] = {"seconds": round(seconds, 3), "flow_max_px": round(float(magnitude.max()), 3)}
    if out.uncertainty is not None:
        colours, top = _uncertainty_png(np.asarray(out.uncertainty[0, ..., 0], dtype=np.float32))
        _save_png(colours, folder / "uncertainty.png")
        files.append("uncertainty.png")
        info["uncertainty_max_px"] = round(top, 3)
    if mask is not None:
        _save_png(mask, folder / "mask.png")
        files.append("mask.png")
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
    max_results: int = 16,
    device: str | torch.device = "cpu",
    torch_dtype: torch.dtype = torch.float32,
    result_root: PathLike | None = None,
) -> FastAPI:
    """The web app (a FastAPI/ASGI application; serve it with ``uvicorn``).

    Args:
        models: task name -> model (see :data:`ModelSpec`); default: the bundled
            ``stablemotion-mini`` models for ``sir`` and ``rsc``. The page lists the tasks
            in this order; the first is the default.
        max_upload_bytes, max_side, min_side, max_steps, max_ensemble, max_queue: input
            limits (:class:`AppLimits`).
        max_results: how many results are kept for download (oldest deleted first).
        device, torch_dtype: where and in what precision models loaded by the app run.
        result_root: parent of the temporary result folder (default: the system's).
    """
    from .model import BUNDLED_MODELS

    limits = AppLimits(max_upload_bytes, max_side, min_side, max_steps, max_ensemble, max_queue)
    registry = _Models({t: None for t in BUNDLED_MODELS} if models is None else models, device, torch_dtype)
    queue = _Queue(limits.max_queue)
    results = _Results(max_results, result_root)
    page = _page()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        queue.shutdown()
        results.close()

    app = FastAPI(title="StableMotion", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(_BodyLimit, limit=2 * limits.max_upload_bytes + 64 * 1024)
    app.state.limits, app.state.models, app.state.queue, app.state.results = limits, registry, queue, results

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        tasks = []
        for name in registry.tasks:
            spec = get_task(name)
            tasks.append({"name": name, "model": registry.names[name], "description": spec.description,
                          "mask": any(c in MASK_CONDITIONS for c in spec.conditions)})
        return {"tasks": tasks, "limits": asdict(limits), "formats": list(ACCEPTED_FORMATS.values())}

    @app.get("/api/status")
    async def status() -> dict[str, Any]:
        return queue.state()

    @app.post("/api/rectify")
    async def rectify(request: Request) -> dict[str, Any]:
        async with request.form(max_files=2, max_fields=8) as form:
            params = _parse_params(form, registry.tasks, limits)
            image_data = await _read_upload(form, "image", "image", limits)
            mask_data = await _read_upload(form, "mask", "mask", limits)
        if image_data is None:
            raise _InputError("no image uploaded (form field 'image')")
        queue.check()  # before decoding: a full queue should not cost memory
        image, mask, mask_note = await run_in_threadpool(_decode_inputs, image_data, mask_data, params.task, limits)

        def job() -> tuple[str, dict[str, Any]]:
            rid, folder = results.new()
            return rid, _rectify(registry, params, image, mask, folder)

        try:
            (rid, meta), ahead = await queue.run(job)
        except HTTPException:
            raise
        except ValueError as exc:  # the pipeline refused the input
            raise _InputError(str(exc)) from None
        except Exception as exc:
            log.exception("rectification failed")
            raise HTTPException(500, f"rectification failed: {type(exc).__name__}: {exc}") from None
        urls = {name: f"/api/results/{rid}/{name}" for name in meta.pop("files")}
        return {
            "id": rid, "task": params.task, "model": registry.names[params.task],
            "width": int(image.shape[1]), "height": int(image.shape[0]),
            "steps": params.steps, "ensemble": params.ensemble, "seed": params.seed,
            "mask": mask_note, "queued_behind": ahead, "urls": urls, **meta,
        }

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

    return app

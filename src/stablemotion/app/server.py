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

A request is admitted before its body is read: at most ``max_queue`` requests are admitted
at once (uploading, decoding, waiting for the model or running); more get 503 with
``Retry-After`` at once, whatever they send. Admitted uploads are decoded ``max_decodes``
(2) at a time. Validation happens before any inference, in a thread pool (so it is answered
while a slow inference runs): at most ``max_upload_bytes`` per file (the request body is cut
off past twice that), formats PNG/JPEG/WebP/BMP/TIFF/GIF by content (not by file name), one
frame per file (animated GIF/WebP and multi-page TIFF are refused, the CLI's rule:
:func:`~stablemotion.io.images.check_single_frame`), at most ``max_side`` pixels per side (checked
from the header, before decoding), RGB only (the library's rule: grey and real transparency
are refused with a message in the page's terms), a SIR mask of the image's size, no mask for
tasks without one (RSC, rotation, lens: refused; the page hides the field), ``steps`` /
``ensemble`` in range. Errors are JSON ``{"detail": message}`` with status 400 (bad input),
403 (cross-origin request), 408 (upload stalled), 413 (too large), 415 (file type), 422
(``auto`` found no task to run) or 503 (queue full).

**Automatic task choice** (``task=auto``). On the inference worker, after validation,
:func:`~stablemotion.model.task_choice.choose_task` looks at the image (a flat empty border means
SIR, otherwise the bundled task classifier; ``create_app(task_threshold=...)`` is its least
confidence), then the request runs as if that task had been chosen (SIR: the mask derived
from the border, or the uploaded one). An uploaded mask is accepted only when SIR is chosen.
The choice fails with 422 and the message of ``rectify --task auto`` when the classifier is
unsure (``cannot tell the task (best guess lens at 48%): choose the task``), sees no
distortion, or picks a task this server has no model for.

Inference runs on one worker thread (one model in memory, the CPU/GPU used by one request
at a time); requests queue for it, at most ``max_queue`` waiting or running, and the event
loop stays free for pages, status polls and validation errors meanwhile. Models load lazily
on first use, in that worker, once per model: the tasks of a multi-task model (one folder,
hub id or pipeline object given for several tasks, e.g. one bundled folder serving rotation
and lens) share one loaded pipeline, which is called with the request's ``task``. Results
are kept on disk in a temporary folder, the newest ``max_results`` of them.

**Working size (memory per request).** The pipeline's memory grows with pixels x ensemble
members: it upsamples every member's flow to the input size and warps the input once per
member (float32 (E, 2, H, W) flows and (E, 3, H, W) warps, and the ensemble's median sorts
over them), about 70 bytes per pixel and member, so a legal 4096 x 4096 upload with an
ensemble of 8 took 8 GB. The network itself runs at its processing resolution (96 x 128
for the bundled models, 384 x 512 for the released ones) whatever the input size, so an
image over ``max_work_pixels`` (default 1024 x 1024 = 1 Mpx) is shrunk to the largest size
within that cap keeping its aspect ratio (``cv2.INTER_AREA``; the mask with it: binary
masks are thresholded again after the shrink, ``"as_read"`` masks keep their grey levels)
and the pipeline runs there, ensemble included. Its ensemble flow (the members' median) is
then upsampled to the full size with the pipeline's own rule
(:data:`~stablemotion.core.flow.RELEASED_FLOW_RESIZE`: bilinear, magnitudes scaled by
``W/w``, ``H/h``) and applied to the full-size image in strips of about
:data:`STRIP_PIXELS` pixels (each strip reads only the band of input rows its flow samples),
so the full-size float work is a few strips at a time. Images within the cap are processed
exactly as ``rectify`` does. The downloads are always at the input's size: ``flow.npy`` /
``flow.flo`` in pixels of the input, ``flow.png`` and ``uncertainty.png`` (the working-size
spread upsampled bilinearly and scaled to input pixels) and ``rectified.png``.

What the cap costs: (1) for an ensemble (E > 1) of an image over the cap, the rectified image
is one warp with the median flow (``ensemble_mode="flow"``), not the released AES's
per-pixel median of the E warped images with its border-band minimum; (2) the flow is
upsampled twice (processing -> working -> full size) instead of once, which changes it only
near the kinks of the first bilinear upsampling; (3) the network input is filtered twice
(area shrink, then the pipeline's antialiased resize), and a mask's edge may move by a
pixel of the processing resolution. With a cap at or above the processing resolution
(the default is 5x the released models' 384 x 512) the network sees nearly the same input.
Measured with the bundled SIR model on held-out 384 x 512 examples capped to 192 x 256: the
flow moved by 0.8-1.1 px on average (a different seed moves it by 1.0-1.4 px; mean flow
15-19 px) and the rectified PSNR against the ground truth changed by +0.15 dB on average
(ensemble 1) and +0.14 dB (ensemble 4 against the released AES; worst example -0.29 dB).

Memory per request (CPU, float32; :func:`memory_bound`): at most about
``100 B x work pixels x E + 60 B x H x W + 128 MiB`` above the loaded model, 1.8 GiB with
the default limits; measured for a 4096 x 4096, ensemble 8 request with the bundled SIR
model: 0.52-0.64 GB in four runs (it was 8.1 GB without the cap). The network's own activations for E members
at its processing resolution come on top (they do not depend on the upload).

**Peak of the worst admitted mix** (:func:`peak_memory_bound`): ``max_queue`` admitted
requests of the largest size each hold their compressed files (at most 2 x
``max_upload_bytes``) until decoded, then their decoded image and mask (at most 6 B/px), at
most ``max_decodes`` decodes run at once (12 B/px each), plus the running request's
:func:`memory_bound`: 1.3 GiB (:func:`admission_memory_bound`) + 1.8 GiB = 3.2 GiB with the
default limits, however many clients upload at once. Measured in a fresh server admitting 2
requests of 2048 x 2048 (13 MB PNG uploads) with a pipeline double, 16 concurrent uploads:
+68-75 MB in four runs (bound 192 MB); +512 MB when requests were admitted only after decoding.

**Slow and idle clients.** The whole body must arrive within ``body_timeout`` (60 s) with
no gap over ``body_idle_timeout`` (20 s); otherwise the answer is 408 and the connection is
closed. A client gone mid-upload is logged in one line. The server side
(:func:`stablemotion.app.server_options.server_options`, used by ``serve``) caps open connections at
``max_connections`` (64; a request on one more gets 503), closes a connection that does not
deliver its request headers within ``header_timeout`` (10 s), and idle keep-alive ones
after 5 s.

**Result folders.** Each server keeps its results in ``<tmp>/stablemotion-app-*`` holding
a ``.lock`` file it keeps ``flock``-ed; on start it removes the folders of servers that are
gone (killed with ``kill -9``, crashed): only folders with that prefix, owned by the same
user, with a lock file nobody holds, never through a symlink.

**Origin check (cross-site requests).** A page on another site can make the user's browser
POST to this server (it cannot read the answer, but the job would run). For methods other
than GET/HEAD/OPTIONS, the page named by ``Origin`` (or ``Referer`` when there is no
``Origin``) must have a host the app answers to (``allowed_hosts``; with ``*``, the
request's own ``Host``); ``Origin: null`` is refused; 403 with a one-line message. Requests
with neither header (curl, scripts) are served. The app sends no CORS headers.

**Host check (DNS rebinding).** A web page on another site can make a browser send requests
to this server under the page's own host name (DNS rebinding); the browser then sends that
name in the ``Host`` header. The app answers only requests whose ``Host`` (without the port)
is in ``allowed_hosts`` and refuses the others with HTTP 400 and a one-line message.
:func:`allowed_hosts_for` gives the rule ``stablemotion serve`` uses: bound to a loopback
address, that address plus ``localhost``, ``127.0.0.1`` and ``[::1]``; bound to a wildcard
(``0.0.0.0``, ``::``), the loopback names only; bound to any other address, that address
only; plus the names given with ``--allowed-hosts`` (the names under which users reach the
server: its DNS name, its LAN address). ``*`` turns the check off (behind a reverse proxy
that checks the host itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import logging
import math
import os
import secrets
import shutil
import stat
import tempfile
import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from PIL import Image, ImageOps, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..core.flow import write_flow
from ..core.image_processing import prepare_mask
from ..core.large_image import (
    MAX_WORK_PIXELS,
    MIN_WORK_PIXELS,
    memory_bound,
    working_size,
)
from ..io.images import PathLike, check_single_frame, image_to_rgb, mask_array
from ..model.service import RectifyRequest, unchanged_reason, unchanged_result, write_results
from ..model.service import rectify as rectify_request
from ..tasks import MASK_CONDITIONS, describe_model_tasks, get_task

__all__ = ["AppLimits", "ModelSpec", "admission_memory_bound", "allowed_hosts_for", "create_app", "memory_bound",
           "peak_memory_bound", "remove_dead_result_folders", "working_size"]

log = logging.getLogger(__name__)

#: What a task's model may be given as: ``None`` (the bundled model), a pipeline folder or
#: hub id (loaded on first use), or a ready pipeline (anything called like
#: :class:`~stablemotion.model.pipeline.StableMotionPipeline` with ``output_type="np"``).
ModelSpec = Any

#: PIL format name -> what the page calls it.
ACCEPTED_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP", "BMP": "BMP", "TIFF": "TIFF", "GIF": "GIF"}
#: Files a result may have (``GET /api/results/{id}/{name}``).
RESULT_FILES = ("rectified.png", "flow.png", "uncertainty.png", "mask.png", "flow.npy", "flow.flo")
#: The ``task`` form value that chooses the task from the image (:mod:`stablemotion.model.task_choice`).
AUTO = "auto"
#: What ``/api/info`` and the page say about it.
AUTO_DESCRIPTION = ("detect the task from the image: a flat empty border means sir, otherwise a small classifier "
                    "tells rsc, rotation, lens or no distortion")
#: Host names always allowed when the server listens on a loopback or wildcard address.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


#: Folders of results are named ``<prefix><random>`` in the result root; see :class:`_Results`.
RESULT_PREFIX = "stablemotion-app-"
#: The file a live server keeps ``flock``-ed in its result folder.
RESULT_LOCK = ".lock"
#: Bytes per pixel an admitted request holds between decoding and inference (RGB image and an
#: RGB mask; a derived mask is 1 B/px).
HELD_BYTES_PER_PIXEL = 6
#: Bytes per pixel of one decode at its peak, above the compressed upload (PIL's image, the array
#: copied from it, EXIF rotation's copy, for the image and its mask).
DECODE_BYTES_PER_PIXEL = 12
#: Per-server slack of the admission bound: multipart parsing buffers, responses, thread stacks.
ADMISSION_SLACK = 48 * 2**20


@dataclass(frozen=True)
class AppLimits:
    """Input and connection limits of the app (the input limits are shown on the page)."""

    max_upload_bytes: int = 10 * 1024 * 1024  #: per uploaded file
    max_side: int = 4096  #: max width and height, pixels
    min_side: int = 8  #: min width and height, pixels
    max_steps: int = 50  #: denoising steps
    max_ensemble: int = 8  #: ensemble members
    max_queue: int = 8  #: requests admitted (uploading, decoding, waiting or running); more get 503
    max_work_pixels: int = MAX_WORK_PIXELS  #: larger images run the pipeline shrunk to this many pixels
    max_decodes: int = 2  #: uploads decoded at the same time
    max_connections: int = 64  #: open connections (enforced by the server: ``app_server.server_options``)
    body_timeout: float = 60.0  #: seconds for a whole request body to arrive; later: 408
    body_idle_timeout: float = 20.0  #: seconds without a byte of the body; then 408
    header_timeout: float = 10.0  #: seconds for a request's headers to arrive (``app_server.server_options``)

    def __post_init__(self) -> None:
        for key, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"app limit {key} must be a finite number, got {value!r}")
            if key.endswith("timeout"):
                if not 0 < value <= 3600:
                    raise ValueError(f"app limit {key} must be > 0 and <= 3600 seconds, got {value}")
            elif not isinstance(value, int) or value < 1:
                raise ValueError(f"app limit {key} must be a whole number >= 1, got {value}")
        if self.min_side > self.max_side:
            raise ValueError(f"min_side {self.min_side} > max_side {self.max_side}")
        if self.max_work_pixels < MIN_WORK_PIXELS:
            raise ValueError(f"max_work_pixels must be >= {MIN_WORK_PIXELS} (64 x 64), got {self.max_work_pixels}")
        if self.max_connections <= self.max_queue + 1:
            raise ValueError(f"max_connections ({self.max_connections}) must be more than max_queue + 1 "
                             f"({self.max_queue + 1}): the page polls the status while its request waits")


def admission_memory_bound(limits: AppLimits) -> int:
    """Upper estimate of what the admitted requests hold besides the running inference, bytes.

    Each of the ``max_queue`` admitted requests holds its compressed files (at most 2 x
    ``max_upload_bytes``: image and mask) until they are decoded, then its decoded arrays
    (:data:`HELD_BYTES_PER_PIXEL` per pixel of a ``max_side`` square); at most
    ``max_decodes`` decodes run at once (:data:`DECODE_BYTES_PER_PIXEL` each at their peak).
    Requests beyond ``max_queue`` are refused before their body is read and cost nothing.
    """
    pixels = limits.max_side**2
    held = limits.max_queue * (2 * limits.max_upload_bytes + HELD_BYTES_PER_PIXEL * pixels)
    return held + limits.max_decodes * DECODE_BYTES_PER_PIXEL * pixels + ADMISSION_SLACK


def peak_memory_bound(limits: AppLimits) -> int:
    """Upper estimate of the app's peak memory above the loaded models for the worst admitted mix, bytes.

    ``max_queue`` requests of the largest size: :func:`admission_memory_bound` plus the running
    request's :func:`memory_bound` at ``max_side`` x ``max_side`` with ``max_ensemble`` members.
    About 3.2 GiB with the default limits.
    """
    inference = memory_bound(limits.max_side, limits.max_side, limits.max_ensemble, limits.max_work_pixels)
    return admission_memory_bound(limits) + inference


class _InputError(HTTPException):
    """A user-fixable problem with the request: its message is shown on the page."""

    def __init__(self, message: str, status: int = 400, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status, detail=message, headers=headers)


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


class _BodyGuard:
    """ASGI middleware: a request body must arrive in time; a client gone mid-upload is logged in one line.

    The whole body must arrive within ``total`` seconds of the request's headers, with no gap
    over ``idle`` seconds; otherwise the app answers 408 and closes the connection (a stalled
    upload would otherwise hold its queue slot and its buffers for ever). Once the body is
    complete, ``receive`` is passed through untimed (responses listen on it for a disconnect).
    """

    def __init__(self, app: ASGIApp, total: float, idle: float) -> None:
        self.app, self.total, self.idle = app, total, idle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.total
        done = False

        async def timed() -> Message:
            nonlocal done
            if done:
                return await receive()
            left = deadline - loop.time()
            wait = min(left, self.idle)
            try:
                if wait <= 0:
                    raise asyncio.TimeoutError
                msg = await asyncio.wait_for(receive(), wait)
            except asyncio.TimeoutError:  # TimeoutError from Python 3.11
                what = f"within {self.total:g} s" if left <= self.idle else f"for {self.idle:g} s"
                raise _InputError(f"the upload stalled: the request body did not arrive {what}; try again",
                                  408, headers={"Connection": "close"}) from None
            done = msg["type"] != "http.request" or not msg.get("more_body", False)
            return msg

        try:
            await self.app(scope, timed, send)
        except ClientDisconnect:  # nobody is left to answer: one line, not a traceback
            client = scope.get("client") or ("?", 0)
            log.info("client %s:%s disconnected during %s %s", client[0], client[1], scope["method"], scope["path"])


# --------------------------------------------------------------------------- Host check
def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def normalise_host(value: str, what: str = "allowed host") -> str:
    """A host name or address as the Host check compares it: lower case, no brackets, no trailing dot.

    ``*`` (any host) passes through. Raises ``ValueError`` for a scheme, port, path or
    anything else that is not a bare name or address.
    """
    v = value.strip().lower()
    if v == "*":
        return v
    if v.startswith("[") and v.endswith("]"):
        v = v[1:-1]
        if ":" not in v or not _is_ip(v):
            raise ValueError(f"{what} {value!r} is not an IPv6 address in brackets (e.g. [::1])")
        return v
    if ":" in v and not _is_ip(v):
        raise ValueError(f"{what} {value!r} must be a host name or address without scheme or port "
                         "(e.g. app.example or 192.168.1.5)")
    v = v.rstrip(".")
    if not v or any(c in v for c in "/@ \t?#[]"):
        raise ValueError(f"{what} {value!r} must be a host name or address without scheme, port or path "
                         "(e.g. app.example or 192.168.1.5)")
    return v


def allowed_hosts_for(bind_host: str, extra: Sequence[str] = ()) -> list[str]:
    """The ``Host`` names the app answers to when it listens on ``bind_host`` (``serve``'s rule).

    * a loopback address (``127.0.0.1``, ``::1``, ``localhost``): that address and
      ``localhost``, ``127.0.0.1``, ``::1``;
    * a wildcard (``0.0.0.0``, ``::``): ``localhost``, ``127.0.0.1``, ``::1`` only (the
      server's own names and addresses are not known: list them in ``extra``);
    * any other address or name: that one only;

    plus ``extra`` (``--allowed-hosts``). ``*`` in ``extra`` allows any host.
    """
    bind = normalise_host(bind_host, "--host")
    hosts: list[str] = []
    if bind in ("0.0.0.0", "::"):
        hosts += LOOPBACK_HOSTS
    elif bind == "localhost" or (_is_ip(bind) and ipaddress.ip_address(bind).is_loopback):
        hosts += [bind, *LOOPBACK_HOSTS]
    else:
        hosts.append(bind)
    hosts += [normalise_host(h) for h in extra]
    return list(dict.fromkeys(hosts))


def _request_host(header: bytes | None) -> str | None:
    """The host part of a ``Host`` header (port and IPv6 brackets removed, lower case), or None."""
    if not header:
        return None
    value = header.decode("latin-1").strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else None
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".") or None


def _shown_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _HostCheck:
    """ASGI middleware: answer only requests whose ``Host`` is allowed; others get 400 (DNS rebinding)."""

    def __init__(self, app: ASGIApp, hosts: Sequence[str]) -> None:
        self.app = app
        self.hosts = frozenset(hosts)
        self.any = "*" in self.hosts
        self.listed = ", ".join(_shown_host(h) for h in hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.any or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        raw = dict(scope["headers"]).get(b"host")
        host = _request_host(raw)
        if host in self.hosts:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if host is None:
            message = f"the request has no valid Host header; this server answers to {self.listed}"
        else:
            name = _shown_host(host)[:100]
            message = (f"this server does not answer to the host name {name!r} (it answers to {self.listed}); "
                       f"if that is how you reach it, start it with --allowed-hosts {name}")
        await JSONResponse({"detail": message}, status_code=400)(scope, receive, send)


#: Methods that change nothing: not subject to the Origin check.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _origin_host(value: str) -> str | None:
    """The host of an ``Origin`` or ``Referer`` value (an http(s) URL) as the Host check compares it, or None."""
    try:
        parts = urllib.parse.urlsplit(value.strip())
        host = parts.hostname  # lower case, IPv6 brackets removed
        _ = parts.port  # a malformed port raises ValueError
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not host:
        return None  # "null" (sandboxed pages, file:// pages), other schemes
    return host.rstrip(".")


class _OriginCheck:
    """ASGI middleware: refuse state-changing requests sent by pages of other sites (cross-site request forgery).

    A browser names the page that sent a request in ``Origin`` (or, on older browsers, only in
    ``Referer``). For methods other than GET/HEAD/OPTIONS, that page's host must be one the
    app answers to (``hosts``; with ``*``, the request's own ``Host``); ``Origin: null`` is
    refused. Requests with neither header (curl, scripts) are not from a page and pass. No
    CORS headers are ever sent, so other sites cannot read any answer either.
    """

    def __init__(self, app: ASGIApp, hosts: Sequence[str]) -> None:
        self.app = app
        self.hosts = frozenset(hosts)
        self.any = "*" in self.hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        origin, referer = headers.get(b"origin"), headers.get(b"referer")
        if origin is None and referer is None:
            await self.app(scope, receive, send)
            return
        name, raw = ("Origin", origin) if origin is not None else ("Referer", referer)
        value = (raw or b"").decode("latin-1").strip()
        host = _origin_host(value)
        allowed = self.hosts if not self.any else {_request_host(headers.get(b"host"))}
        if host is not None and host in allowed:
            await self.app(scope, receive, send)
            return
        message = (f"cross-origin request refused: it was sent by the page {value[:100]!r} ({name} header), "
                   "not by this app's own page; open the app at its own address")
        await JSONResponse({"detail": message}, status_code=403)(scope, receive, send)


# --------------------------------------------------------------------------- models
def _served(pipe: Any) -> tuple[str, ...] | None:
    """The tasks a pipeline serves (``pipe.tasks``, else ``pipe.task``), or None when it does not say (a test double)."""
    tasks = getattr(pipe, "tasks", None)
    if isinstance(tasks, Mapping) and tasks:
        return tuple(tasks)
    name = getattr(getattr(pipe, "task", None), "name", None)
    return (name,) if isinstance(name, str) else None


def _check_serves(pipe: Any, task: str, what: str) -> None:
    """Raise ``ValueError`` unless ``pipe`` serves ``task`` (pipelines that do not say are trusted)."""
    served = _served(pipe)
    if served is not None and task not in served:
        raise ValueError(f"the model {what} is {describe_model_tasks(served)}, not {task!r}")


class _Models:
    """The model of each task, loaded on first use (in the inference thread) and kept.

    Tasks given the same model (one bundled folder, one path, one pipeline object) share one
    loaded pipeline: a multi-task model is loaded once however many of its tasks are served.
    """

    def __init__(self, models: Mapping[str, ModelSpec], device: str | torch.device, dtype: torch.dtype) -> None:
        from ..model.catalog import BUNDLED_MODELS

        self._specs = dict(models)
        self.inference: dict[str, Any] = {}  # pipeline keywords for every request (serve's options)
        self._loaded: dict[tuple[str, str], Any] = {}  # by _key: one pipeline per folder / hub id / object
        self.loads = 0  # pipelines loaded from disk or the hub
        self._lock = threading.Lock()
        self.device, self.dtype = torch.device(device), dtype
        self.names: dict[str, str] = {}
        for task, spec in self._specs.items():
            if task == AUTO:
                raise ValueError(f"{AUTO!r} is the app's automatic task choice; it cannot name a task model")
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
                _check_serves(spec, task, self.names[task])  # a ready pipeline: checked now
        if not self._specs:
            raise ValueError("the app needs at least one task model")

    @property
    def tasks(self) -> list[str]:
        return list(self._specs)

    def _key(self, task: str) -> tuple[str, str]:
        """What identifies the model of ``task``: its resolved folder, its hub id or the object's identity."""
        from ..model.catalog import bundled_model_path

        spec = self._specs[task]
        if spec is None:
            return "path", str(bundled_model_path(task).resolve())
        if isinstance(spec, (str, os.PathLike)):
            path = Path(spec)
            return ("path", str(path.resolve())) if path.exists() else ("hub", str(spec))
        return "object", str(id(spec))

    def get(self, task: str) -> Any:
        with self._lock:
            key = self._key(task)
            if key not in self._loaded:
                self._loaded[key] = self._load(task, self._specs[task])
            pipe = self._loaded[key]  # kept even when it does not serve ``task``: it may serve others
        try:
            _check_serves(pipe, task, key[1] if key[0] != "object" else self.names[task])
        except ValueError as exc:  # the server's models are wrong, not the request: a 500
            raise RuntimeError(str(exc)) from None
        return pipe

    def _load(self, task: str, spec: ModelSpec) -> Any:
        from ..model.catalog import bundled_model_path
        from ..model.loading import load_pipeline

        if spec is not None and not isinstance(spec, (str, os.PathLike)):
            return spec  # a ready pipeline (or a test double): used as given
        path = bundled_model_path(task) if spec is None else spec
        log.info("loading the %s model from %s", task, path)
        pipe = load_pipeline(path, self.dtype, progress=spec is not None)
        self.loads += 1
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(self.device)


# --------------------------------------------------------------------------- inference queue
class _Queue:
    """Admission and the one inference worker thread (counted on the event loop only).

    A request is admitted (:meth:`admit`) before its body is read and holds its slot until
    it is answered: at most ``max_pending`` requests upload, decode, wait or run at once, so
    their memory is bounded (:func:`admission_memory_bound`); more are refused with 503.
    """

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self.pending = 0  # admitted
        self.running = 0  # submitted to the worker (waiting for it or running)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stablemotion-inference")

    def state(self) -> dict[str, Any]:
        return {"busy": self.pending > 0, "pending": self.pending, "max_queue": self.max_pending}

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one of the ``max_pending`` slots; 503 with Retry-After when none is free."""
        if self.pending >= self.max_pending:
            raise HTTPException(
                503, f"the server is busy ({self.pending} requests queued); try again in a moment",
                headers={"Retry-After": "5"},
            )
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1

    async def run(self, fn: Callable[[], Any]) -> tuple[Any, int]:
        """Run ``fn`` on the worker; returns its result and how many requests were ahead of it."""
        ahead = self.running
        self.running += 1
        try:
            return await asyncio.wrap_future(self._executor.submit(fn)), ahead
        finally:
            self.running -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- results on disk
def _lock(fd: int) -> bool:
    """Take an exclusive ``flock`` on ``fd`` without waiting; False when another open file holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def remove_dead_result_folders(parent: PathLike) -> list[Path]:
    """Remove the result folders in ``parent`` left by servers that are gone (``kill -9``, a crash).

    A live server keeps :data:`RESULT_LOCK` in its folder ``flock``-ed; a folder whose lock can
    be taken belongs to a dead server. Only folders named ``stablemotion-app-*`` that are real
    directories (never symlinks) owned by this user, with a lock file, are considered; a folder
    without one (being created, or an older version's) is left alone. Returns the removed folders.
    """
    if fcntl is None:  # not POSIX: no flock to tell the dead from the living
        return []
    removed = []
    try:
        entries = [e for e in os.scandir(parent) if e.name.startswith(RESULT_PREFIX)]
    except OSError:
        return []
    for entry in entries:
        try:
            folder = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:  # a symlink, a file, gone
            continue
        try:
            if os.fstat(folder).st_uid != os.getuid():
                continue
            try:
                fd = os.open(RESULT_LOCK, os.O_RDWR | os.O_NOFOLLOW, dir_fd=folder)
            except OSError:
                continue
            try:
                if _lock(fd) and stat.S_ISDIR(os.lstat(entry.path).st_mode):
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed.append(Path(entry.path))
            finally:
                os.close(fd)
        finally:
            os.close(folder)
    for path in removed:
        log.info("removed %s, the results of a server that is gone", path)
    return removed


class _Results:
    """The newest ``keep`` results, one folder each under a temporary directory.

    The directory (``<root>/stablemotion-app-*``) holds :data:`RESULT_LOCK`, ``flock``-ed while
    this server lives; on start, the folders of dead servers are removed
    (:func:`remove_dead_result_folders`), and :meth:`close` removes this one.
    """

    def __init__(self, keep: int, root: PathLike | None = None) -> None:
        if keep < 1:
            raise ValueError(f"max_results must be >= 1, got {keep}")
        self.keep = keep
        parent = Path(tempfile.gettempdir() if root is None else root)
        remove_dead_result_folders(parent)
        self.root = Path(tempfile.mkdtemp(prefix=RESULT_PREFIX, dir=parent))
        self._lock_fd: int | None = None
        if fcntl is not None:
            # locked under a temporary name, then renamed: a lock file others can see is always held
            pending = self.root / f"{RESULT_LOCK}.new"
            self._lock_fd = os.open(pending, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            _lock(self._lock_fd)
            os.write(self._lock_fd, f"{os.getpid()}\n".encode())
            os.rename(pending, self.root / RESULT_LOCK)
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
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


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
    if not isinstance(task, str) or task not in (*tasks, AUTO):
        raise _InputError(f"unknown task {str(task)[:20]!r}; this server has {', '.join(tasks)} (or {AUTO})")
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
        check_single_frame(im, f"the {label} file")  # an animation: which frame was meant is unknown
    except ValueError as exc:
        raise _InputError(str(exc)) from None
    except (OSError, SyntaxError) as exc:  # counting the frames read a corrupt one
        raise _InputError(f"the {label} file is corrupt or truncated ({im.format}: {exc})") from None
    try:
        im.load()
        return ImageOps.exif_transpose(im)  # as the browser shows it
    except (OSError, ValueError, SyntaxError) as exc:
        raise _InputError(f"the {label} file is corrupt or truncated ({im.format}: {exc})") from None


def _to_rgb(im: Image.Image) -> np.ndarray:
    """The upload as RGB by the package's one rule (:func:`~stablemotion.io.images.image_to_rgb`), refusals worded for the page.

    The library's messages name command-line options (``--grey convert``, ``--mask alpha``);
    which rule refused is found by retrying with that rule relaxed, and the page's own words
    are used instead.
    """
    try:
        return image_to_rgb(im, name="the image")[0]
    except ValueError as refused:
        for grey, alpha, message in (
            ("convert", "refuse", "the image is a grey (single-channel) picture; the models take colour (RGB) "
                                  "images: save it as RGB and upload it again"),
            ("refuse", "drop", "the image has transparent pixels (an alpha channel); save it without transparency "
                               "and upload it again (for SIR, upload the empty area as the mask file: "
                               "white = content, black = empty)"),
            ("convert", "drop", "the image is a grey picture with transparent pixels; save it as RGB without "
                                "transparency and upload it again"),
        ):
            try:
                image_to_rgb(im, name="the image", grey=grey, alpha=alpha)
            except ValueError:
                continue
            raise _InputError(message) from None
        raise _InputError(str(refused)) from None


def _needs_mask(task: str) -> bool:
    return any(c in MASK_CONDITIONS for c in get_task(task).conditions)


def _decode_inputs(
    image_data: bytes, mask_data: bytes | None, task: str | None, limits: AppLimits
) -> tuple[np.ndarray, np.ndarray | None]:
    """-> image uint8 (H, W, 3), the uploaded mask as read (uint8 (H, W[, 3]), white = valid) or None.

    ``task`` None (auto: not chosen yet): an uploaded mask is read whatever the task turns out to be;
    otherwise a task without a mask refuses one before reading it.
    """
    image = _to_rgb(_open_image(image_data, "image", limits))
    if task is not None and mask_data is not None and not _needs_mask(task):
        raise _InputError(f"the {task} task takes no mask; remove the mask file")
    return image, None if mask_data is None else mask_array(_open_image(mask_data, "mask", limits))


def _task_mask(image: np.ndarray, given: np.ndarray | None, task: str, why: str = "") -> tuple[np.ndarray | None, str]:
    """-> the mask ``task`` runs with (SIR: ``given`` checked, or derived from the empty border; else None)
    and a note on it. ``why`` ends the "takes no mask" message (auto: how the task was chosen)."""
    if not _needs_mask(task):
        if given is not None:
            raise _InputError(f"the {task} task takes no mask; remove the mask file{why}")
        return None, ""
    try:
        mask, note = prepare_mask(image, given)
    except ValueError as exc:
        raise _InputError(str(exc)) from None
    return mask, note.replace("derived mask from", "mask derived from")


def _choose_task(image: np.ndarray, tasks: Sequence[str], threshold: float) -> Any:
    """Run on the inference worker: :func:`~stablemotion.model.task_choice.choose_task` for ``image``.

    Returns its :class:`~stablemotion.model.task_choice.TaskChoice` when it names a task of this
    server; otherwise raises a 422 saying why (the messages of ``rectify --task auto``).
    """
    from ..model.task_choice import choose_task

    choice = choose_task(image, threshold=threshold)
    log.info("auto: task %s (%.0f%%): %s", choice.task or "undecided", 100 * choice.confidence, choice.reason)
    if choice.task is None:
        raise _InputError(f"cannot tell the task (best guess {choice.best} at {choice.confidence:.0%}): "
                          "choose the task", 422)
    if choice.task == "none":
        raise _InputError("no distortion recognised (the classifier sees an ordinary photo); choose a task to "
                          "rectify it anyway", 422)
    if choice.task not in tasks:
        raise _InputError(f"the image looks like a {choice.task} task ({choice.confidence:.0%}) but this server has "
                          f"no {choice.task} model (it has {', '.join(tasks)}); choose a task to rectify it anyway", 422)
    return choice


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
) -> dict[str, Any]:
    """Run on the inference worker: rectify ``request`` with the rectify service and write the result
    files into ``folder`` (:mod:`stablemotion.model.service`) -> the answer's metadata.

    Images over ``max_work_pixels`` run the pipeline at :func:`working_size` and are warped
    at full size with its flow (see the module docstring); the others as ``rectify`` does. An
    image the service leaves unchanged (zero flow) does not load the model.
    """
    reason = unchanged_reason(request)
    if reason:
        res = unchanged_result(request, reason)
    else:
        res = rectify_request(models.get(params.task), request, max_work_pixels=max_work_pixels,
                              seed=params.seed, num_inference_steps=params.steps,
                              ensemble_size=params.ensemble, **dict(getattr(models, "inference", {})))
    paths = {key: folder / name for key, name in _RESULT_NAMES.items()
             if key != "uncertainty_color" or res.spread is not None}
    files = [path.name for path in write_results(res, paths, png_compress_level=3)]
    files.insert(files.index("flow.npy") + 1, "flow.flo")  # written on its first download
    info: dict[str, Any] = {"seconds": round(res.seconds, 3), "flow_max_px": round(res.flow_max, 3),
                            "work_width": res.work_size[1], "work_height": res.work_size[0]}
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
    task_threshold: float = 0.6,
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
        task_threshold: ``task=auto``: the task classifier's least confidence to act on
            (:func:`~stablemotion.model.task_choice.choose_task`'s ``threshold``).
    """
    from ..model.catalog import BUNDLED_MODELS

    limits = AppLimits(max_upload_bytes=max_upload_bytes, max_side=max_side, min_side=min_side, max_steps=max_steps,
                       max_ensemble=max_ensemble, max_queue=max_queue, max_work_pixels=max_work_pixels,
                       max_decodes=max_decodes, max_connections=max_connections, body_timeout=body_timeout,
                       body_idle_timeout=body_idle_timeout, header_timeout=header_timeout)
    if not 0.0 <= task_threshold <= 1.0:
        raise ValueError(f"task_threshold must be in [0, 1], got {task_threshold}")
    hosts = list(LOOPBACK_HOSTS) if allowed_hosts is None else [normalise_host(h) for h in allowed_hosts]
    if not hosts:
        raise ValueError("allowed_hosts is empty: the app would refuse every request (give '*' to allow any host)")
    registry = _Models({t: None for t in BUNDLED_MODELS} if models is None else models, device, torch_dtype)
    registry.inference = {k: v for k, v in dict(inference or {}).items() if v is not None}
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
    app.add_middleware(_OriginCheck, hosts=hosts)
    app.add_middleware(_HostCheck, hosts=hosts)
    app.add_middleware(_BodyGuard, total=limits.body_timeout, idle=limits.body_idle_timeout)  # added last: runs first
    app.state.limits, app.state.models, app.state.queue, app.state.results = limits, registry, queue, results
    app.state.allowed_hosts = hosts

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

    decodes = asyncio.Semaphore(limits.max_decodes)

    @app.post("/api/rectify")
    async def rectify(request: Request) -> dict[str, Any]:
        with queue.admit():  # before the body is read: a refused request costs no memory
            return await _rectify_admitted(request)

    async def _rectify_admitted(request: Request) -> dict[str, Any]:
        async with request.form(max_files=2, max_fields=8) as form:
            params = _parse_params(form, registry.tasks, limits)
            image_data = await _read_upload(form, "image", "image", limits)
            mask_data = await _read_upload(form, "mask", "mask", limits)
        if image_data is None:
            raise _InputError("no image uploaded (form field 'image')")
        auto = params.task == AUTO

        def decode(image_data: bytes, mask_data: bytes | None) -> tuple[
                np.ndarray, np.ndarray | None, np.ndarray | None, str]:
            image, given = _decode_inputs(image_data, mask_data, None if auto else params.task, limits)
            mask, note = (None, "") if auto else _task_mask(image, given, params.task)
            return image, given, mask, note

        async with decodes:
            image, given, mask, mask_note = await run_in_threadpool(decode, image_data, mask_data)
        del image_data, mask_data  # a waiting request holds its decoded arrays only

        def job() -> dict[str, Any]:
            task, choice, work_mask, note = params.task, None, mask, mask_note
            if auto:  # chosen here, on the worker: the classifier is a model too
                choice = _choose_task(image, registry.tasks, task_threshold)
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
        rid, task, choice, meta = done["id"], done["task"], done["choice"], done["meta"]
        urls = {name: f"/api/results/{rid}/{name}" for name in meta.pop("files")}
        return {
            "id": rid, "task": task, "model": registry.names[task],
            "auto": None if choice is None else {"confidence": round(float(choice.confidence), 3),
                                                 "reason": choice.reason},
            "width": int(image.shape[1]), "height": int(image.shape[0]),
            "steps": params.steps, "ensemble": params.ensemble, "seed": params.seed,
            "mask": done["mask"], "queued_behind": ahead, "urls": urls, **meta,
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

"""Admission of requests, the inference worker, the decode pool and the result folders.

A request is admitted before its body is read: at most ``max_queue`` requests are admitted
at once (uploading, decoding, waiting for the model or running); more get 503 with
``Retry-After`` at once, whatever they send. Admitted uploads are decoded ``max_decodes``
at a time. Inference runs on one worker thread (one request at a time on the CPU/GPU). So
the app's memory above its models is bounded whatever clients do: :func:`peak_memory_bound`
(about 3.2 GiB with the default :class:`AppLimits`).

Each server keeps its newest results in ``<tmp>/stablemotion-app-*`` holding a ``.lock``
file it keeps ``flock``-ed; on start it removes the folders of servers that are gone
(:func:`remove_dead_result_folders`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import shutil
import stat
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

from fastapi import HTTPException

from ..core.large_image import MAX_WORK_PIXELS, MIN_WORK_PIXELS, memory_bound
from ..io.images import PathLike

__all__ = ["ADMISSION_SLACK", "DECODE_BYTES_PER_PIXEL", "HELD_BYTES_PER_PIXEL", "RESULT_FILES", "RESULT_LOCK",
           "RESULT_PREFIX", "AppLimits", "admission_memory_bound", "peak_memory_bound", "remove_dead_result_folders"]

log = logging.getLogger(__name__)

#: Files a result may have (``GET /api/results/{id}/{name}``).
RESULT_FILES = ("rectified.png", "flow.png", "uncertainty.png", "mask.png", "flow.npy", "flow.flo")
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
    """Input and connection limits of the app (the input limits are shown on the page).

    Example:
        >>> AppLimits(max_side=2048).max_side
        2048
        >>> AppLimits(max_queue=64)
        Traceback (most recent call last):
        ValueError: max_connections (64) must be more than max_queue + 1 (65): the page polls the status while its request waits
    """

    max_upload_bytes: int = 10 * 1024 * 1024  #: per uploaded file
    max_side: int = 4096  #: max width and height, pixels
    min_side: int = 8  #: min width and height, pixels
    max_steps: int = 50  #: denoising steps
    max_ensemble: int = 8  #: ensemble members
    max_queue: int = 8  #: requests admitted (uploading, decoding, waiting or running); more get 503
    max_work_pixels: int = MAX_WORK_PIXELS  #: larger images run the pipeline shrunk to this many pixels
    max_decodes: int = 2  #: uploads decoded at the same time
    max_connections: int = 64  #: open connections (enforced by the server: ``server_options.server_options``)
    body_timeout: float = 60.0  #: seconds for a whole request body to arrive; later: 408
    body_idle_timeout: float = 20.0  #: seconds without a byte of the body; then 408
    header_timeout: float = 10.0  #: seconds for a request's headers to arrive (``server_options.server_options``)

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

    Example:
        >>> round(admission_memory_bound(AppLimits()) / 2**30, 2)  # GiB, the default limits
        1.33
        >>> admission_memory_bound(AppLimits(max_side=2048, max_queue=2, max_upload_bytes=2**20))
        205520896
    """
    pixels = limits.max_side**2
    held = limits.max_queue * (2 * limits.max_upload_bytes + HELD_BYTES_PER_PIXEL * pixels)
    return held + limits.max_decodes * DECODE_BYTES_PER_PIXEL * pixels + ADMISSION_SLACK


def peak_memory_bound(limits: AppLimits) -> int:
    """Upper estimate of the app's peak memory above the loaded models for the worst admitted mix, bytes.

    ``max_queue`` requests of the largest size: :func:`admission_memory_bound` plus the running
    request's :func:`memory_bound` at ``max_side`` x ``max_side`` with ``max_ensemble`` members.
    About 3.2 GiB with the default limits.

    Example:
        >>> round(peak_memory_bound(AppLimits()) / 2**30, 2)  # GiB: 1.33 admitted + 1.84 running
        3.17
    """
    inference = memory_bound(limits.max_side, limits.max_side, limits.max_ensemble, limits.max_work_pixels)
    return admission_memory_bound(limits) + inference


# --------------------------------------------------------------------------- inference queue
class _Queue:
    """Admission and the one inference worker thread (counted on the event loop only).

    A request is admitted (:meth:`admit`) before its body is read and holds its slot until
    it is answered: at most ``max_pending`` requests upload, decode, wait or run at once, so
    their memory is bounded (:func:`admission_memory_bound`); more are refused with 503.
    Admitted uploads decode ``max_decodes`` at a time (``async with queue.decodes``).
    """

    def __init__(self, max_pending: int, max_decodes: int = AppLimits.max_decodes) -> None:
        self.max_pending = max_pending
        self.decodes = asyncio.Semaphore(max_decodes)  # the decode pool: admitted uploads decoding at once
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


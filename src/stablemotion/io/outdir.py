"""The output folder of ``stablemotion rectify``: its lock, its manifest, and writes that never follow links.

Files rectify keeps in ``--out`` besides the results:

``.stablemotion-rectify.lock``
    Held with ``fcntl.flock`` for the whole run, so that two runs never write into one folder
    at once (the second is refused, naming the first one's pid and host). Removed at the end;
    one left by a killed run is not locked (the kernel drops the lock with the process) and
    is simply taken by the next run.
``.stablemotion-rectify.json``
    The manifest: every finished image (by file stem), the settings it was made with and the
    files written for it (format 2, below). A rerun skips exactly the images made with its own
    settings and refuses a folder holding images made with other ones.
``.stablemotion-rectify/``
    Per-process journals of finished images (one JSON line per image, merged into the
    manifest by the main process) and, under ``accelerate launch``/``torchrun``, each process's
    counts for the final summary.

Every one of these is created without following symbolic links (``O_NOFOLLOW``, exclusive
temporary files renamed into place): a link planted under one of these names is refused, and
the file it points to is never written.

Manifest format 2::

    {"format": 2,
     "settings": {"<key>": {<the settings record>}},
     "outputs": {"<stem>": {"settings": "<key>", "files": ["<stem>.png", "<stem>_flow.png"]}}}

``<key>`` is :func:`settings_key` of the record. A format-1 file (the bare settings record of
older versions) is read as one record for the whole folder.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .images import write_atomic

__all__ = [
    "JOURNAL_DIR", "LOCK_NAME", "MANIFEST_NAME", "FolderBusy", "FolderLock", "Journal", "Manifest",
    "check_not_link", "open_no_follow", "settings_key",
]

LOCK_NAME = ".stablemotion-rectify.lock"
MANIFEST_NAME = ".stablemotion-rectify.json"
JOURNAL_DIR = ".stablemotion-rectify"
_FORMAT = 2


def check_not_link(path: Path, what: str) -> None:
    """Raise ``ValueError`` if ``path`` is a symbolic link (rectify never writes through one).

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> (folder / "link").symlink_to(folder / "elsewhere")
        >>> check_not_link(folder / "link", "the output")
        Traceback (most recent call last):
        ...
        ValueError: the output .../link is a symbolic link; rectify never writes through links: ...
    """
    if path.is_symlink():
        raise ValueError(f"{what} {path} is a symbolic link; rectify never writes through links: "
                         "remove the link or choose another --out")


def open_no_follow(path: Path, flags: int, what: str, mode: int = 0o666) -> int:
    """``os.open`` of a regular file that refuses a symbolic link at ``path`` (``O_NOFOLLOW``) and anything
    else that is not a regular file (``O_NONBLOCK``: a FIFO there cannot hang the run) with a one-line
    ``ValueError``."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK) or path.is_symlink():  # EMLINK: FreeBSD's answer
            check_not_link(path, what)
        raise ValueError(f"cannot open {what} {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"{what} {path} is not a regular file; remove it or choose another --out")
    return fd


class FolderBusy(ValueError):
    """Another run holds the output folder's lock."""


class FolderLock:
    """An exclusive lock on an output folder for the life of a run.

    ``fcntl.flock`` on ``folder/.stablemotion-rectify.lock``, created without following links;
    the kernel drops the lock when the process ends, however it ends, so a killed run never
    leaves the folder locked. The file records the holder's pid and host for the message a
    second run prints, and is removed on release (a run that locked a file which was removed
    meanwhile notices it and locks the new one instead).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d, FolderLock(Path(d)):
        ...     FolderLock(Path(d)).acquire()
        Traceback (most recent call last):
        ...
        stablemotion.io.outdir.FolderBusy: another stablemotion rectify (pid ...) is writing to ...
    """

    def __init__(self, folder: Path, command: str = "stablemotion rectify") -> None:
        self.path = Path(folder) / LOCK_NAME
        self.command = command
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`FolderBusy` at once (never waits)."""
        for _ in range(100):
            fd = open_no_follow(self.path, os.O_RDWR | os.O_CREAT, "the lock file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _holder(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise FolderBusy(f"another {self.command}{holder} is writing to {self.path.parent}; wait for "
                                     "it to finish or choose another --out") from None
                raise ValueError(f"cannot lock {self.path} ({exc.strerror or exc}): a lock keeps two runs from "
                                 "writing into one folder; use a folder on a file system with file locks") from None
            try:  # the holder before us may have removed the file we opened: lock the one in the folder
                current = os.stat(self.path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                current = None
            if current != os.fstat(fd).st_ino:
                os.close(fd)
                continue
            info = {"pid": os.getpid(), "host": socket.gethostname(),
                    "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
            self._fd = fd
            return
        raise OSError(f"cannot lock {self.path}: it keeps being replaced")

    def release(self) -> None:
        """Remove the lock file and drop the lock."""
        if self._fd is not None:
            try:
                if os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(self._fd).st_ino:
                    self.path.unlink()
            except OSError:
                pass
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(fd: int) -> str:
    """`` (pid N on HOST, since T)`` from a lock file's content, or ``""`` if unreadable."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    host = info.get("host")
    here = host is None or host == socket.gethostname()
    return f" (pid {pid}{'' if here else f' on {host}'}, since {info.get('since', '?')})"


def settings_key(record: dict[str, Any]) -> str:
    """A short stable name of a settings record: the first 16 hex digits of the SHA-256 of its canonical JSON.

    Example:
        >>> settings_key({"steps": 1, "task": "sir"}) == settings_key({"task": "sir", "steps": 1})
        True
        >>> len(settings_key({"steps": 1}))
        16
    """
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass
class Manifest:
    """What an output folder holds: each finished image's settings and files (see the module docstring).

    Attributes:
        folder: the output folder.
        settings: settings records by :func:`settings_key`.
        outputs: by stem, ``{"settings": key, "files": [file names]}``.
        legacy: the single settings record of a format-1 file (older versions), else ``None``.
        found: whether the folder had a manifest file at all.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> man = Manifest.load(folder)  # no manifest yet: an empty one
        >>> key = settings_key({"task": "sir"})
        >>> man.settings[key] = {"task": "sir"}
        >>> man.record("a", key, ["a.png"])
        >>> man.save()
        >>> again = Manifest.load(folder)
        >>> again.found, again.outputs, again.present("a")  # a.png itself was never written
        (True, {'a': {'settings': '...', 'files': ['a.png']}}, False)
    """

    folder: Path
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    legacy: dict[str, Any] | None = None
    found: bool = False

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST_NAME

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        """Read ``folder``'s manifest (an empty one if there is none); a link or a damaged file is refused."""
        man = cls(Path(folder))
        check_not_link(man.path, "the manifest")
        if not man.path.exists():
            return man
        try:
            data = json.loads(man.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read {man.path} ({exc}); it records which images were made with which "
                             "settings: restore it, or use another --out") from None
        man.found = True
        if not isinstance(data, dict):
            raise ValueError(f"{man.path} is not a rectify manifest (a JSON object); use another --out")
        if data.get("format") is None:  # format 1: the bare settings record of the last run
            man.legacy = data
            return man
        if data.get("format") != _FORMAT or not isinstance(data.get("settings"), dict) \
                or not all(isinstance(v, dict) for v in data["settings"].values()) \
                or not isinstance(data.get("outputs"), dict):
            raise ValueError(f"{man.path} has an unknown format ({data.get('format')!r}, this version reads "
                             f"{_FORMAT}); use another --out or a newer stablemotion")
        for stem, entry in data["outputs"].items():
            if not (isinstance(entry, dict) and isinstance(entry.get("settings"), str)
                    and isinstance(entry.get("files"), list) and all(isinstance(f, str) for f in entry["files"])):
                raise ValueError(f"{man.path}: the entry of {stem!r} is damaged (expected settings and files); "
                                 "restore the file, or use another --out")
        man.settings, man.outputs = data["settings"], data["outputs"]
        return man

    def save(self, keep: Iterable[str] = ()) -> None:
        """Write the manifest atomically (a new file renamed into place: never through a link).

        Settings records no image uses are dropped, except those named in ``keep`` (the
        running settings, which the journals name by key only)."""
        check_not_link(self.path, "the manifest")
        used = {entry["settings"] for entry in self.outputs.values()} | set(keep)
        data = {"format": _FORMAT, "settings": {k: v for k, v in self.settings.items() if k in used},
                "outputs": dict(sorted(self.outputs.items()))}
        write_atomic(self.path, json.dumps(data, indent=1) + "\n")
        self.found, self.legacy = True, None

    def present(self, stem: str) -> bool:
        """Whether any file recorded for ``stem`` is still in the folder."""
        entry = self.outputs.get(stem)
        return entry is not None and any((self.folder / name).exists() for name in entry.get("files", ()))

    def record(self, stem: str, key: str, files: Iterable[str]) -> None:
        """Note ``stem`` as finished with settings ``key`` (in memory; :meth:`save` writes)."""
        self.outputs[stem] = {"settings": key, "files": sorted(files)}

    def forget(self, stems: Iterable[str]) -> None:
        """Drop ``stems`` (about to be rewritten: until they are finished, nothing vouches for their files)."""
        for stem in stems:
            self.outputs.pop(stem, None)

    def merge_journals(self) -> int:
        """Fold the per-process journals (:class:`Journal`) into the manifest and delete them -> entries read."""
        folder = self.folder / JOURNAL_DIR
        check_not_link(folder, "the state folder")
        if not folder.is_dir():
            return 0
        read = 0
        for path in sorted(folder.glob("journal-rank*.jsonl")):
            check_not_link(path, "the journal")
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                    self.record(entry["stem"], entry["settings"], entry["files"])
                    read += 1
                except (ValueError, KeyError, TypeError):  # a line cut short by a kill: that image is not vouched for
                    continue
        return read

    def clear_journals(self) -> None:
        """Delete the journals once merged (and saved)."""
        folder = self.folder / JOURNAL_DIR
        if folder.is_dir() and not folder.is_symlink():
            for path in folder.glob("journal-rank*.jsonl"):
                path.unlink(missing_ok=True)


class Journal:
    """One process's append-only record of the images it finished (``.stablemotion-rectify/journal-rankN.jsonl``).

    A line is appended once all of an image's files are in place, so a killed run leaves
    exactly the finished images recorded; the main process merges the journals into the
    :class:`Manifest`. Opened with ``O_APPEND | O_NOFOLLOW``.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> journal = Journal(folder, rank=0)
        >>> journal.add("a", "0123456789abcdef", ["a.png"])
        >>> journal.close()
        >>> man = Manifest.load(folder)
        >>> man.merge_journals(), man.outputs["a"]["files"]
        (1, ['a.png'])
    """

    def __init__(self, folder: Path, rank: int) -> None:
        state = Path(folder) / JOURNAL_DIR
        check_not_link(state, "the state folder")
        state.mkdir(exist_ok=True)
        self.path = state / f"journal-rank{rank}.jsonl"
        self._fd: int | None = open_no_follow(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, "the journal")

    def add(self, stem: str, key: str, files: Iterable[str]) -> None:
        """Record ``stem`` as finished with settings ``key`` and these file names."""
        if self._fd is None:
            raise ValueError(f"the journal {self.path} is closed")
        line = json.dumps({"stem": stem, "settings": key, "files": sorted(files)}) + "\n"
        os.write(self._fd, line.encode())

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

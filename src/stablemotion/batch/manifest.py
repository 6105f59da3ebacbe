"""The Parquet manifest of a Ray rectify run: one row per input, merged across reruns.

Columns (:data:`COLUMNS`), all strings except ``seconds``:

``input``     the input's path or URI (the row's key: a rerun's row replaces the previous one)
``output``    the rectified image's path
``task``      the task that ran (``sir``, ``rsc`` ...), or ``""`` when the image failed before the model
``status``    ``done`` (rectified), ``unchanged`` (written as it is, with the reason in ``error``),
              ``failed`` (the reason in ``error``; the other images went on), ``skipped`` (already done
              with the same settings by an earlier run: its files were left alone)
``error``     the reason of a failure or of an unchanged image, else ``""``
``settings``  the settings record the image was made with (canonical JSON; its
              :func:`~stablemotion.io.outdir.settings_key` is what the output folder's manifest records)
``seconds``   wall time of the image in its actor (reading, model, writing), float64; 0 when skipped

What a rerun skips is decided by the output folder's own manifest (``.stablemotion-rectify.json``,
shared with ``--engine local``, so either engine resumes the other's folder); this file is the
per-image record of what happened, for tooling (``pandas.read_parquet``, ``ray.data.read_parquet``).
It is written atomically (a temporary file renamed into place). pyarrow (a dependency of
``ray[data]``) is imported when it is read or written.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "manifest.parquet"
    >>> row = {"input": "a.png", "output": "out/a.png", "task": "sir", "status": "done", "error": "",
    ...        "settings": "{}", "seconds": 0.5}
    >>> write_manifest(path, [row])
    1
    >>> write_manifest(path, [{**row, "input": "b.png", "status": "failed", "error": "cannot decode"}])
    2
    >>> [(r["input"], r["status"]) for r in read_manifest(path)]
    [('a.png', 'done'), ('b.png', 'failed')]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..io.images import PathLike, atomic_path

__all__ = ["COLUMNS", "STATUSES", "read_manifest", "write_manifest"]

#: The manifest's columns, in order.
COLUMNS = ("input", "output", "task", "status", "error", "settings", "seconds")
#: The values of ``status``.
STATUSES = ("done", "unchanged", "failed", "skipped")


def read_manifest(path: PathLike) -> list[dict[str, Any]]:
    """The rows of the manifest at ``path`` (``[]`` when there is none), as dicts of :data:`COLUMNS`.

    Raises:
        ValueError: a file that is not a manifest of this layout (naming the file and the missing columns).

    Example:
        >>> read_manifest("/nonexistent/manifest.parquet")
        []
    """
    path = Path(path)
    if not path.is_file():
        return []
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several kinds for a damaged file
        raise ValueError(f"cannot read the manifest {path} ({type(exc).__name__}: {exc}); restore it or pass "
                         "another --manifest") from None
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{path} is not a rectify manifest: no column(s) {', '.join(missing)} "
                         f"(expected {', '.join(COLUMNS)})")
    return table.select(list(COLUMNS)).to_pylist()


def write_manifest(path: PathLike, rows: Iterable[Mapping[str, Any]]) -> int:
    """Merge ``rows`` into the manifest at ``path`` (a row replaces the earlier row of the same ``input``,
    except that a ``skipped`` row keeps the ``done``/``unchanged`` row of the run that made the image with
    the same settings) and write it atomically -> the number of rows now in it.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "m.parquet"
        >>> write_manifest(path, [{"input": "a", "status": "failed", "error": "x"}])
        1
        >>> read_manifest(path)[0]["seconds"], read_manifest(path)[0]["output"]
        (0.0, '')
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    merged = {row["input"]: row for row in read_manifest(path)}
    for row in rows:
        status = row.get("status", "")
        if status not in STATUSES:
            raise ValueError(f"manifest row of {row.get('input')!r}: status {status!r} is not one of {STATUSES}")
        earlier = merged.get(str(row["input"]))
        if status == "skipped" and earlier is not None and earlier["status"] in ("done", "unchanged") \
                and earlier["settings"] == row.get("settings"):
            continue  # the row of the run that made it says when and how
        merged[str(row["input"])] = row
    ordered = [merged[key] for key in sorted(merged)]
    schema = pa.schema([(c, pa.float64() if c == "seconds" else pa.string()) for c in COLUMNS])
    columns = {c: [float(r.get(c) or 0.0) if c == "seconds" else str(r.get(c) or "") for r in ordered]
               for c in COLUMNS}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(columns, schema=schema), tmp)
    return len(ordered)

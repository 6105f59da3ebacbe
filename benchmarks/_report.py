"""Shared helpers for benchmark scripts: machine description and BENCHMARKS.md sections.

Each benchmark owns one section of BENCHMARKS.md between ``<!-- NAME:start -->`` and
``<!-- NAME:end -->`` markers and rewrites only that section, so scripts can be rerun
independently and the numbers are never typed by hand.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shlex
import sys
from pathlib import Path

import torch

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
_HEADER = "# Benchmarks\n\nEvery table below is written by the script named in its section; rerun the command to regenerate it.\n"


def machine_description() -> str:
    """One line: CPU model, cores, torch version, date."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads){gpu}, "
        f"{_dt.date.today().isoformat()}"
    )


def command_line() -> str:
    """The command that ran this script, for the report."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(Path.cwd())
    except ValueError:
        pass
    return " ".join(shlex.quote(a) for a in ["python", str(script), *sys.argv[1:]])


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    def fmt(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name: str, title: str, body: str, path: Path = BENCHMARKS_MD) -> Path:
    """Replace (or append) the section ``name`` of BENCHMARKS.md, atomically."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = (
        f"{start}\n## {title}\n\nCommand: `{command_line()}`  \nMachine: {machine_description()}\n\n"
        f"{body.strip()}\n{end}"
    )
    text = path.read_text() if path.exists() else _HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path

"""``stablemotion`` command line: one sub-module per command group.

Every public module of this package defines ``register(subparsers)`` which adds its
sub-commands and sets ``func`` on them; modules are discovered, so adding a command
group means adding a module. Library errors a user can fix (bad paths,
shapes, configs) are printed as one ``error:`` line and exit status 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from typing import NoReturn

from .. import __version__


def _command_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, KeyError, TypeError)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``stablemotion rectify: error: argument --ensemble: must be
    an integer from 1 to 64, got '100000' (see stablemotion rectify --help)``, exit status 2
    (no usage block above it: the line names the option and what it takes). Sub-commands
    inherit it (argparse makes sub-parsers of the parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="stablemotion",
        description="One-step single-image motion estimation for image rectification (StableMotion).",
    )
    parser.add_argument("--version", action="version", version=f"stablemotion {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _command_modules():
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def _size_hint(args: argparse.Namespace) -> str:
    """What a too-large image's message suggests: the command's own option, or none."""
    if hasattr(args, "max_pixels"):
        return "raise it with --max-pixels if the file is genuine (0 = no limit)"
    return f"`stablemotion {args.command}` reads images up to this size"


#: Options that lower the memory a run needs, in the order to try them (an out-of-memory
#: message names those the command has).
MEMORY_OPTIONS = (("max_work_pixels", "a smaller --max-work-pixels"),
                  ("processing_resolution", "a smaller --processing-resolution"),
                  ("ensemble", "a smaller --ensemble"), ("max_pixels", "a smaller --max-pixels"),
                  ("decode_scale", "--decode-scale 2"), ("dtype", "--dtype bf16"), ("workers", "fewer --workers"))


def _out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if oom is not None and isinstance(exc, oom):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "not enough memory" in text)


def main(argv: Sequence[str] | None = None) -> int:
    from .._io import size_limit_hint

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 1
    try:
        with size_limit_hint(_size_hint(args)):
            return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        if args.debug:
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:
        if args.debug or not _out_of_memory(exc):
            raise
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        tries = [flag for dest, flag in MEMORY_OPTIONS if hasattr(args, dest)] or ["smaller inputs"]
        print(f"error: out of memory ({first}); try {', '.join(tries)}, or a device with more memory",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

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


def main(argv: Sequence[str] | None = None) -> int:
    from ..io.images import size_limit_hint
    from ._options import is_out_of_memory, out_of_memory_message

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
        if args.debug or not is_out_of_memory(exc):
            raise
        print(f"error: {out_of_memory_message(exc, args)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``lazyfs`` command: one small function per subcommand.

Every ``LazyfsError`` becomes one line on stderr and its class's exit code;
nothing else is caught, so a traceback always means a bug.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .errors import LazyfsError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lazyfs", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"lazyfs {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args) or 0
    except LazyfsError as e:
        print(f"lazyfs: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130

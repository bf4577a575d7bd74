"""The ``lazyfs`` command: the parser, and ``main``, which runs one command.

Every ``LazyfsError`` becomes one line on stderr and its class's exit code;
nothing else is caught, so a traceback always means a bug. Ctrl-C is the
exception: whichever task or thread it reached, the command stops with one
line, ``interrupted`` (and what was done, if the command says), exit 130,
and the partial downloads it leaves are deleted rather than kept for resume:
an interruption on purpose is not a crash.

Commands live in modules by what they work on (``images``, ``files``,
``mounts``, ``index``): adding one is a ``cmd_*`` function plus an ``_add_*``
parser block (built with ``options.add_command``, which brings the common
options) listed in its module's ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .._version import __version__
from ..errors import LazyfsError, show_warnings, single_error
from . import files, images, index, login, mounts, trace
from .options import HelpFormatter, add_common_options, opt
from .progress import interruption

EXIT_INTERRUPTED = 130
"""Ctrl-C, as a shell reports SIGINT."""
EXIT_BROKEN_PIPE = 141
"""The reader of stdout went away, as a shell reports SIGPIPE."""

COMMANDS = [*images.COMMANDS, *files.COMMANDS, *mounts.COMMANDS, *index.COMMANDS,
            *login.COMMANDS, *trace.COMMANDS]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lazyfs", usage="%(prog)s [-h] [--version] [global options] COMMAND ...",
        formatter_class=HelpFormatter,
        description="Mount and inspect container images straight from a registry, "
                    "fetching only the bytes that are read.")
    parser.add_argument("--version", action="version", version=f"lazyfs {__version__}")
    add_common_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", prog="lazyfs")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    if opt(args, "debug"):
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
    else:
        # Retries and fallbacks are logged for --debug and the mount's log file;
        # a failing command says one line, the error itself.
        logging.getLogger("lazyfs").addHandler(logging.NullHandler())
        logging.getLogger("lazyfs").propagate = False
        show_warnings()
    try:
        with single_error():
            return args.func(args) or 0
    except LazyfsError as e:
        print(f"lazyfs: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        return _interrupted(e)
    except BaseExceptionGroup as group:
        ki = interruption(group)
        if ki is None:
            raise
        return _interrupted(ki)
    except BrokenPipeError:
        # The reader went away (``lazyfs ls ... | head``): stop quietly, as cat does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _interrupted(e: KeyboardInterrupt) -> int:
    download = sys.modules.get("lazyfs.registry.download")
    if download is not None:
        download.discard_partials()
    detail = f": {e}" if str(e) else ""
    print(f"lazyfs: interrupted{detail}", file=sys.stderr)
    return EXIT_INTERRUPTED

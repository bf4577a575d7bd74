"""The ``lazyfs`` command: the parser, and ``main``, which runs one command.

Commands live in modules by what they work on (``images``, ``files``,
``mounts``, ``index``): adding one is a ``cmd_*`` function plus an ``_add_*``
parser block (built with ``options.add_command``, which brings the common
options) listed in its module's ``COMMANDS``. How a command's errors become
exit codes is ``run.py``.

A command a running ``lazyfs serve`` can answer is sent to it first
(``client.py``); only when none answers is the parser built and the command
run here. Both paths run the same code, so their output is the same; the
parser and everything it imports stay light (no trio, httpx or pyfuse3).
"""

from __future__ import annotations

import argparse
import logging
import sys

from .._version import __version__
from ..errors import show_warnings
from . import client
from .options import HelpFormatter, add_common_options, opt
from .run import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, check_stdout, flushed, run_args

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_INTERRUPTED", "build_parser", "commands", "main"]


def commands() -> list:
    from . import files, images, index, login, mounts, serve, trace
    return [*images.COMMANDS, *files.COMMANDS, *mounts.COMMANDS, *index.COMMANDS,
            *login.COMMANDS, *serve.COMMANDS, *trace.COMMANDS]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lazyfs", usage="%(prog)s [-h] [--version] [global options] COMMAND ...",
        formatter_class=HelpFormatter,
        description="Mount and inspect container images straight from a registry, "
                    "fetching only the bytes that are read.")
    parser.add_argument("--version", action="version", version=f"lazyfs {__version__}")
    add_common_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", prog="lazyfs")
    for add in commands():
        add(sub)
    # ``lazyfs serve`` parses and runs the commands it is asked, as main does
    parser.set_defaults(_parser=parser, _run=run_args)
    return parser


def main(argv: list[str] | None = None) -> int:
    check_stdout()
    answered = client.ask_service(sys.argv[1:] if argv is None else argv)
    if answered is not None:
        return flushed(answered)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error already printed
        return flushed(e.code if isinstance(e.code, int) else 2)
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
    return flushed(run_args(args))

"""Running one parsed command: every ``LazyfsError`` becomes one line on
stderr and its class's exit code; nothing else is caught, so a traceback
always means a bug. Ctrl-C is the exception: whichever task or thread it
reached, the command stops with one line, ``interrupted`` (and what was
done, if the command says), exit 130, and the partial downloads it leaves
are deleted rather than kept for resume: an interruption on purpose is not a
crash.

Apart from the parser so that a service can run commands the same way
(``lazyfs serve`` answers the CLI's questions with these very functions).
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import LazyfsError, single_error
from .progress import interruption

EXIT_INTERRUPTED = 130
"""Ctrl-C, as a shell reports SIGINT."""
EXIT_BROKEN_PIPE = 141
"""The reader of stdout went away, as a shell reports SIGPIPE."""


def run_args(args: argparse.Namespace) -> int:
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
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


def _interrupted(e: KeyboardInterrupt) -> int:
    download = sys.modules.get("lazyfs.registry.download")
    if download is not None:
        download.discard_partials()
    detail = f": {e}" if str(e) else ""
    print(f"lazyfs: interrupted{detail}", file=sys.stderr)
    return EXIT_INTERRUPTED

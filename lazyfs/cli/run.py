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
import io
import os
import sys

from ..errors import LazyfsError, single_error
from .progress import interruption

EXIT_INTERRUPTED = 130
"""Ctrl-C, as a shell reports SIGINT."""
EXIT_BROKEN_PIPE = 141
"""The reader of stdout went away, as a shell reports SIGPIPE."""


class _OutputError(LazyfsError):
    """Standard output could not be written (a full disk, an I/O error)."""


class _Stdout(io.FileIO):
    """File descriptor 1, whose failures other than a reader gone away say
    what they are as an error of ours, not a traceback (cat's "write error")."""

    def write(self, data) -> int:
        try:
            return super().write(data)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise _OutputError(f"cannot write to standard output: {e.strerror or e}") from None


def check_stdout() -> None:
    """Put ``_Stdout`` under ``sys.stdout`` (the command line's, not a
    service's: this is called by ``main`` only)."""
    old = sys.stdout
    try:
        fd = old.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return
    old.flush()
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(_Stdout(fd, "w", closefd=False)),
                                  encoding=old.encoding, errors=old.errors,
                                  line_buffering=old.line_buffering)


def flushed(code: int) -> int:
    """``code`` once what the command printed is out, else the error's."""
    try:
        sys.stdout.flush()
    except _OutputError as e:
        return _output_failed(e)
    except BrokenPipeError:
        return _reader_gone()
    return code


def run_args(args: argparse.Namespace) -> int:
    try:
        with single_error():
            return args.func(args) or 0
    except _OutputError as e:
        return _output_failed(e)
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
        return _reader_gone()


def _reader_gone() -> int:
    """The reader went away (``lazyfs ls ... | head``): stop quietly, as cat does."""
    _drop_stdout()
    return EXIT_BROKEN_PIPE


def _output_failed(e: _OutputError) -> int:
    _drop_stdout()
    print(f"lazyfs: {e}", file=sys.stderr)
    return e.exit_code


def _drop_stdout() -> None:
    """What is still buffered goes nowhere, so the interpreter's last flush
    does not fail again on its way out."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _interrupted(e: KeyboardInterrupt) -> int:
    download = sys.modules.get("lazyfs.registry.download")
    if download is not None:
        download.discard_partials()
    detail = f": {e}" if str(e) else ""
    print(f"lazyfs: interrupted{detail}", file=sys.stderr)
    return EXIT_INTERRUPTED

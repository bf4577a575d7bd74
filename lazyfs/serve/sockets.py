"""Where a unix socket of the service goes: the control socket and the
snapshots API's both take a path from the command line, made ready the same way."""

from __future__ import annotations

import contextlib
import errno
import os


def make_way(path: str) -> None:
    """Make the socket's directory and remove a socket an earlier run left
    there. ``os.makedirs`` says "exists" of a parent that is a file; that is
    said as what it is, so the caller's one error line names the cause."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, "a parent is not a directory") from None
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)

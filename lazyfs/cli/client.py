"""Asking a running ``lazyfs serve`` to answer a command, before working alone.

The service keeps images open, so a warm ``lazyfs cat`` costs little more than
starting Python: this module, all that runs on that path, imports nothing but
the standard library (a test holds it to that).

The question is the command line, sent over the control socket together
with this process's stdout and stderr (``SCM_RIGHTS``): the service runs the
very command ``main`` would and writes its output straight into them, then
answers the exit code. It declines (and the command runs here) what it would
answer differently: options about the cache, credentials, registries or the
platform, and an export that writes files here rather than to stdout.
"""

from __future__ import annotations

import json
import os
import socket
import sys

DEFAULT_SOCKET = "/run/lazyfs/control.sock"
SOCKET_ENV = "LAZYFS_SOCKET"
SERVED = frozenset({"ls", "cat", "stat", "find", "inspect", "diff", "export", "mount"})
ALONE = frozenset({"--cache-dir", "--cache-size", "--creds", "--insecure-registry",
                   "--registry-mirror", "--no-shared-index", "--platform", "--debug",
                   "-h", "--help", "--version", "--alone"})
"""Options the service would not honour as this process would: run alone."""
ACCEPT_TIMEOUT = 10.0
"""Seconds the service may take to say whether it answers (it only parses)."""


def socket_path() -> str:
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def servable(argv: list[str]) -> bool:
    """Whether the service could answer this command line at all."""
    command = None
    for arg in argv:
        if arg == "--":
            break
        if arg.startswith("-"):
            if arg.partition("=")[0] in ALONE:
                return False
        elif command is None:
            command = arg
    return command in SERVED


def ask_service(argv: list[str]) -> int | None:
    """The exit code of the command as the service ran it, or ``None`` when
    no service answers it (then run it here)."""
    if not servable(argv):
        return None
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError:
        return None
    with conn:
        try:
            conn.connect(socket_path())
        except OSError:
            return None
        out = sys.stdout
        request = {"argv": list(argv), "encoding": getattr(out, "encoding", None) or "utf-8",
                   "errors": getattr(out, "errors", None) or "strict",
                   "stderr_errors": getattr(sys.stderr, "errors", None) or "backslashreplace"}
        out.flush()
        sys.stderr.flush()
        first = None
        try:
            socket.send_fds(conn, [json.dumps(request).encode() + b"\n"],
                            [out.fileno(), sys.stderr.fileno()])
            conn.settimeout(ACCEPT_TIMEOUT)
            lines = _lines(conn)
            first = next(lines, None)
            if not first or not first.get("accepted"):
                return None
            conn.settimeout(None)
            done = next(lines, None)
        except (OSError, ValueError):
            return _lost() if first else None
    if done is None or "exit" not in done:
        return _lost()
    return int(done["exit"])


def _lost() -> int:
    print("lazyfs: the service stopped while answering (its log says why)", file=sys.stderr)
    return 1


def _lines(conn: socket.socket):
    buf = b""
    while True:
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield json.loads(line)
        chunk = conn.recv(4096)
        if not chunk:
            return
        buf += chunk

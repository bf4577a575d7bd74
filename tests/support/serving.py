"""``lazyfs serve`` in a subprocess for a test, always taken down afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tests.support.mounts import force_cleanup, is_mounted

LAZYFS = [sys.executable, "-m", "lazyfs"]
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Service:
    root: Path
    socket: Path
    proc: subprocess.Popen
    env: dict
    """For CLI commands that should ask this service."""
    alone_env: dict
    """For the same commands run alone (no service answers)."""

    def stats(self, path: Path | None = None) -> dict:
        return json.loads(os.getxattr(path or self.root, "user.lazyfs.stats"))

    def log(self) -> str:
        return (self.root.parent / "serve.log").read_text(errors="replace")


@contextlib.contextmanager
def serving(work: Path, *extra: str, env: dict | None = None) -> Iterator[Service]:
    root, sock = work / "store", work / "control.sock"
    root.mkdir(parents=True)
    base = dict(env or os.environ, XDG_RUNTIME_DIR=str(work / "run"),
                LAZYFS_CACHE_DIR=str(work / "cache"), PYTHONPATH=str(REPO))
    base.setdefault("LAZYFS_RETRY_DEADLINE", "2")
    log = open(work / "serve.log", "wb")
    proc = subprocess.Popen([*LAZYFS, "serve", "--control-socket", str(sock), *extra, str(root)],
                            env=base, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not (is_mounted(root) and sock.exists()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("lazyfs serve did not start: "
                                     + (work / "serve.log").read_text(errors="replace"))
            time.sleep(0.05)
        yield Service(root, sock, proc, dict(base, LAZYFS_SOCKET=str(sock)),
                      dict(base, LAZYFS_SOCKET=str(work / "none.sock"),
                           LAZYFS_CACHE_DIR=str(work / "alone-cache")))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert not is_mounted(root)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        force_cleanup(root, [])
        log.close()

"""What the command line says when the environment is wrong: a registry that
is down, a cache that cannot be written, a broken credential file, a cache
size the disk cannot hold. One line (or one warning), the error's exit code,
never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from lazyfs.errors import CacheError, RegistryUnreachable

LAZYFS = [sys.executable, "-m", "lazyfs"]


def run(*args: str, cache: Path, **env: str) -> subprocess.CompletedProcess:
    full = dict(os.environ, LAZYFS_CACHE_DIR=str(cache), **env)
    return subprocess.run([*LAZYFS, *args], capture_output=True, text=True, env=full,
                          timeout=120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_registry_that_is_down_is_not_a_missing_local_image(tmp_path):
    host = f"127.0.0.1:{free_port()}"
    for command in (["ls", f"{host}/x:y", "/"], ["cat", f"{host}/x:y", "/etc/hostname"],
                    ["stat", f"{host}/x:y", "/"]):
        p = run(*command, cache=tmp_path / "cache")
        assert p.returncode == RegistryUnreachable.exit_code, p.stderr
        assert p.stderr.startswith(f"lazyfs: cannot reach registry {host}"), p.stderr
        assert len(p.stderr.splitlines()) == 1, p.stderr

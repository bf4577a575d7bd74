"""``lazyfs mount`` from the command line, always taken down afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from tests.support.mounts import force_cleanup, is_mounted

LAZYFS = [sys.executable, "-m", "lazyfs"]


def lazyfs_env(work: Path, cache: Path | None = None) -> dict:
    # LAZYFS_SOCKET: commands work alone even where a lazyfs serve is running
    return dict(os.environ, XDG_RUNTIME_DIR=str(work / "run"),
                LAZYFS_CACHE_DIR=str(cache or work / "cache"),
                LAZYFS_SOCKET=str(work / "no-service.sock"))


def lazyfs(*args: str, env: dict, check: bool = True, timeout: float = 300):
    p = subprocess.run([*LAZYFS, *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"lazyfs {' '.join(args)} exited {p.returncode}: {p.stderr}")
    return p


@contextlib.contextmanager
def cli_mount(ref: str, mountpoint: Path, env: dict, *extra: str) -> Iterator[Path]:
    """Mount with ``lazyfs mount`` (daemonised); unmount and kill the daemon
    whatever happens."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    try:
        lazyfs("mount", *extra, ref, str(mountpoint), env=env)
        assert is_mounted(mountpoint)
        yield mountpoint
    finally:
        pids = []
        with contextlib.suppress(OSError, ValueError, KeyError):
            state_dir = Path(env["XDG_RUNTIME_DIR"]) / "lazyfs"
            for f in state_dir.glob("*.json"):
                state = json.loads(f.read_text())
                if state.get("mountpoint") == str(mountpoint):
                    pids.append(state["pid"])
        force_cleanup(mountpoint, pids)


@contextlib.asynccontextmanager
async def mounted(ref: str, mountpoint: Path, env: dict, *extra: str):
    """``cli_mount`` for trio tests: mounting and unmounting in a worker thread."""
    import trio
    cm = cli_mount(ref, mountpoint, env, *extra)
    path = await trio.to_thread.run_sync(cm.__enter__)
    try:
        yield path
    finally:
        await trio.to_thread.run_sync(cm.__exit__, None, None, None)

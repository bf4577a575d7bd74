"""Mount an image with lazyfs, time it, and always take it down again.

``lazyfs mount`` is used when the CLI has it; otherwise ``benchlib.mountd``
mounts through the same library calls. Either way the daemon's pid comes
from its state file or its own answer, and cleanup is ``fusermount3 -uz``
plus SIGKILL to that pid only.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from lazyfs.fs.daemon import alive

from .common import PYTHON, REPO


@dataclass
class Mount:
    mountpoint: Path
    pid: int | None
    seconds: float
    """Wall time of the mount command, until it returned with the mount ready."""
    via: str


def bench_env(cache_dir: Path, runtime: Path) -> dict:
    runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
    # LAZYFS_SOCKET: a lazyfs serve running here does not answer for the mounts measured
    return dict(os.environ, LAZYFS_CACHE_DIR=str(cache_dir), XDG_RUNTIME_DIR=str(runtime),
                PYTHONPATH=f"{REPO / 'scripts'}:{REPO}",
                LAZYFS_SOCKET=str(runtime / "no-service.sock"))


@functools.cache
def cli_has_mount() -> bool:
    r = subprocess.run([PYTHON, "-m", "lazyfs", "mount", "--help"], cwd=REPO,
                       capture_output=True, timeout=60)
    return r.returncode == 0


@contextlib.contextmanager
def mounted(ref: str, mountpoint: Path, env: dict) -> Iterator[Mount]:
    mountpoint.mkdir(parents=True, exist_ok=True)
    via = "lazyfs mount" if cli_has_mount() else "library mount()"
    cmd = ([PYTHON, "-m", "lazyfs", "mount", ref, str(mountpoint)] if cli_has_mount()
           else [PYTHON, "-m", "benchlib.mountd", ref, str(mountpoint)])
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t
    pid = _daemon_pid(r.stdout, mountpoint, env)
    try:
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[1:])} exited {r.returncode}: "
                               f"{r.stderr.strip()[-500:]}")
        yield Mount(mountpoint, pid, seconds, via)
    finally:
        unmount(mountpoint, pid)


def _daemon_pid(stdout: str, mountpoint: Path, env: dict) -> int | None:
    for line in stdout.splitlines():
        with contextlib.suppress(ValueError, AttributeError):
            return int(json.loads(line)["pid"])
    from lazyfs.fs.daemon import state_path
    old = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = env["XDG_RUNTIME_DIR"]
    try:
        state = json.loads(state_path(mountpoint).read_text())
        # a running lazyfs serve's bind mount: its pid is the service's, which stays
        return None if "bound" in state else int(state["pid"])
    except (OSError, ValueError, KeyError):
        return None
    finally:
        if old is None:
            os.environ.pop("XDG_RUNTIME_DIR", None)
        else:
            os.environ["XDG_RUNTIME_DIR"] = old


def is_mounted(mountpoint: Path) -> bool:
    target = str(mountpoint)
    with open("/proc/mounts") as f:
        return any(line.split()[1] == target for line in f)


def unmount(mountpoint: Path, pid: int | None) -> None:
    for _ in range(5):
        if not is_mounted(mountpoint):
            break
        subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True)
        time.sleep(0.05)
    if pid is None:
        return
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def mount_stats(mountpoint: Path) -> dict | None:
    from lazyfs.fs.daemon import read_stats
    try:
        return read_stats(mountpoint)
    except Exception:  # a missing stats answer is recorded, not fatal
        return None

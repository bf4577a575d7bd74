"""Start lazyfs mounts in their own processes and always take them down.

Every mount a test makes goes through ``mounted()``, whose cleanup runs even
when the test fails: ``fusermount3 -uz`` on the mountpoint and SIGKILL to
the daemon it started (by the pid it was told), so no test leaves a mount or
a process behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from lazyfs.fs.daemon import alive

REPO = Path(__file__).resolve().parents[2]
RUNNER = [sys.executable, "-m", "tests.support.fsrunner"]


@dataclass
class RunningMount:
    mountpoint: Path
    pid: int
    log: Path | None
    spec: dict
    env: dict = field(repr=False)
    proc: subprocess.Popen | None = field(default=None, repr=False)
    """The foreground runner, when there is one."""

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace") if self.log else ""
        except OSError:
            return ""


def runner_env(runtime_dir: Path) -> dict:
    """Private state, log and cache folders beside ``runtime_dir``."""
    return dict(os.environ, XDG_RUNTIME_DIR=str(runtime_dir), PYTHONPATH=str(REPO),
                LAZYFS_CACHE_DIR=str(runtime_dir.parent / "cache"))


def write_spec(work: Path, layers: list[Path], mountpoint: Path, **extra) -> Path:
    spec = {"layers": [str(p) for p in layers], "index": str(work / "index.sqlite"),
            "mountpoint": str(mountpoint), "reference": "registry.test/lazy/image:1",
            "digest": "sha256:" + "ab" * 32, **extra}
    path = work / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def run_runner(spec_path: Path, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(RUNNER + [str(spec_path)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def is_mounted(mountpoint: Path) -> bool:
    target = str(mountpoint)
    with open("/proc/mounts") as f:
        return any(line.split()[1].replace("\\040", " ") == target for line in f)


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def force_cleanup(mountpoint: Path, pids: list[int], proc: subprocess.Popen | None = None) -> None:
    """Unmount lazily and kill our own daemon, whatever state things are in."""
    for _ in range(5):
        if not is_mounted(mountpoint):
            break
        subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True)
    for pid in pids:
        if pid and alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
    for pid in pids:
        if pid:
            with contextlib.suppress(AssertionError):
                wait_until(lambda: not alive(pid), 10, f"pid {pid} to exit")


def start(work: Path, layers: list[Path], *, foreground: bool = False, **extra) -> RunningMount:
    """Mount ``layers`` at ``work/mnt``; raises with the daemon's output on failure.
    The caller must pass the result to ``force_cleanup`` (``mounted()`` does)."""
    work.mkdir(parents=True, exist_ok=True)
    mp = work / "mnt"
    mp.mkdir(exist_ok=True)
    env = runner_env(work / "run")
    spec_path = write_spec(work, layers, mp, foreground=foreground, **extra)
    spec = json.loads(spec_path.read_text())
    if foreground:
        log = work / "foreground.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(RUNNER + [str(spec_path)], cwd=REPO, env=env,
                                    stdout=out, stderr=subprocess.STDOUT)
        m = RunningMount(mp, proc.pid, log, spec, env, proc)
        try:
            wait_until(lambda: is_mounted(mp) and _answers(mp) or proc.poll() is not None,
                       30, f"mount at {mp}")
        except BaseException:
            force_cleanup(mp, [proc.pid], proc)
            raise
        if proc.poll() is not None:
            raise AssertionError(f"foreground mount exited {proc.returncode}: {m.log_text()}")
        return m
    try:
        done = run_runner(spec_path, env)
    except subprocess.TimeoutExpired:
        force_cleanup(mp, [])
        raise
    if done.returncode != 0:
        force_cleanup(mp, [])
        raise AssertionError(f"mount failed ({done.returncode}): {done.stderr}")
    info = json.loads(done.stdout)
    return RunningMount(mp, info["pid"], Path(info["log"]), spec, env)


def _answers(mp: Path) -> bool:
    try:
        os.stat(mp)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def mounted(work: Path, layers: list[Path], **kwargs) -> Iterator[RunningMount]:
    m = start(work, layers, **kwargs)
    try:
        yield m
    finally:
        force_cleanup(m.mountpoint, [m.pid], m.proc)

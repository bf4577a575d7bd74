"""Which waiting readers count as interrupted: read from a real process's
``/proc/<pid>/status`` while it is stopped, so its signals stay pending. (A
signal that kills by default ends a stopped process at once; a reader that
is killed while it waits on us shows SIGKILL pending instead, which
tests/integration/test_stalled_mount.py covers.)"""

import os
import signal
import subprocess
import sys
import time

import pytest

from lazyfs.fs.killed import dying

CHILD = """
import signal, sys, time
signal.signal(signal.SIGUSR1, lambda *a: None)
signal.signal(signal.SIGUSR2, lambda *a: None)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
signal.signal(signal.SIGHUP, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def stopped():
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        os.kill(child.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while _state(child.pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.01)
        yield child.pid
    finally:
        child.kill()
        child.wait()
        child.stdout.close()


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _wait_pending(pid: int) -> None:
    time.sleep(0.05)


def test_a_stopped_process_with_nothing_pending_is_not_interrupted(stopped):
    assert not dying(stopped)


def test_an_ignored_or_blocked_signal_does_not_interrupt(stopped):
    os.kill(stopped, signal.SIGHUP)
    os.kill(stopped, signal.SIGUSR2)
    _wait_pending(stopped)
    assert not dying(stopped)


def test_a_caught_signal_interrupts(stopped):
    os.kill(stopped, signal.SIGUSR1)
    _wait_pending(stopped)
    assert dying(stopped)


def test_a_process_that_is_gone_is_not_interrupted():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not dying(child.pid)

"""Reads abandoned as soon as the process waiting for them is killed.

A process killed while the kernel waits for our answer to its read stays in
uninterruptible sleep until that answer comes: the kernel sends
FUSE_INTERRUPT, but pyfuse3 (3.5) never registers an interrupt callback
with libfuse (``fuse_req_interrupt_func``) nor hands a handler its request,
so no handler can learn of it. What a handler does know is who opened the
file (the open's ``ctx.pid``), and a killed process shows its pending SIGKILL
in ``/proc/<pid>/status`` for as long as it waits (as does one with a signal
it catches, which the kernel would also interrupt the read for). So reads still waiting
after ``GRACE`` seconds are looked at every ``POLL`` seconds, and one whose
process is dying is cancelled and answered EINTR at once; what it started
(a fetch other reads share) lands empty and is taken up by those reads.

The opener can differ from the reader (a forked child reading an inherited
descriptor); then only the opener's death is seen, and the read's own
deadline still bounds how long a killed child waits.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

import trio

GRACE = 0.5
POLL = 0.25
_SIGKILL = 1 << (signal.SIGKILL - 1)


def dying(pid: int) -> bool:
    """Whether the kernel would interrupt ``pid``'s read now: a SIGKILL is
    pending (a signal that kills by default becomes one), or a signal it
    catches is pending and not blocked (the syscall would return EINTR to
    run the handler)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            text = f.read()
    except OSError:
        return False
    masks = {}
    for line in text.splitlines():
        name, _, value = line.partition(b":")
        if name in (b"SigPnd", b"ShdPnd", b"SigBlk", b"SigCgt"):
            try:
                masks[name] = int(value.strip(), 16)
            except ValueError:
                masks[name] = 0
    pending = masks.get(b"SigPnd", 0) | masks.get(b"ShdPnd", 0)
    caught = pending & masks.get(b"SigCgt", 0) & ~masks.get(b"SigBlk", 0)
    return bool(pending & _SIGKILL or caught)


class KilledReaders:
    """The reads waiting now, by cancel scope, and the one task watching them."""

    def __init__(self) -> None:
        self._waiting: dict[trio.CancelScope, tuple[int, float]] = {}
        self._watching = False
        self.abandoned = 0

    @contextmanager
    def watch(self, pid: int | None) -> Iterator[trio.CancelScope]:
        """A scope cancelled if ``pid`` is killed while the block runs;
        check ``cancelled_caught`` afterwards."""
        with trio.CancelScope() as scope:
            if pid:
                self._waiting[scope] = (pid, trio.current_time())
                self._start()
            try:
                yield scope
            finally:
                self._waiting.pop(scope, None)

    def _start(self) -> None:
        if not self._watching:
            self._watching = True
            trio.lowlevel.spawn_system_task(self._watch, name="lazyfs killed-reader watch")

    async def _watch(self) -> None:
        try:
            while self._waiting:
                await trio.sleep(POLL)
                now = trio.current_time()
                slow = [(s, pid) for s, (pid, t) in list(self._waiting.items())
                        if now - t >= GRACE]
                if not slow:
                    continue
                pids = {pid for _, pid in slow}
                gone = set(await trio.to_thread.run_sync(lambda: {p for p in pids if dying(p)}))
                for scope, pid in slow:
                    if pid in gone and not scope.cancel_called:
                        self.abandoned += 1
                        scope.cancel()
        finally:
            self._watching = False

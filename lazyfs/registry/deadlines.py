"""How long one range request may take, and the per-host slots it holds.

A registry that stalls after its headers, or drips a byte a second, would
otherwise hold a read for as long as the socket keeps receiving something,
and hold one of the host's few request slots all that time: eight such
requests and every other uncached read of the mount queues behind them.
So each range request gets a deadline of its own, from the moment it asks
for a slot to its last byte (``first_byte`` plus the body at ``min_rate``),
and a request that has received nothing for ``slot_release`` seconds gives
its slot back to the reads behind it while it waits on, until its deadline
cuts it. Both are trio deadlines: they end a request wherever it waits.
"""

from __future__ import annotations

from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterator

import trio

from ..errors import RegistryInterrupted


@dataclass
class Progress:
    """When the request last saw a byte (or its headers), and its deadline."""

    last: float = field(default_factory=trio.current_time)
    scope: trio.CancelScope | None = None

    def tick(self, _data: bytes = b"") -> None:
        self.last = trio.current_time()

    def allow(self, seconds: float) -> None:
        """Let the request run ``seconds`` from now if that is later (a
        longer answer than was asked for, such as a whole blob)."""
        if self.scope is not None:
            self.scope.deadline = max(self.scope.deadline, trio.current_time() + seconds)


def request_deadline(first_byte: float, min_rate: int, nbytes: int) -> float:
    """Seconds a request for ``nbytes`` may take in all."""
    return first_byte + nbytes / max(min_rate, 1)


class HostSlots:
    """``limit`` requests at once per host, but one silent for
    ``release_after`` seconds no longer counts: the next request waiting
    for a slot takes its place."""

    def __init__(self, limit: int, release_after: float) -> None:
        self._limit = limit
        self._release_after = release_after
        self._holders: dict[object, Progress] = {}
        self._freed = trio.Event()
        self.released = 0
        """Slots given back by requests that went silent."""

    @property
    def in_use(self) -> int:
        return len(self._holders)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Progress]:
        while self._full():
            oldest = min(p.last for p in self._holders.values())
            with trio.move_on_at(oldest + self._release_after):
                await self._freed.wait()
        token, progress = object(), Progress()
        self._holders[token] = progress
        try:
            yield progress
        finally:
            if self._holders.pop(token, None) is not None:
                self._freed.set()
                self._freed = trio.Event()

    def _full(self) -> bool:
        now = trio.current_time()
        for token, p in list(self._holders.items()):
            if now - p.last >= self._release_after:
                del self._holders[token]
                self.released += 1
        return len(self._holders) >= self._limit


@contextmanager
def within(seconds: float, what: str) -> Iterator[trio.CancelScope]:
    """Cut the block after ``seconds``: a ``RegistryInterrupted`` the read's
    retry budget may spend another attempt on."""
    with trio.move_on_after(seconds) as scope:
        yield scope
    if scope.cancelled_caught:
        raise RegistryInterrupted(f"{what}: no complete answer within {seconds:.3g} s; "
                                  "request cut")

"""The reader's one memory cache: decoded, verified pieces, and the few
compressed spans that a format decodes more than once.

It is bounded by bytes, not entries, because pieces range from a few KiB to
several MiB. FUSE reads are 128 KiB while a piece is up to ``PIECE_MAX``, so
every piece a format makes must fit, or sequential reads would decode (or load
from disk) the same piece over and over. Reads that touch a whole blob on local
disk run in a worker thread (``Reader.read_local``) and share this cache with
the event loop, hence the lock.

What loads under way hold (fetched spans, their decoded pieces, until they
are on disk) is bounded apart, by ``InFlight``: with both, a reader's heap
does not grow with the number of concurrent reads.

Pieces in the chunk cache on disk are not held in memory at all: the reader
keeps their files open (an ``Lru`` of them) and each read takes the blocks it
needs, checked, from the page cache. Memory is for what has no file there: a
layer without a chunk cache, a blob whole on local disk, compressed spans that
a format decodes more than once.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections import OrderedDict
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable, Hashable

import trio

MEMORY_BYTES = 16 << 20
"""Default budget of one reader's memory cache."""
PIECE_MAX = 4 << 20
"""The largest piece a layer format produces (a gzip span fully inflated)."""
IN_FLIGHT_BYTES = 24 << 20
"""Default bound on the bytes of loads under way (``InFlight``)."""
TRIM_EVERY = 1.0
"""Seconds between two returns of the heap's free memory to the system."""


class Memory:
    """A least-recently-used map of bytes, bounded by their total size."""

    def __init__(self, budget: int = MEMORY_BYTES):
        self.budget = budget
        self.item_max = max(budget // 4, min(budget, PIECE_MAX))
        """Larger items are not kept: one would push out most of the rest."""
        self.nbytes = 0
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: Hashable, data: bytes) -> None:
        if len(data) > self.item_max:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= len(old)
            self._items[key] = data
            self.nbytes += len(data)
            while self.nbytes > self.budget:
                _, dropped = self._items.popitem(last=False)
                self.nbytes -= len(dropped)

    def discard(self, key: Hashable) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= len(old)

    def __len__(self) -> int:
        return len(self._items)


OPEN_FILES = 32
"""Piece files one reader keeps open: 128 MiB of 4 MiB pieces readable
without opening (and checking the header of) any file again."""


class Lru:
    """A least-recently-used map bounded by the total ``weight`` of its
    values (by default their number). A value let go is only dropped from
    the map: whoever still holds it keeps it (an open file closes when its
    last reference goes, never under a read in progress)."""

    def __init__(self, limit: int, weight: Callable[[object], int] = lambda v: 1):
        self.limit = limit
        self.total = 0
        self._weight = weight
        self._items: OrderedDict[Hashable, object] = OrderedDict()

    def get(self, key: Hashable):
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: Hashable, value) -> None:
        self.discard(key)
        self._items[key] = value
        self.total += self._weight(value)
        while self.total > self.limit:
            _, dropped = self._items.popitem(last=False)
            self.total -= self._weight(dropped)

    def discard(self, key: Hashable) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.total -= self._weight(old)

    def __len__(self) -> int:
        return len(self._items)


class InFlight:
    """Bytes held by loads under way (the compressed spans fetched and what
    they decode to), at most ``limit``: a load waits for room rather than
    growing the heap with every concurrent reader. A load larger than the
    whole budget takes all of it. Used from the event loop only; nothing
    that holds room waits for another load, so waiting for room cannot
    deadlock."""

    def __init__(self, limit: int = IN_FLIGHT_BYTES) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._freed: trio.Event | None = None

    @asynccontextmanager
    async def room(self, nbytes: int) -> AsyncIterator[None]:
        nbytes = min(nbytes, self.limit)
        while self.used + nbytes > self.limit:
            if self._freed is None:
                self._freed = trio.Event()
            await self._freed.wait()
        release = self.carry(nbytes)
        try:
            yield
        finally:
            release()
            trim_heap()

    def carry(self, nbytes: int) -> Callable[[], None]:
        """Count ``nbytes`` at once, without waiting, until the returned
        function is called: ``room`` once there is room, and room handed from
        a load to a task that outlives it (pieces written behind the read),
        taken while the load still holds its own so that the budget's check
        covers both."""
        self.used += nbytes
        self.peak = max(self.peak, self.used)

        def release() -> None:
            self.used -= nbytes
            if self._freed is not None:
                self._freed.set()
                self._freed = None

        return release


_trimmed = 0.0


def trim_heap() -> None:
    """Give the free memory inside the heap back to the system (glibc's
    ``malloc_trim``), at most once per ``TRIM_EVERY``: once loads are done,
    what their buffers left between live objects would otherwise stay
    resident, and a burst of reads (or a first mount's indexing) would set
    the daemon's RSS for good."""
    global _trimmed
    now = time.monotonic()
    if now - _trimmed < TRIM_EVERY:
        return
    _trimmed = now
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass

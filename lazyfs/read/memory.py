"""The reader's one memory cache: decoded, verified pieces, and the few
compressed spans that a format decodes more than once.

It is bounded by bytes, not entries, because pieces range from a few KiB to
several MiB. FUSE reads are 128 KiB while a piece is up to ``PIECE_MAX``, so
every piece a format makes must fit, or sequential reads would decode (or load
from disk) the same piece over and over. Reads that touch a whole blob on local
disk run in a worker thread (``Reader.read_local``) and share this cache with
the event loop, hence the lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Hashable

MEMORY_BYTES = 64 << 20
"""Default budget of one reader's memory cache."""
PIECE_MAX = 4 << 20
"""The largest piece a layer format produces (a gzip span fully inflated)."""


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

"""Bytes fetched ahead of their reads, in the background.

Two kinds: whole layers pulled into the store (``--prefetch``), after which
their reads need no request, and the files a producer marked for prefetch
(eStargz's ``.prefetch.landmark``), warmed into the chunk cache. Neither is
needed for correctness, so a failure is logged and reads go on as before.
"""

from __future__ import annotations

import logging
from typing import Sequence

import trio

from ..errors import LazyfsError, naming
from ..formats import LayerTable, format_named
from .reader import Layer, Reader
from .sources import RegistryBlob

PREFETCH_CONCURRENCY = 2

log = logging.getLogger(__name__)


class Prefetch:
    """Whole layers pulled in the background, two at a time, in layer order."""

    def __init__(self, nursery: trio.Nursery):
        self._nursery = nursery
        self.state: dict[str, str] = {}
        """Layer digest -> ``"waiting"``, ``"running"``, ``"done"`` or why it failed."""

    def start(self, layers: Sequence[Layer]) -> None:
        """Pull those of ``layers`` not local and not asked for yet."""
        todo = [layer for layer in layers
                if layer.blob.local_path() is None and layer.digest not in self.state]
        for layer in todo:
            self.state[layer.digest] = "waiting"
        self._nursery.start_soon(self._all, todo)

    async def _all(self, layers: list[Layer]) -> None:
        limit = trio.CapacityLimiter(PREFETCH_CONCURRENCY)
        async with trio.open_nursery() as nursery:
            for layer in layers:
                nursery.start_soon(self._one, layer, limit)

    async def _one(self, layer: Layer, limit: trio.CapacityLimiter) -> None:
        async with limit:
            self.state[layer.digest] = "running"
            try:
                if isinstance(layer.blob, RegistryBlob):
                    await layer.blob.path("prefetch")
                else:
                    await layer.blob.path()
                self.state[layer.digest] = "done"
            except LazyfsError as e:
                self.state[layer.digest] = f"failed: {e}"
                log.warning("prefetch failed: %s", naming(f"layer {layer.digest}", e,
                                                          layer.digest))


def prioritized(tables: Sequence[LayerTable | None]) -> list[tuple[int, bytes, int, int]]:
    """Reads of the files producers marked for prefetch, in layer order."""
    return [(i, e.data, 0, e.size) for i, t in enumerate(tables) if t
            for e in format_named(t.format).prefetch(t)]


async def warm_quietly(reader: Reader, reads: list[tuple[int, bytes, int, int]]) -> None:
    """Warm up ``(layer, locator, offset, size)`` reads; a failure only means
    those files are fetched when read."""
    try:
        await reader.warm(reads)
    except LazyfsError as e:
        log.warning("prefetch of prioritized files failed: %s", e)

"""Gzip layers indexed in the background while their image is already served.

On a first mount a gzip layer without a table would cost a full pass
before anything could be found. Instead the image opens at once: each such
layer is downloaded and indexed (``LayerStream``), top layer first, while
``ProgressiveIndex`` answers what is already certain and the layer's
``StreamingContent`` holds its reads back; then the merged index is built and
takes over. Every failure ends up in the progressive index, so that waiting
requests get it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Awaitable, Callable, Sequence

import trio

from ..errors import LazyfsError, RegistryError, RegistryUnreachable, single_error
from ..formats import LayerTable, format_named
from ..formats.base import check_diff_id
from ..index.layertable import save_layer_table, table_path
from ..index.merged import MergedIndex
from ..index.progressive import ProgressiveIndex
from ..manifest import Descriptor
from ..store.blobs import Store
from .content import LayerContent, StreamingContent
from .reader import Layer
from .stats import EventLog
from .streaming import LayerStream
from .tables import INDEX_CONCURRENCY

log = logging.getLogger(__name__)


class BackgroundIndex:
    """The layers of one image still to be indexed, and how far they are."""

    def __init__(self, name: str, tables: list[LayerTable | None], descs: list[Descriptor],
                 store: Store, started: float, early_reads: bool = False,
                 diff_ids: Sequence[str] = ()):
        self.name = name
        """The image, for the log."""
        self.tables = tables
        self.diff_ids = diff_ids
        """From the image config: each layer's table is checked against them."""
        self.store = store
        self.early_reads = early_reads
        self.progress = ProgressiveIndex(len(tables))
        for i, table in enumerate(tables):
            if table is not None:
                self.progress.add(i, table.entries)
                self.progress.complete(i)
        self.streams = {i: LayerStream(descs[i], store)
                        for i, t in enumerate(tables) if t is None}
        self.started = started
        self.indexed_in: float | None = None
        """Seconds from ``started`` (``time.monotonic``) until every layer was indexed."""
        self.attempts = 1
        """Indexing attempts so far: a failure the registry may heal from is retried."""
        self.last_error: LazyfsError | None = None
        self.events: EventLog | None = None
        """Where each layer's download-and-index is logged as one event, if anywhere."""

    def content(self, position: int, then: LayerContent) -> LayerContent:
        """How layer ``position`` is read: ``then`` once it is indexed."""
        stream = self.streams.get(position)
        return then if stream is None else StreamingContent(stream, then, self.early_reads)

    async def run(self, layers: list[Layer],
                  merge: Callable[[list[LayerTable]], Awaitable[MergedIndex]]) -> bool:
        """Index the pending layers into ``layers`` (the reader's), then merge;
        whether the merged index now answers. A failure the registry may
        heal from (it was unreachable past the retry deadline) is not the
        end: the next lookup or read starts the indexing again."""
        while True:
            try:
                await self._stream_layers(layers)
                index = await merge(self.tables)
            except LazyfsError as e:
                if not await self._failed(e):
                    return False
                continue
            self.indexed_in = time.monotonic() - self.started
            self.progress.set_final(index)
            self._let_go()
            log.info("image %s indexed in %.2f s", self.name, self.indexed_in)
            return True

    def _let_go(self) -> None:
        """The merged index answers everything now: every layer's entries,
        held by the tables, the stream indexers and the early answers (a
        100k-file image: over 100 MiB), go."""
        self.tables = [None] * len(self.tables)
        for stream in self.streams.values():
            if stream.table is not None:
                stream.table = dataclasses.replace(stream.table, entries=[])
            stream.indexer = None
        self.progress.let_go()

    async def _failed(self, error: LazyfsError) -> bool:
        """Fail every waiting request; whether a later one asked to try again."""
        again = trio.Event() if _may_heal(error) else None
        then = "; the next lookup or read starts it again" if again is not None else ""
        log.error("indexing %s failed: %s%s", self.name, error, then)
        self.last_error = error

        def restart() -> None:
            self.attempts += 1
            log.info("indexing %s again (attempt %d)", self.name, self.attempts)
            self.progress.restart()
            for stream in self.streams.values():
                if not stream.done:
                    stream.reset()
            again.set()

        retry = restart if again is not None else None
        self.progress.fail(error, retry)
        for stream in self.streams.values():
            if not stream.done:
                stream.fail(stream.error or error, retry)
        if again is None:
            return False
        await again.wait()
        return True

    def state(self) -> dict:
        """For the image's statistics."""
        p = self.progress
        if p.final is not None:
            index = "ready"
        elif p.error is not None:
            again = " (the next lookup or read starts it again)" if p.restartable else ""
            index = f"failed: {p.error}{again}"
        else:
            index = "indexing"
        state = {"index": index,
                 "index_seconds": None if self.indexed_in is None else round(self.indexed_in, 3)}
        if self.attempts > 1:
            state["index_attempts"] = self.attempts
            state["index_last_error"] = str(self.last_error)
        return state

    def layer_state(self, position: int) -> dict | None:
        stream = self.streams.get(position)
        return None if stream is None else stream.state()

    async def _stream_layers(self, layers: list[Layer]) -> None:
        limit = trio.CapacityLimiter(INDEX_CONCURRENCY)

        async def one(pos: int) -> None:
            try:
                self.tables[pos] = await self._stream_layer(pos, layers[pos])
            finally:
                limit.release_on_behalf_of(pos)

        pending = [pos for pos, stream in self.streams.items() if not stream.done]
        with single_error():
            async with trio.open_nursery() as nursery:
                for pos in sorted(pending, reverse=True):
                    await limit.acquire_on_behalf_of(pos)
                    nursery.start_soon(one, pos)

    async def _stream_layer(self, pos: int, layer: Layer) -> LayerTable:
        stream = self.streams[pos]
        publish = (lambda entries: self.progress.add(pos, entries)) if self.early_reads else None
        began = self.events.now() if self.events is not None else None
        table = await stream.index(layer.blob, publish=publish)
        if self.events is not None:
            self.events.add(pos, "index", 0, stream.desc.size, began)
        path = table_path(self.store, table.format, stream.desc.digest)
        await trio.to_thread.run_sync(save_layer_table, path, table)
        if pos < len(self.diff_ids):
            try:
                check_diff_id(table, stream.desc.digest, self.diff_ids[pos])
            except LazyfsError as e:
                stream.fail(e)
                raise
        layer.content = format_named(table.format).reader(table)
        stream.settle(table)
        if not self.early_reads:
            self.progress.add(pos, table.entries)
        self.progress.complete(pos)
        return table


def _may_heal(error: LazyfsError) -> bool:
    """Whether asking the registry again later may succeed: it was unreachable
    or answered badly, rather than sent bytes that failed their digest."""
    return isinstance(error, (RegistryUnreachable, RegistryError))

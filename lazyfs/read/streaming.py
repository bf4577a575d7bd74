"""A gzip layer indexed while it downloads.

A gzip layer without a table costs one full pass before anything in it can
be found. Doing that pass on the bytes as they arrive, from parallel range
requests (``download.py``), overlaps the download with the inflate and lets
a mount answer for the part already seen: entries as their headers pass,
and, when the caller accepts bytes not yet checked against the layer's
digest, content as soon as the spans around it are complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import trio

from ..blob import _pread, check_range
from ..registry.download import DownloadProgress
from ..formats.entry import Entry
from ..errors import LazyfsError
from .. import formats
from ..formats import LayerTable, read_content
from ..formats.spans import LOCATOR as _LOC
from ..index.progressive import raise_or_retry
from ..manifest import Descriptor
from ..store.blobs import Store

FEED = 1 << 20
"""Bytes handed to the indexer at a time: entries become visible this often."""


@dataclass
class LayerStream:
    """One layer on its way in; early readers and lookups wait on ``changed``."""

    desc: Descriptor
    store: Store
    indexer: formats.StreamIndexer = field(init=False)
    progress: DownloadProgress | None = None
    table: LayerTable | None = None
    error: LazyfsError | None = None
    changed: trio.Event = field(default_factory=trio.Event)
    _retry: Callable[[], None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.indexer = formats.StreamIndexer(self.desc.digest)

    @property
    def done(self) -> bool:
        return self.table is not None

    def wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def state(self) -> dict:
        p = self.progress
        state = "done" if self.done else f"failed: {self.error}" if self.error else "indexing"
        return {"state": state, "received": getattr(p, "received", 0),
                "indexed": getattr(p, "consumed", 0)}

    async def finished(self) -> None:
        retried = False
        while not self.done:
            self._failed(retried)
            retried = True
            await self.changed.wait()

    def _failed(self, retried: bool) -> None:
        raise_or_retry(self.error, self._retry, retried)

    async def index(self, blob, *, publish: Callable[[list[Entry]], None] | None = None
                    ) -> LayerTable:
        """Download and index the layer; ``publish`` gets entries as they are
        found (on the trio thread). The table returned is the one a full
        pass over the stored blob would give; ``settle`` it once it serves reads."""
        token = trio.lowlevel.current_trio_token()

        def consume(data: bytes) -> None:
            view = memoryview(data)
            for at in range(0, len(view), FEED):
                entries = self.indexer.feed(bytes(view[at:at + FEED]))
                trio.from_thread.run_sync(self._fed, entries, publish, trio_token=token)

        try:
            await blob.stream(consume, self._progress())
            return await trio.to_thread.run_sync(self.indexer.finish)
        except LazyfsError as e:
            self.fail(e)
            raise

    def settle(self, table: LayerTable) -> None:
        """The layer's table is in use: readers go the ordinary way from now on."""
        self.table = table
        self.wake()

    def fail(self, error: LazyfsError, retry: Callable[[], None] | None = None) -> None:
        """The layer cannot be indexed: waiting readers get ``error``, and
        so do later ones unless ``retry`` is given: the next one calls it
        (to start the indexing again) and waits for that attempt."""
        self.error, self._retry = error, retry
        self.wake()

    def reset(self) -> None:
        """Indexing starts again, from the layer's first byte."""
        self.indexer.close()
        self.indexer = formats.StreamIndexer(self.desc.digest)
        self.error, self._retry, self.progress = None, None, None
        self.wake()

    def _progress(self) -> DownloadProgress:
        self.progress = DownloadProgress()
        return self.progress

    def _fed(self, entries: list[Entry], publish) -> None:
        if publish is not None and entries:
            publish(entries)
        self.wake()

    async def read_early(self, data: bytes, offset: int, size: int) -> bytes | None:
        """Bytes ``[offset, offset + size)`` of the entry at ``data`` from the
        spans already complete, waiting for them; ``None`` once the whole
        layer is indexed (read it the ordinary way then)."""
        at, length = _LOC.unpack(data)
        end = at + min(offset + size, length)
        retried = False
        while not self.done:
            self._failed(retried)
            retried = True
            if self.indexer.covered >= end:
                return await self._read_spans(data, offset, size)
            await self.changed.wait()
        return None

    async def _read_spans(self, data: bytes, offset: int, size: int) -> bytes:
        spans = list(self.indexer.spans)
        reader = formats.GzipReader.from_spans(self.desc.digest, spans)
        blob = _Arriving(self.desc.digest, spans[-1].end, Path(self.progress.tmp_path),
                         self.store)
        return await read_content(reader, blob, data, offset, size)


@dataclass
class _Arriving:
    """The part of a blob already downloaded: in its tmp file, or in the
    store once the download has been verified and renamed."""

    digest: str
    size: int
    tmp: Path
    store: Store

    async def read_range(self, start: int, end: int) -> bytes:
        check_range(self, start, end)
        return await trio.to_thread.run_sync(self._pread, start, end)

    def _pread(self, start: int, end: int) -> bytes:
        try:
            return _pread(self.tmp, start, end - start)
        except FileNotFoundError:
            stored = self.store.blob_path(self.digest)
            if stored is None:
                raise LazyfsError(f"layer {self.digest}: its download vanished") from None
            return _pread(stored, start, end - start)

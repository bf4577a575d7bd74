"""Reads of entry content: the one place fetching, caching and coalescing live.

A read asks the layer's format which pieces hold the range, serves what it
can from the chunk cache (memory, then disk), and fetches the rest: nearby
pieces merged into spans, all spans of one read in one multi-range request
where the registry allows, and a piece someone else is already fetching
waited for rather than fetched twice. Pieces are decoded and verified in a
worker thread and only then cached or returned. A failed fetch wakes its
waiters, who try again themselves; transient failures (a dropped or
truncated answer, bytes that fail verification) are retried a few times
before the read fails.

Reads that keep starting where the previous one of the same entry ended
start a bounded readahead in the background.
"""

from __future__ import annotations

import bisect
import logging
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Sequence

import trio

from ..blob import BlobSource, _pread
from ..store.chunks import ChunkCache
from ..errors import (CacheError, DigestMismatch, LayerFormatError, LazyfsError, RegistryError,
                     RegistryUnreachable, UnsafeEntry)
from ..formats import ContentReader, Piece, slice_piece
from ..registry.ranges import Span, coalesce

__all__ = ["ChunkCache", "Layer", "LayerStats", "Reader"]

log = logging.getLogger(__name__)

MERGE_GAP = 64 * 1024
"""Pieces closer than this in the blob are fetched in one range."""
INLINE_DECODE = 64 * 1024
"""Pieces smaller than this decode on the event loop: a worker-thread hop
costs more than the work."""
FETCH_ATTEMPTS = 3
RETRY_DELAY = 0.2
READAHEAD_MIN = 1 << 20
READAHEAD_MAX = 8 << 20
READAHEAD_TASKS = 2
"""Readaheads in flight at once per reader; a sequential read past this is not prefetched."""
TRACKED_STREAMS = 256
RAW_MEMORY = 32 << 20
"""Recently fetched compressed bytes kept in memory, per reader."""


@dataclass
class LayerStats:
    format: str = ""
    mode: str = "lazy"
    reason: str = ""
    size: int = 0
    bytes_fetched: int = 0
    """Compressed bytes received by range requests for reads."""
    requests: int = 0
    hits: int = 0
    misses: int = 0
    shared: int = 0
    """Pieces a read waited for because another read (or readahead) was already fetching them."""
    verify_failures: int = 0
    retries: int = 0
    failed_reads: int = 0
    readahead_pieces: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Layer:
    """One layer as the reader needs it."""

    digest: str
    content: ContentReader
    blob: BlobSource
    stats: LayerStats = field(default_factory=LayerStats)


@dataclass
class _Flight:
    """One piece being fetched; others wanting it wait on ``done``."""

    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | None = None
    error: BaseException | None = None


@dataclass
class _Stream:
    """Where the last read of one entry ended, and how far readahead has reached."""

    end: int = 0
    window: int = 0
    ahead: int = 0


class Reader:
    def __init__(self, layers: Sequence[Layer], cache: ChunkCache,
                 nursery: trio.Nursery | None = None):
        self.layers = list(layers)
        self.cache = cache
        self.nursery = nursery
        """Where readahead runs; ``None`` turns readahead off."""
        self._inflight: dict[tuple, _Flight] = {}
        self._streams: OrderedDict[tuple, _Stream] = OrderedDict()
        self._readaheads = 0
        self._raw: OrderedDict[tuple, bytes] = OrderedDict()
        self._raw_bytes = 0
        self._raw_inflight: dict[tuple, trio.Event] = {}

    async def read(self, layer_index: int, data: bytes, offset: int, size: int) -> bytes:
        layer = self.layers[layer_index]
        pieces = layer.content.pieces(data, offset, size)
        try:
            decoded = await self._decoded(layer, pieces)
        except LazyfsError:
            layer.stats.failed_reads += 1
            raise
        self._sequential(layer_index, data, offset, size)
        return b"".join(slice_piece(p, d, offset, size) for p, d in zip(pieces, decoded))

    async def warm(self, reads: Sequence[tuple[int, bytes, int, int]]) -> None:
        """Bring the pieces of many ``(layer_index, data, offset, size)`` reads
        into the cache, one layer at a time: each layer's misses go out
        together, as one multi-range request where the registry takes them."""
        by_layer: dict[int, dict[tuple, Piece]] = {}
        for layer_index, data, offset, size in reads:
            pieces = by_layer.setdefault(layer_index, {})
            for p in self.layers[layer_index].content.pieces(data, offset, size):
                pieces.setdefault(p.key, p)
        for layer_index, pieces in by_layer.items():
            await self._decoded(self.layers[layer_index], list(pieces.values()))

    def read_local(self, layer_index: int, data: bytes, offset: int, size: int) -> bytes:
        """The same read, blocking, for a layer whose blob is whole on local
        disk (after ``fetch_all``): for bulk work in one worker thread."""
        layer = self.layers[layer_index]
        path = layer.blob.local_path()
        if path is None:
            raise LazyfsError(f"layer {layer.digest} is not on local disk")
        out = []
        blob_size = layer.blob.size
        for p in layer.content.pieces(data, offset, size):
            decoded = self.cache.get(layer.digest, p, disk=False)
            if decoded is None:
                end = min(p.end, blob_size)
                decoded = layer.content.decode(p, _pread(path, p.start, end - p.start))
                self.cache.put(layer.digest, p, decoded, disk=False)
            out.append(slice_piece(p, decoded, offset, size))
        return b"".join(out)

    # -- cache, then fetch -------------------------------------------------------

    async def _decoded(self, layer: Layer, pieces: Sequence[Piece],
                       foreground: bool = True) -> list[bytes]:
        out: list[bytes | None] = [self.cache.get(layer.digest, p, disk=False) for p in pieces]
        missing = [i for i, d in enumerate(out) if d is None]
        if missing and not _is_local(layer.blob) and self.cache.root is not None:
            found = await trio.to_thread.run_sync(
                self._load, layer.digest, [pieces[i] for i in missing])
            for i, d in zip(missing, found):
                out[i] = d
            missing = [i for i in missing if out[i] is None]
        if foreground:
            shared = sum(1 for i in missing if (layer.digest, pieces[i].key) in self._inflight)
            layer.stats.hits += len(pieces) - len(missing)
            layer.stats.misses += len(missing) - shared
            layer.stats.shared += shared
        if missing:
            got = await self._fetch(layer, [pieces[i] for i in missing])
            for i in missing:
                out[i] = got[pieces[i].key]
        return out  # type: ignore[return-value]

    def _load(self, layer: str, pieces: list[Piece]) -> list[bytes | None]:
        out = []
        for p in pieces:
            data = self.cache.load(layer, p)
            if data is not None:
                self.cache.put(layer, p, data, disk=False)
            out.append(data)
        return out

    async def _fetch(self, layer: Layer, pieces: list[Piece]) -> dict[tuple, bytes]:
        results: dict[tuple, bytes] = {}
        error: LazyfsError | None = None
        for attempt in range(FETCH_ATTEMPTS):
            todo = [p for p in pieces if p.key not in results]
            if not todo:
                break
            if attempt:
                layer.stats.retries += 1
                log.warning("layer %s: retrying a read after: %s", layer.digest, error)
                await trio.sleep(RETRY_DELAY * attempt)
            try:
                await self._fetch_once(layer, todo, results)
            except LazyfsError as e:
                if not _retryable(e):
                    raise
                error = e
        if any(p.key not in results for p in pieces):
            raise error or LazyfsError(f"layer {layer.digest}: a shared fetch was abandoned")
        return results

    async def _fetch_once(self, layer: Layer, pieces: list[Piece],
                          results: dict[tuple, bytes]) -> None:
        for done in {self._raw_inflight[k] for p in pieces
                     if (k := (layer.digest, p.start, p.end)) in self._raw_inflight}:
            await done.wait()
        mine: list[tuple[Piece, _Flight]] = []
        theirs: list[tuple[Piece, _Flight]] = []
        for p in pieces:
            key = (layer.digest, p.key)
            flight = self._inflight.get(key)
            if flight is None:
                flight = self._inflight[key] = _Flight()
                mine.append((p, flight))
            else:
                theirs.append((p, flight))
        if mine:
            try:
                got = await self._download(layer, [p for p, _ in mine])
                for p, flight in mine:
                    flight.data = results[p.key] = got[p.key]
            except BaseException as e:
                for _, flight in mine:
                    flight.error = e
                raise
            finally:
                for p, flight in mine:
                    if self._inflight.get((layer.digest, p.key)) is flight:
                        del self._inflight[(layer.digest, p.key)]
                    flight.done.set()
        for p, flight in theirs:
            await flight.done.wait()
            if flight.data is not None:
                results[p.key] = flight.data
            elif isinstance(flight.error, LazyfsError):
                raise type(flight.error)(str(flight.error))

    async def _download(self, layer: Layer, pieces: list[Piece]) -> dict[tuple, bytes]:
        raw = {(p.start, p.end): self._raw.get((layer.digest, p.start, p.end)) for p in pieces}
        wanted = [s for s, r in raw.items() if r is None]
        # Others wanting these compressed bytes under another piece key wait
        # for them (until they are verified and kept) instead of fetching them too.
        done = trio.Event()
        keys = [(layer.digest, s, e) for s, e in wanted]
        for k in keys:
            self._raw_inflight.setdefault(k, done)
        try:
            return await self._fetch_and_decode(layer, pieces, raw, wanted)
        finally:
            for k in keys:
                if self._raw_inflight.get(k) is done:
                    del self._raw_inflight[k]
            done.set()

    async def _fetch_and_decode(self, layer: Layer, pieces: list[Piece],
                                raw: dict[Span, bytes | None],
                                wanted: list[Span]) -> dict[tuple, bytes]:
        local = _is_local(layer.blob)
        if wanted:
            spans = coalesce(wanted, MERGE_GAP)
            parts, requests = await _read_spans(layer.blob, spans)
            if not local:
                layer.stats.requests += requests
                layer.stats.bytes_fetched += sum(len(r) for r in parts) if requests else 0
            starts = [s for s, _ in spans]
            for start, end in wanted:
                k = bisect.bisect_right(starts, start) - 1
                base = spans[k][0]
                raw[start, end] = parts[k][start - base:end - base]
        out: dict[tuple, bytes] = {}
        for p in pieces:
            try:
                out[p.key] = await _decode(layer.content, p, raw[p.start, p.end])
            except (DigestMismatch, LayerFormatError) as e:
                layer.stats.verify_failures += 1
                log.error("layer %s: %s", layer.digest, e)
                self._raw.pop((layer.digest, p.start, p.end), None)
                raise
            self._keep_raw((layer.digest, p.start, p.end), raw[p.start, p.end])
        for p in pieces:
            self.cache.put(layer.digest, p, out[p.key], disk=False)
        if not local and self.cache.root is not None:
            await self._store(layer.digest, [(p, out[p.key]) for p in pieces])
        return out

    def _keep_raw(self, key: tuple, raw: bytes) -> None:
        """Keep verified compressed bytes a while: formats whose pieces of one
        span differ only in how far they decode (gzip) need them again soon."""
        if key in self._raw:
            self._raw.move_to_end(key)
            return
        if len(raw) > RAW_MEMORY // 4:
            return
        self._raw[key] = raw
        self._raw_bytes += len(raw)
        while self._raw_bytes > RAW_MEMORY:
            _, old = self._raw.popitem(last=False)
            self._raw_bytes -= len(old)

    async def _store(self, layer: str, items: list[tuple[Piece, bytes]]) -> None:
        def store_all() -> None:
            for p, data in items:
                self.cache.store(layer, p, data)
        try:
            await trio.to_thread.run_sync(store_all)
        except CacheError as e:
            log.warning("layer %s: not cached: %s", layer, e)

    # -- readahead ---------------------------------------------------------------

    def _sequential(self, layer_index: int, data: bytes, offset: int, size: int) -> None:
        key = (layer_index, data)
        s = self._streams.pop(key, None)
        if s is None or s.end != offset:
            s = _Stream()
        elif s.window:
            s.window = min(s.window * 2, READAHEAD_MAX)
        else:
            s.window = READAHEAD_MIN
        s.end = offset + size
        self._streams[key] = s
        while len(self._streams) > TRACKED_STREAMS:
            self._streams.popitem(last=False)
        if not s.window or self.nursery is None or self._readaheads >= READAHEAD_TASKS:
            return
        start = max(s.end, s.ahead)
        stop = s.end + s.window
        if stop - start < s.window // 2:
            return
        layer = self.layers[layer_index]
        if _is_local(layer.blob):
            return
        try:
            self.nursery.start_soon(self._readahead, layer, data, start, stop - start)
        except RuntimeError:  # the image is closing
            return
        s.ahead = stop
        self._readaheads += 1

    async def _readahead(self, layer: Layer, data: bytes, offset: int, size: int) -> None:
        try:
            pieces = layer.content.pieces(data, offset, size)
            if pieces:
                await self._decoded(layer, pieces, foreground=False)
                layer.stats.readahead_pieces += len(pieces)
        except LazyfsError as e:
            log.info("layer %s: readahead stopped: %s", layer.digest, e)
        finally:
            self._readaheads -= 1


async def _read_spans(blob: BlobSource, spans: list[Span]) -> tuple[list[bytes], int]:
    """The bytes of each span and how many requests it took; blobs that can
    answer several ranges at once (``read_ranges``) are asked that way."""
    many = getattr(blob, "read_ranges", None)
    if many is not None:
        return await many(spans)
    return [await blob.read_range(s, e) for s, e in spans], len(spans)


async def _decode(content: ContentReader, piece: Piece, raw: bytes) -> bytes:
    if len(raw) < INLINE_DECODE and piece.length < INLINE_DECODE:
        return content.decode(piece, raw)
    return await trio.to_thread.run_sync(content.decode, piece, raw)


def _retryable(e: LazyfsError) -> bool:
    """Failures another attempt may not meet: the network's, and bytes that
    arrived wrong (the registry's copy is checked by digest, so a mismatch
    is more likely a bad transfer than a bad blob)."""
    if isinstance(e, UnsafeEntry):
        return False
    return isinstance(e, (RegistryError, RegistryUnreachable, DigestMismatch, LayerFormatError))


def _is_local(blob: BlobSource) -> bool:
    """Whether the whole blob is on local disk already (then caching decoded
    pieces on disk too would only double the space)."""
    return blob.local_path() is not None

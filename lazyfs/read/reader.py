"""Reads of entry content: the one read path.

A read goes plan → memory → disk → fetch → decode → keep → slice: the layer's
format names the pieces holding the range; pieces in the reader's memory
cache are used as they are; the rest are claimed (``flights``) so that each
is loaded once however many reads want it at once, looked for in the chunk
cache on disk, and otherwise fetched (nearby pieces merged into spans, all
spans of one read in one multi-range request where the registry allows),
decoded and verified (in a worker thread when big), kept in memory and on
disk, and only then returned.

Retries live here too, one budget per read: a round in which the read's own
load, or one it waited for, fails spends one of ``FETCH_ATTEMPTS``; the
registry client underneath sends each request once. Transient failures (a
dropped or truncated answer, bytes that fail verification) thus cost at most
``FETCH_ATTEMPTS`` fetches before the read fails.

Reads that keep starting where the previous one of the same entry ended
start a bounded readahead in the background.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Hashable, Sequence

import trio

from ..blob import BlobSource, _pread
from ..errors import (CacheError, DigestMismatch, LayerFormatError, LazyfsError,
                      RegistryInterrupted, naming)
from ..formats import ContentReader, Piece, slice_piece
from ..store.chunks import ChunkCache
from .fetch import MERGE_GAP, decode, fetch, group, retryable
from .flights import Flight, Flights
from .memory import MEMORY_BYTES, InFlight, Memory
from .stats import EventLog, fetch_kind

__all__ = ["ChunkCache", "Layer", "LayerStats", "Reader"]

log = logging.getLogger(__name__)

FETCH_ATTEMPTS = 3
"""Failed rounds a read may have before its last error is raised."""
RETRY_DELAY = 0.2
READ_DEADLINE = 60.0
"""A read's deadline when the registry's options do not give one."""
READAHEAD_MIN = 1 << 20
READAHEAD_MAX = 8 << 20
READAHEAD_TASKS = 2
"""Readaheads in flight at once per reader; a sequential read past this is not prefetched."""
TRACKED_STREAMS = 256


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
    """Pieces found in memory or in the chunk cache on disk."""
    misses: int = 0
    """Pieces a read loaded from the blob itself."""
    shared: int = 0
    """Pieces a read waited for because another read (or readahead) was already fetching them."""
    verify_failures: int = 0
    retries: int = 0
    failed_reads: int = 0
    timeouts: int = 0
    """Reads that ran out of their deadline."""
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
class _Stream:
    """Where the last read of one entry ended, and how far readahead has reached."""

    end: int = 0
    window: int = 0
    ahead: int = 0


class Reader:
    def __init__(self, layers: Sequence[Layer], cache: ChunkCache,
                 nursery: trio.Nursery | None = None, memory_bytes: int = MEMORY_BYTES,
                 deadline: float = READ_DEADLINE):
        self.layers = list(layers)
        self._positions = {id(layer): i for i, layer in enumerate(self.layers)}
        self.cache = cache
        """The chunk cache on disk."""
        self.memory = Memory(memory_bytes)
        self.in_flight = InFlight()
        """Bounds what fetches and decodes under way hold, whatever the number of reads."""
        self.nursery = nursery
        """Where readahead runs; ``None`` turns readahead off."""
        self.deadline = deadline
        """Seconds one read may take, its retries included."""
        self._flights = Flights()
        self._streams: OrderedDict[tuple, _Stream] = OrderedDict()
        self._readaheads = 0
        self.events: EventLog | None = None
        """Where fetches and chunk-cache hits are logged, if anywhere."""
        self.reading = 0
        """Reads in progress: background work (trace replay) holds back while any is."""

    async def read(self, layer_index: int, data: bytes, offset: int, size: int) -> bytes:
        layer = self.layers[layer_index]
        pieces = layer.content.pieces(data, offset, size)
        self.reading += 1
        try:
            got = await self._obtain(layer, pieces)
        except LazyfsError:
            layer.stats.failed_reads += 1
            raise
        finally:
            self.reading -= 1
        self._sequential(layer_index, data, offset, size)
        return b"".join(slice_piece(p, got[p.key], offset, size) for p in pieces)

    async def warm(self, reads: Sequence[tuple[int, bytes, int, int]],
                   foreground: bool = True) -> None:
        """Bring the pieces of many ``(layer_index, data, offset, size)`` reads
        into the cache, one layer at a time: each layer's misses go out
        together, as one multi-range request where the registry takes them.
        Background warming (not ``foreground``) counts no hits."""
        by_layer: dict[int, list[Piece]] = {}
        for layer_index, data, offset, size in reads:
            by_layer.setdefault(layer_index, []).extend(
                self.layers[layer_index].content.pieces(data, offset, size))
        for layer_index, pieces in by_layer.items():
            await self._obtain(self.layers[layer_index], pieces, foreground)

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
            key = _piece_key(layer, p)
            decoded = self.memory.get(key)
            if decoded is None:
                end = min(p.end, blob_size)
                decoded = layer.content.decode(p, _pread(path, p.start, end - p.start))
                self.memory.put(key, decoded)
            out.append(slice_piece(p, decoded, offset, size))
        return b"".join(out)

    # -- the read path -----------------------------------------------------------

    async def _obtain(self, layer: Layer, pieces: Sequence[Piece],
                      foreground: bool = True) -> dict[tuple, bytes]:
        """The decoded bytes of each piece, by key, within one retry budget:
        ``FETCH_ATTEMPTS`` failed rounds and ``deadline`` seconds, waits for
        a slot, for other reads' flights and between attempts included."""
        wanted = list({p.key: p for p in pieces}.values())
        got: dict[tuple, bytes] = {}
        failures = 0
        last: LazyfsError | None = None
        until = trio.current_time() + self.deadline
        with trio.move_on_at(until):
            while todo := self._remembered(layer, wanted, got, foreground):
                error = await self._round(layer, todo, got, foreground)
                if error is None:
                    continue
                last = error
                failures += 1
                if not retryable(error) or failures >= FETCH_ATTEMPTS:
                    raise error
                wait = max(RETRY_DELAY * failures, getattr(error, "retry_after", None) or 0)
                if trio.current_time() + wait >= until:
                    raise error
                layer.stats.retries += 1
                log.warning("%s; retrying the read", naming(f"layer {layer.digest}", error,
                                                             layer.digest))
                await trio.sleep(wait)
            return got
        layer.stats.timeouts += 1
        why = f": {last}" if last is not None else ""
        raise RegistryInterrupted(f"layer {layer.digest}: read gave up after "
                                  f"{self.deadline:g} s{why}")

    def _remembered(self, layer: Layer, wanted: list[Piece], got: dict[tuple, bytes],
                    foreground: bool) -> list[Piece]:
        """Take what memory holds into ``got``; the pieces still missing."""
        todo = []
        for p in wanted:
            if p.key in got:
                continue
            data = self.memory.get(_piece_key(layer, p))
            if data is None:
                todo.append(p)
                continue
            got[p.key] = data
            if foreground:
                layer.stats.hits += 1
                self._log(layer, "hit", p.start, p.end - p.start)
        return todo

    async def _round(self, layer: Layer, todo: list[Piece], got: dict[tuple, bytes],
                     foreground: bool) -> LazyfsError | None:
        """Load the pieces nobody is loading, wait for the others; an error
        that one of them met, if any."""
        mine, theirs = self._flights.claim(_piece_key(layer, p) for p in todo)
        if mine:
            await self._fly(layer, [p for p in todo if _piece_key(layer, p) in mine], mine)
        error = None
        for p in todo:
            key = _piece_key(layer, p)
            flight = mine.get(key) or theirs[key]
            await flight.done.wait()
            if flight.data is None:
                if flight.error is not None and error is None:
                    error = flight.error if key in mine else _again(flight.error)
                continue
            got[p.key] = flight.data
            if foreground:
                _count(layer.stats, flight, key in mine)
        return error

    async def _fly(self, layer: Layer, pieces: list[Piece], flights: dict[Hashable, Flight]) -> None:
        """Load claimed pieces from disk, else from the blob. Every flight
        lands whatever happens: a retryable failure as its error (each read
        waiting on it spends one attempt), any other failure as well, and is
        raised; a cancelled one empty."""
        try:
            rest = await self._from_disk(layer, pieces, flights)
            if rest:
                await self._from_blob(layer, rest, flights)
        except LazyfsError as e:
            self._flights.fail(flights, e)
            if not retryable(e):
                raise
        finally:
            self._flights.fail(flights, None)

    async def _from_disk(self, layer: Layer, pieces: list[Piece],
                         flights: dict[Hashable, Flight]) -> list[Piece]:
        """Land the pieces the chunk cache has (each file read and checked
        once: its waiters share it); the rest."""
        if self.cache.root is None or _is_local(layer.blob):
            return pieces
        found = await trio.to_thread.run_sync(self._load, layer.digest, pieces)
        rest = []
        for p, data in zip(pieces, found):
            if data is None:
                rest.append(p)
                continue
            key = _piece_key(layer, p)
            self.memory.put(key, data)
            self._flights.land(key, flights[key], data)
            self._log(layer, "hit", p.start, p.end - p.start)
        return rest

    def _load(self, layer: str, pieces: list[Piece]) -> list[bytes | None]:
        return [self.cache.load(layer, p) for p in pieces]

    async def _from_blob(self, layer: Layer, pieces: list[Piece],
                         flights: dict[Hashable, Flight]) -> None:
        """Fetch, decode and keep; a span another read is fetching is waited for."""
        raw = await self._kept_spans(layer, pieces)
        wanted = sorted({(p.start, p.end) for p in pieces} - raw.keys())
        spans, _ = self._flights.claim(_span_key(layer, s) for s in wanted)
        held = sum(e - s for s, e in wanted) + sum(p.skip + p.length for p in pieces)
        try:
            async with self.in_flight.room(held):
                if wanted:
                    raw.update(await self._fetch(layer, wanted))
                kept = await self._decode_all(layer, pieces, flights, raw)
        finally:
            self._flights.fail(spans, None)
        if kept and self.cache.root is not None and not _is_local(layer.blob):
            await self._store(layer.digest, kept)

    async def _kept_spans(self, layer: Layer, pieces: list[Piece]) -> dict[tuple, bytes]:
        """The compressed bytes memory holds for the pieces, after waiting for
        the spans others are fetching (none of which waits on us)."""
        spans = {(p.start, p.end) for p in pieces}
        while True:
            raw = {s: d for s in spans if (d := self.memory.get(_span_key(layer, s))) is not None}
            busy = self._flights.busy(_span_key(layer, s) for s in spans if s not in raw)
            if not busy:
                return raw
            for flight in busy:
                await flight.done.wait()

    async def _fetch(self, layer: Layer, wanted: list[tuple[int, int]]) -> dict[tuple, bytes]:
        began = self.events.now() if self.events is not None else 0.0
        raw, requests, received = await fetch(layer.blob, wanted, MERGE_GAP)
        if not _is_local(layer.blob):
            layer.stats.requests += requests
            layer.stats.bytes_fetched += received
            for (start, end), _ in group(wanted, MERGE_GAP) if self.events is not None else ():
                self._log(layer, fetch_kind.get(), start, end - start, began)
        return raw

    def _log(self, layer: Layer, kind: str, offset: int, size: int,
             began: float | None = None) -> None:
        if self.events is not None:
            self.events.add(self._positions[id(layer)], kind, offset, size, began)

    async def _decode_all(self, layer: Layer, pieces: list[Piece], flights: dict[Hashable, Flight],
                          raw: dict[tuple, bytes]) -> list[tuple[Piece, bytes]]:
        """Decode, verify and keep each piece, landing its flight; the pieces kept."""
        kept = []
        for p in pieces:
            key, span = _piece_key(layer, p), raw[p.start, p.end]
            try:
                data = await decode(layer.content, p, span)
            except (DigestMismatch, LayerFormatError) as e:
                layer.stats.verify_failures += 1
                if (bad := getattr(layer.blob, "bad_bytes", None)) is not None:
                    bad(e)
                log.error("%s", naming(f"layer {layer.digest}", e, layer.digest))
                self.memory.discard(_span_key(layer, (p.start, p.end)))
                self._flights.land(key, flights[key], error=e)
                continue
            if data is not span:
                # Pieces of one span may differ only in how far they decode
                # (gzip, zstd): the next may need these bytes again soon.
                self.memory.put(_span_key(layer, (p.start, p.end)), span)
            self.memory.put(key, data)
            self._flights.land(key, flights[key], data, fetched=True)
            kept.append((p, data))
        return kept

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
        fetch_kind.set("readahead")
        try:
            pieces = layer.content.pieces(data, offset, size)
            if pieces:
                await self._obtain(layer, pieces, foreground=False)
                layer.stats.readahead_pieces += len(pieces)
        except LazyfsError as e:
            log.info("layer %s: readahead stopped: %s", layer.digest, e)
        finally:
            self._readaheads -= 1


def _piece_key(layer: Layer, piece: Piece) -> tuple:
    return (layer.digest, piece.key)


def _span_key(layer: Layer, span: tuple[int, int]) -> tuple:
    return ("span", layer.digest, *span)


def _count(stats: LayerStats, flight: Flight, mine: bool) -> None:
    if not flight.fetched:
        stats.hits += 1
    elif mine:
        stats.misses += 1
    else:
        stats.shared += 1


def _again(error: LazyfsError) -> LazyfsError:
    """Another read's error, as this read's own: one exception object raised
    in several tasks would collect all their tracebacks."""
    try:
        return type(error)(str(error))
    except TypeError:
        return LazyfsError(str(error))


def _is_local(blob: BlobSource) -> bool:
    """Whether the whole blob is on local disk already (then caching decoded
    pieces on disk too would only double the space)."""
    return blob.local_path() is not None

"""Reads of entry content: the one read path.

A read goes plan → memory → disk → fetch → decode → keep → slice: the layer's
format names the pieces holding the range; pieces the reader holds (in
memory, or as a chunk-cache file it has open) are used as they are; the rest
are claimed (``flights``) so that each is loaded once however many reads want
it at once, looked for in the chunk cache on disk (the file opened, in a
worker thread, and kept open), and otherwise fetched (nearby pieces merged
into spans, all spans of one read in one multi-range request where the
registry allows), decoded and verified (in a worker thread when big), written
to disk (or kept in memory where there is no chunk cache), and only then
returned. A piece on disk is served by reading the blocks the read needs from
its open file, each checked as it is read (``store.piecefile``): the warm
path holds no piece in memory and needs no thread once the file is open.

Retries live here too, one budget per read: a round in which the read's own
load, or one it waited for, fails spends one of ``FETCH_ATTEMPTS``; the
registry client underneath sends each request once. Transient failures (a
dropped or truncated answer, bytes that fail verification) thus cost at most
``FETCH_ATTEMPTS`` fetches before the read fails.

Reads that keep starting where the previous one of the same entry ended
start a bounded readahead in the background, and further ahead, the chunk
cache's files of the pieces coming up are opened and read into the page
cache (cheap: no memory of ours, no request), so that a warm sequential read
finds each piece's blocks in memory when it gets there.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Callable, Hashable, Sequence

import trio

from ..blob import BlobSource, _pread
from ..errors import (CacheError, DigestMismatch, LayerFormatError, LazyfsError,
                      RegistryInterrupted, naming)
from ..formats import ContentReader, Piece, slice_piece
from ..store.chunks import ChunkCache
from ..store.piecefile import Damaged, PieceFile
from .fetch import MERGE_GAP, decode, fetch, group, retryable
from .flights import Flight, Flights
from .memory import MEMORY_BYTES, OPEN_FILES, InFlight, Lru, Memory
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
SEQUENTIAL_SLACK = 1 << 20
"""A read starting this close to where the reads of its entry have reached
still belongs to them: the kernel's readahead sends several reads at once,
and they do not always arrive in order."""
OPEN_AHEAD = 32 << 20
"""How far ahead of a sequential reader the chunk cache's files are opened
and read into the page cache."""
OPEN_FILES_AHEAD = OPEN_FILES // 2
"""At most this many files opened ahead at once, however small the pieces."""
TRACKED_STREAMS = 256
SPAN_KEEP = 256 << 10
"""Compressed spans up to this size stay in memory once decoded."""
DAMAGED_RETRIES = 3
"""Times one read may find a piece file damaged (deleted, then loaded afresh) before it fails."""

Held = bytes | PieceFile
"""A piece as the reader has it: its bytes, or its checked file on disk."""


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
    opened: int = 0
    """How far files have been opened ahead."""


class Reader:
    def __init__(self, layers: Sequence[Layer], cache: ChunkCache,
                 nursery: trio.Nursery | None = None, memory_bytes: int = MEMORY_BYTES,
                 deadline: float = READ_DEADLINE):
        self.layers = list(layers)
        self._positions = {id(layer): i for i, layer in enumerate(self.layers)}
        self.cache = cache
        """The chunk cache on disk."""
        self.memory = Memory(memory_bytes)
        self.files = Lru(OPEN_FILES)
        """Chunk-cache files of pieces, open: warm reads are served from them."""
        self._storing: dict[tuple, bytes] = {}
        """Pieces fetched and not yet on disk (counted by ``in_flight``)."""
        self._writing = 0
        self._written: trio.Event | None = None
        self.in_flight = InFlight()
        """Bounds what fetches and decodes under way hold, whatever the number of reads."""
        self.nursery = nursery
        """Where readahead runs; ``None`` turns readahead off."""
        self.deadline = deadline
        """Seconds one read may take, its retries included."""
        self._flights = Flights()
        self._streams: OrderedDict[tuple, _Stream] = OrderedDict()
        self._readaheads = 0
        self._opening = False
        self.events: EventLog | None = None
        """Where fetches and chunk-cache hits are logged, if anywhere."""
        self.reading = 0
        """Reads in progress: background work (trace replay) holds back while any is."""

    async def read(self, layer_index: int, data: bytes, offset: int, size: int) -> bytes:
        layer = self.layers[layer_index]
        pieces = layer.content.pieces(data, offset, size)
        self.reading += 1
        try:
            parts = await self._parts(layer, pieces, offset, size)
        except LazyfsError:
            layer.stats.failed_reads += 1
            raise
        finally:
            self.reading -= 1
        self._sequential(layer_index, data, offset, size)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _parts(self, layer: Layer, pieces: Sequence[Piece], offset: int,
                     size: int) -> list[bytes]:
        """The read's bytes, one part per piece. A piece file that fails its
        check while being read is deleted and the piece loaded afresh."""
        for _ in range(DAMAGED_RETRIES):
            got = await self._obtain(layer, pieces)
            try:
                return [slice_piece(p, got[p.key], offset, size) for p in pieces]
            except Damaged as e:
                self._damaged(layer, pieces, got, e)
        raise CacheError(f"layer {layer.digest}: the chunk cache keeps handing back "
                         f"damaged files")

    def _damaged(self, layer: Layer, pieces: Sequence[Piece], got: dict[tuple, Held],
                 error: Damaged) -> None:
        for p in pieces:
            held = got[p.key]
            if isinstance(held, PieceFile) and held.damaged:
                log.warning("layer %s: chunk-cache file of bytes %d-%d is damaged (%s); "
                            "fetching it again", layer.digest, p.start, p.end, error)
                self.files.discard(_piece_key(layer, p))
                self.cache.discard(layer.digest, p)

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
                      foreground: bool = True) -> dict[tuple, Held]:
        """The decoded bytes (or checked file) of each piece, by key, within one retry budget:
        ``FETCH_ATTEMPTS`` failed rounds and ``deadline`` seconds, waits for
        a slot, for other reads' flights and between attempts included."""
        wanted = list({p.key: p for p in pieces}.values())
        got: dict[tuple, Held] = {}
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

    def _remembered(self, layer: Layer, wanted: list[Piece], got: dict[tuple, Held],
                    foreground: bool) -> list[Piece]:
        """Take what the reader holds into ``got``; the pieces still missing."""
        todo = []
        for p in wanted:
            if p.key in got:
                continue
            key = _piece_key(layer, p)
            held = self.files.get(key)
            if held is None:
                held = self.memory.get(key)
            if held is None:
                held = self._storing.get(key)
            if held is None:
                todo.append(p)
                continue
            got[p.key] = held
            if foreground:
                layer.stats.hits += 1
                self._log(layer, "hit", p.start, p.end - p.start)
        return todo

    async def _round(self, layer: Layer, todo: list[Piece], got: dict[tuple, Held],
                     foreground: bool) -> LazyfsError | None:
        """Load the pieces nobody is loading, wait for the others; an error
        that one of them met, if any."""
        mine, theirs = self._flights.claim(_piece_key(layer, p) for p in todo)
        if mine:
            await self._fly(layer, [p for p in todo if _piece_key(layer, p) in mine], mine,
                            ahead=not foreground)
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

    async def _fly(self, layer: Layer, pieces: list[Piece], flights: dict[Hashable, Flight],
                   ahead: bool = False) -> None:
        """Load claimed pieces from disk, else from the blob. Every flight
        lands whatever happens: a retryable failure as its error (each read
        waiting on it spends one attempt), any other failure as well, and is
        raised; a cancelled one empty."""
        try:
            rest = await self._from_disk(layer, pieces, flights, ahead)
            if rest:
                await self._from_blob(layer, rest, flights)
        except LazyfsError as e:
            self._flights.fail(flights, e)
            if not retryable(e):
                raise
        finally:
            self._flights.fail(flights, None)

    async def _from_disk(self, layer: Layer, pieces: list[Piece],
                         flights: dict[Hashable, Flight], ahead: bool) -> list[Piece]:
        """Land the pieces the chunk cache has, as open files (each opened
        once: its waiters share it, later reads find it in ``files``); the
        rest. Files opened ahead of a sequential reader are read into the
        page cache in the background."""
        if self.cache.root is None or _is_local(layer.blob):
            return pieces
        found = await trio.to_thread.run_sync(self._open, layer.digest, pieces, ahead)
        rest = []
        for p, f in zip(pieces, found):
            if f is None:
                rest.append(p)
                continue
            key = _piece_key(layer, p)
            self.files.put(key, f)
            self._flights.land(key, flights[key], f)
            self._log(layer, "hit", p.start, p.end - p.start)
        return rest

    def _open(self, layer: str, pieces: list[Piece], ahead: bool) -> list[PieceFile | None]:
        found = [self.cache.open(layer, p) for p in pieces]
        for f in found if ahead else ():
            if f is not None:
                f.advise()
        return found

    async def _from_blob(self, layer: Layer, pieces: list[Piece],
                         flights: dict[Hashable, Flight]) -> None:
        """Fetch, decode and keep; a span another read is fetching is waited for."""
        raw = await self._kept_spans(layer, pieces)
        wanted = sorted({(p.start, p.end) for p in pieces} - raw.keys())
        spans, _ = self._flights.claim(_span_key(layer, s) for s in wanted)
        held = sum(e - s for s, e in wanted) + sum(p.skip + p.length for p in pieces)
        disk = self.cache.root is not None and not _is_local(layer.blob)
        behind = False
        try:
            async with self.in_flight.room(held):
                if wanted:
                    raw.update(await self._fetch(layer, wanted))
                kept = await self._decode_all(layer, pieces, flights, raw, disk)
                del raw
                if kept and disk:
                    behind = await self._store_soon(layer, kept)
        finally:
            self._flights.fail(spans, None)
            for p in pieces if disk and not behind else ():
                self._storing.pop(_piece_key(layer, p), None)

    async def _store_soon(self, layer: Layer, kept: list[tuple[Piece, bytes]]) -> bool:
        """Write the pieces to the chunk cache behind the read that fetched
        them, which has its bytes already (a first read should not wait for
        a worker thread to write a file); True if it is left to a task of
        the nursery. The room their bytes take is reserved here, while this
        load still holds its own, and only if both fit the budget: the task
        waits for nothing but the write."""
        room = self.in_flight
        nbytes = min(sum(len(data) for _, data in kept), room.limit)
        if self.nursery is not None and room.used + nbytes <= room.limit:
            release = room.carry(nbytes)
            try:
                self.nursery.start_soon(self._store_behind, layer, kept, release)
            except RuntimeError:  # the image is closing: write here, as before
                release()
            else:
                self._writing += 1
                return True
        await self._store(layer, kept)
        return False

    async def _store_behind(self, layer: Layer, kept: list[tuple[Piece, bytes]],
                            release: Callable[[], None]) -> None:
        try:
            # as when the read waited for it: what was fetched is kept, also
            # by a process closing the image right after its read
            with trio.CancelScope(shield=True):
                await self._store(layer, kept)
        except Exception:  # noqa: BLE001 - a task of the image's nursery must not take the image down
            log.exception("layer %s: pieces not cached", layer.digest)
        finally:
            for p, _ in kept:
                self._storing.pop(_piece_key(layer, p), None)
            release()
            self._writing -= 1
            if not self._writing and self._written is not None:
                self._written.set()
                self._written = None

    async def written(self) -> None:
        """Until every piece fetched so far is in the chunk cache (or failed to get there)."""
        while self._writing:
            if self._written is None:
                self._written = trio.Event()
            await self._written.wait()

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
                          raw: dict[tuple, bytes], disk: bool) -> list[tuple[Piece, bytes]]:
        """Decode, verify and keep each piece (in memory, or until it is on
        ``disk`` in ``_storing``), landing its flight; the pieces kept."""
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
            if data is not span and len(span) <= SPAN_KEEP:
                # Small files packed into one compressed stream (eStargz,
                # zstd:chunked) are pieces of one span: the next may need
                # these bytes again soon. A big span holds one big chunk.
                self.memory.put(_span_key(layer, (p.start, p.end)), span)
            if disk:
                self._storing[key] = data
            else:
                self.memory.put(key, data)
            self._flights.land(key, flights[key], data, fetched=True)
            kept.append((p, data))
        return kept

    async def _store(self, layer: Layer, items: list[tuple[Piece, bytes]]) -> None:
        """Write pieces to the chunk cache; their files, open, serve the reads after."""
        def store_all() -> list[PieceFile | None]:
            return [self.cache.store(layer.digest, p, data) for p, data in items]
        try:
            files = await trio.to_thread.run_sync(store_all)
        except (CacheError, OSError) as e:
            log.warning("layer %s: not cached: %s", layer.digest, e)
            files = [None] * len(items)
        for (p, data), f in zip(items, files):
            key = _piece_key(layer, p)
            self._storing.pop(key, None)
            if f is not None:
                self.files.put(key, f)
            else:
                self.memory.put(key, data)

    # -- readahead ---------------------------------------------------------------

    def _sequential(self, layer_index: int, data: bytes, offset: int, size: int) -> None:
        key = (layer_index, data)
        s = self._streams.pop(key, None)
        if s is None or abs(offset - s.end) > SEQUENTIAL_SLACK:
            s = _Stream()
        elif offset + size <= s.end:
            pass  # a read behind the others (out of order, or again): no news
        elif s.window:
            s.window = min(s.window * 2, READAHEAD_MAX)
        else:
            s.window = READAHEAD_MIN
        s.end = max(s.end, offset + size)
        self._streams[key] = s
        while len(self._streams) > TRACKED_STREAMS:
            self._streams.popitem(last=False)
        if not s.window or self.nursery is None:
            return
        opening = (self.cache.root is not None and not self._opening
                   and s.opened - s.end < OPEN_AHEAD // 2)
        start, stop = max(s.end, s.ahead), s.end + s.window
        fetching = self._readaheads < READAHEAD_TASKS and stop - start >= s.window // 2
        layer = self.layers[layer_index]
        if not (opening or fetching) or _is_local(layer.blob):
            return
        if opening and self._spawn(self._open_files, layer, data, max(s.end, s.opened),
                                   s.end + OPEN_AHEAD):
            s.opened = s.end + OPEN_AHEAD
            self._opening = True
        if fetching and self._spawn(self._readahead, layer, data, start, stop):
            s.ahead = stop
            self._readaheads += 1

    def _spawn(self, task, layer: Layer, data: bytes, start: int, stop: int) -> bool:
        try:
            self.nursery.start_soon(task, layer, data, start, stop - start)
        except RuntimeError:  # the image is closing
            return False
        return True

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

    async def _open_files(self, layer: Layer, data: bytes, offset: int, size: int) -> None:
        """Open the chunk cache's files of the pieces of a range that the
        reader does not hold, with the page cache told to read them in; the
        pieces that are not on disk are left to the reads (and readahead)."""
        try:
            pieces = list({p.key: p for p in layer.content.pieces(data, offset, size)}.values())
            keys = [_piece_key(layer, p) for p in pieces]
            todo = [k for k in keys if self.files.get(k) is None and self.memory.get(k) is None
                    and k not in self._storing][:OPEN_FILES_AHEAD]
            mine, _ = self._flights.claim(todo)
            try:
                claimed = [p for p, k in zip(pieces, keys) if k in mine]
                if claimed:
                    await self._from_disk(layer, claimed, mine, ahead=True)
            finally:
                self._flights.fail(mine, None)
        finally:
            self._opening = False


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

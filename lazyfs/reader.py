"""Reads of entry content: the one place fetching, caching and coalescing live.

A read asks the layer's format which pieces hold the range, serves what it
can from the chunk cache, fetches the rest with as few range requests as
possible (adjacent pieces merged, identical in-flight fetches shared), decodes
and verifies in a worker thread, and only then caches. Nothing unverified is
ever cached or returned.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import trio

from .blob import BlobSource, _pread
from .errors import DigestMismatch, LayerFormatError, LazyfsError
from .formats import ContentReader, Piece, slice_piece

log = logging.getLogger(__name__)

MERGE_GAP = 64 * 1024
"""Pieces closer than this in the blob are fetched in one request."""

INLINE_DECODE = 64 * 1024
"""Pieces smaller than this decode on the event loop: a worker-thread hop
costs more than the work."""


@dataclass
class LayerStats:
    format: str = ""
    mode: str = "lazy"
    reason: str = ""
    size: int = 0
    bytes_fetched: int = 0
    requests: int = 0
    hits: int = 0
    misses: int = 0
    verify_failures: int = 0


@dataclass
class Layer:
    """One layer as the reader needs it."""

    digest: str
    content: ContentReader
    blob: BlobSource
    stats: LayerStats = field(default_factory=LayerStats)


class ChunkCache:
    """Decoded, verified pieces on disk (shared by every process) with a small
    in-memory LRU in front. A file appears only by rename once complete."""

    def __init__(self, root: Path | None, memory_bytes: int = 64 << 20):
        self.root = root
        self._mem: OrderedDict[tuple, bytes] = OrderedDict()
        self._mem_bytes = 0
        self._mem_limit = memory_bytes

    def _path(self, layer: str, piece: Piece) -> Path:
        algo, _, hexd = layer.partition(":")
        tag = hashlib.sha256(repr(piece.key).encode()).hexdigest()[:32]
        return self.root / algo / hexd[:2] / hexd / tag

    def get(self, layer: str, piece: Piece, disk: bool = True) -> bytes | None:
        key = (layer, piece.key)
        data = self._mem.get(key)
        if data is not None:
            self._mem.move_to_end(key)
            return data
        if self.root is None or not disk:
            return None
        try:
            data = self._path(layer, piece).read_bytes()
        except OSError:
            return None
        self._remember(key, data)
        return data

    def put(self, layer: str, piece: Piece, data: bytes, disk: bool = True) -> None:
        self._remember((layer, piece.key), data)
        if self.root is None or not disk:
            return
        path = self._path(layer, piece)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def _remember(self, key: tuple, data: bytes) -> None:
        if len(data) > self._mem_limit // 4:
            return
        if key in self._mem:
            return
        self._mem[key] = data
        self._mem_bytes += len(data)
        while self._mem_bytes > self._mem_limit:
            _, old = self._mem.popitem(last=False)
            self._mem_bytes -= len(old)


class Reader:
    def __init__(self, layers: Sequence[Layer], cache: ChunkCache):
        self.layers = list(layers)
        self.cache = cache
        self._inflight: dict[tuple, trio.Event] = {}

    async def read(self, layer_index: int, data: bytes, offset: int, size: int) -> bytes:
        layer = self.layers[layer_index]
        pieces = layer.content.pieces(data, offset, size)
        decoded = await self._decoded(layer, pieces)
        return b"".join(slice_piece(p, d, offset, size) for p, d in zip(pieces, decoded))

    def read_local(self, layer_index: int, data: bytes, offset: int, size: int) -> bytes:
        """The same read, blocking, for a layer whose blob is whole on local
        disk (after ``fetch_all``): for bulk work in one worker thread."""
        layer = self.layers[layer_index]
        path = layer.blob.local_path()
        if path is None:
            raise LazyfsError(f"layer {layer.digest} is not on local disk")
        out = []
        for p in layer.content.pieces(data, offset, size):
            decoded = self.cache.get(layer.digest, p, disk=False)
            if decoded is None:
                decoded = layer.content.decode(p, _pread(path, p.start, p.end - p.start))
                self.cache.put(layer.digest, p, decoded, disk=False)
            out.append(slice_piece(p, decoded, offset, size))
        return b"".join(out)

    async def _decoded(self, layer: Layer, pieces: Sequence[Piece]) -> list[bytes]:
        out: list[bytes | None] = [self.cache.get(layer.digest, p) for p in pieces]
        missing = [i for i, d in enumerate(out) if d is None]
        layer.stats.hits += len(pieces) - len(missing)
        layer.stats.misses += len(missing)
        for group in _groups([pieces[i] for i in missing]):
            await self._fetch_group(layer, group)
        for i in missing:
            data = self.cache.get(layer.digest, pieces[i])
            if data is None:
                raise LazyfsError(f"layer {layer.digest}: piece vanished from the cache")
            out[i] = data
        return out  # type: ignore[return-value]

    async def _fetch_group(self, layer: Layer, group: list[Piece]) -> None:
        keys = [(layer.digest, p.key) for p in group]
        waits = [self._inflight[k] for k in keys if k in self._inflight]
        if waits:
            for ev in waits:
                await ev.wait()
            group = [p for p in group if self.cache.get(layer.digest, p) is None]
            if not group:
                return
            keys = [(layer.digest, p.key) for p in group]
        events = {k: trio.Event() for k in keys}
        self._inflight.update(events)
        try:
            start, end = group[0].start, max(p.end for p in group)
            raw = await layer.blob.read_range(start, end)
            layer.stats.requests += 1
            layer.stats.bytes_fetched += len(raw)
            for p in group:
                try:
                    data = await _decode(layer.content, p, raw[p.start - start: p.end - start])
                except (DigestMismatch, LayerFormatError) as e:
                    layer.stats.verify_failures += 1
                    log.error("layer %s: %s", layer.digest, e)
                    raise
                self.cache.put(layer.digest, p, data, disk=not _is_local(layer.blob))
        finally:
            for k, ev in events.items():
                self._inflight.pop(k, None)
                ev.set()


async def _decode(content: ContentReader, piece: Piece, raw: bytes) -> bytes:
    if len(raw) < INLINE_DECODE and piece.length < INLINE_DECODE:
        return content.decode(piece, raw)
    return await trio.to_thread.run_sync(content.decode, piece, raw)


def _is_local(blob: BlobSource) -> bool:
    """Whether the whole blob is on local disk already (then caching decoded
    pieces on disk too would only double the space)."""
    return blob.local_path() is not None


def _groups(pieces: list[Piece]) -> list[list[Piece]]:
    """Pieces merged into runs that one range request can serve."""
    groups: list[list[Piece]] = []
    for p in sorted(pieces, key=lambda p: p.start):
        if groups and p.start <= max(q.end for q in groups[-1]) + MERGE_GAP:
            groups[-1].append(p)
        else:
            groups.append([p])
    return groups

"""Serving a layer that cannot be read in part (a single zstd frame) from its
decompressed copy.

Such a layer has to be inflated from its start for any read. Doing that once
into the store, keyed and verified by the layer's diff_id (the sha256 of the
uncompressed tar, which the image config publishes), turns every later read
into a plain ``pread``; without it every read would inflate the whole layer.
"""

from __future__ import annotations

import struct
from pathlib import Path

import trio
import zstandard

from ..blob import BlobSource, _pread, check_range
from ..errors import DigestMismatch, LayerFormatError
from ..formats.base import Piece
from ..store.blobs import Store

BLOCK = 1 << 20
_LOC = struct.Struct("<QQ")


class DecompressedBlob:
    """The uncompressed tar of a layer, made on first use from the whole blob."""

    def __init__(self, compressed: BlobSource, diff_id: str, store: Store):
        self.digest = diff_id
        self.size = 0
        self._compressed, self._store = compressed, store
        self._lock = trio.Lock()

    def local_path(self) -> Path | None:
        path = self._store.blob_path(self.digest)
        if path is not None and not self.size:
            self.size = path.stat().st_size
        return path

    async def path(self) -> Path:
        async with self._lock:
            if (local := self.local_path()) is not None:
                return local
            source = await self._compressed.path()
            async with self._store.blob_writer(self.digest) as w:
                await trio.to_thread.run_sync(w.restart)
                await trio.to_thread.run_sync(_inflate_into, source, w, self._compressed.digest)
            local = self.local_path()
            if local is None:
                raise DigestMismatch(f"layer {self._compressed.digest}: decompressed copy missing")
            return local

    async def read_range(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)``, the end clipped to the copy's size: pieces
        are whole blocks, and the last block of a tar is short."""
        local = self.local_path() or await self.path()
        end = min(end, self.size)
        check_range(self, start, end)
        return await trio.to_thread.run_sync(_pread, local, start, end - start)


    async def read_ranges(self, spans: list[tuple[int, int]]) -> tuple[list[bytes], int]:
        """Local reads: they cost no request (the whole pull that fed the
        copy is counted where it happened)."""
        return [await self.read_range(s, e) for s, e in spans], 0


def _inflate_into(source: Path, writer, layer: str) -> None:
    try:
        with open(source, "rb") as f:
            reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
            while chunk := reader.read(4 << 20):
                writer.write(chunk)
    except zstandard.ZstdError as e:
        raise LayerFormatError(f"layer {layer}: cannot inflate ({e})") from None


class PlainTarReader:
    """Reads of ``(tar offset, size)`` locators straight from the uncompressed
    copy, in 1 MiB blocks so the memory cache can share them between files."""

    def pieces(self, data: bytes, offset: int, size: int) -> list[Piece]:
        base, fsize = _LOC.unpack(data)
        stop = min(offset + size, fsize)
        out = []
        pos = max(0, offset)
        while pos < stop:
            block = (base + pos) // BLOCK * BLOCK
            block_end = block + BLOCK
            content_end = min(stop, block_end - base)
            out.append(Piece(block, block_end, "plain", skip=base + pos - block,
                             length=content_end - pos, content_offset=pos))
            pos = content_end
        return out

    def decode(self, piece: Piece, raw: bytes) -> bytes:
        return raw

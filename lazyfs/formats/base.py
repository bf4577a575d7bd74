"""What every layer format provides, and the one generic read over it.

A format is split the way stargz-snapshotter splits it: *planning* (which
compressed bytes of the blob hold a range of one entry: pure, cheap) and
*decoding* (turn those bytes into content, verifying them: CPU work, run in a
worker thread). Fetching sits between the two and belongs to the reader, so
coalescing, caching and retries live in one place and no format has its own.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

import trio

from ..blob import BlobSource
from ..errors import DigestMismatch, LayerFormatError
from .entry import Entry, EntryType


@dataclass(frozen=True, slots=True)
class Piece:
    """One independently decodable run of blob bytes.

    ``decode`` of ``blob[start:end]`` yields content of which the bytes
    ``[skip, skip + length)`` are the entry's content from ``content_offset``.
    Pieces of one blob with equal ``(start, end, codec, params)`` decode to the
    same bytes, so a cache may key on those.
    """

    start: int
    end: int
    codec: str
    params: bytes = b""
    skip: int = 0
    length: int = 0
    content_offset: int = 0

    @property
    def key(self) -> tuple:
        return (self.start, self.end, self.codec, self.params)


@dataclass(slots=True)
class LayerTable:
    """A layer's entries plus what its format needs to read them later."""

    format: str
    """``tar``, ``gzip``, ``estargz``, ``zstd`` or ``zstd:chunked``."""
    lazy: bool
    """Whether reads can be served from ranges of the blob."""
    reason: str = ""
    """Why reads need the whole blob, when ``lazy`` is false."""
    state: bytes = b""
    """Format state (seek points, frame table, ...), opaque outside the format."""
    entries: list[Entry] = field(default_factory=list)
    diff_id: str = ""
    """The digest of the layer's uncompressed bytes, when the pass that built
    this table read all of them (empty otherwise: nothing to check)."""


def check_diff_id(table: LayerTable, layer: str, expected: str) -> None:
    """``DigestMismatch`` when the table's pass found the layer's uncompressed
    bytes to differ from what the image config says (``rootfs.diff_ids``):
    containerd refuses such a layer, and so do we."""
    if table.diff_id and expected and table.diff_id != expected:
        raise DigestMismatch(f"layer {layer}: its uncompressed content hashes to "
                             f"{table.diff_id}, the image config says {expected} (diff_id)")


class ContentReader(Protocol):
    """Built from a ``LayerTable``'s format and state; no I/O of its own."""

    def pieces(self, data: bytes, offset: int, size: int) -> Sequence[Piece]:
        """The pieces covering ``[offset, offset + size)`` of the entry whose
        locator is ``data``, in content order (clipped to the entry's size)."""

    def decode(self, piece: Piece, raw: bytes) -> bytes:
        """Decode and verify one piece; raise ``DigestMismatch`` or
        ``LayerFormatError`` rather than return wrong bytes."""


async def read_content(reader: ContentReader, blob: BlobSource, data: bytes,
                       offset: int, size: int) -> bytes:
    """Read one range of one entry with no cache: fetch each piece, decode it
    in a worker thread, keep the wanted bytes. The reader module does the
    same with caching and coalescing."""
    out = []
    for piece in reader.pieces(data, offset, size):
        raw = await blob.read_range(piece.start, piece.end)
        decoded = await trio.to_thread.run_sync(reader.decode, piece, raw)
        out.append(slice_piece(piece, decoded, offset, size))
    return b"".join(out)


def inflate_streams(raw: bytes, want: int, decompressor, error: type[Exception],
                    kind: str) -> bytes:
    """At least ``want`` bytes (if there are that many) from consecutive
    compressed streams (gzip members, zstd frames) in ``raw``, fed in pieces
    so a large stream is not re-copied; ``decompressor()`` makes a fresh
    zlib- or zstandard-style decompressobj."""
    out = bytearray()
    rest = memoryview(raw)
    while len(rest) and len(out) < want:
        d = decompressor()
        pos = 0
        while not d.eof and len(out) < want:
            if pos >= len(rest):
                raise error(f"data ends inside a {kind}")
            out += d.decompress(rest[pos:pos + 65536])
            pos += 65536
        if not d.eof:
            break
        rest = memoryview(d.unused_data + bytes(rest[pos:]))
    return bytes(out)


def slice_piece(piece: Piece, decoded: bytes, offset: int, size: int) -> bytes:
    """The part of a decoded piece that falls into ``[offset, offset + size)``."""
    lo = max(offset, piece.content_offset)
    hi = min(offset + size, piece.content_offset + piece.length)
    if hi <= lo:
        return b""
    base = piece.skip - piece.content_offset
    return decoded[base + lo: base + hi]


# -- checking a table that came from elsewhere (a shared index) -------------------------

def files_of(table: LayerTable) -> Iterator[Entry]:
    return (e for e in table.entries if e.type is EntryType.FILE)


def check_locator(st: struct.Struct, entry: Entry) -> tuple:
    """A file's locator, whose size (its second field) must be the entry's:
    reads are clipped to both."""
    if len(entry.data) != st.size:
        raise LayerFormatError(f"malformed locator of {entry.name!r}")
    fields = st.unpack(entry.data)
    if fields[1] != entry.size:
        raise LayerFormatError(f"{entry.name!r} is {entry.size} bytes, "
                               f"its locator says {fields[1]}")
    return fields


def entry_differences(shared: Sequence[Entry], built: Sequence[Entry], limit: int = 5) -> list[str]:
    if len(shared) != len(built):
        return [f"{len(shared)} entries, the layer has {len(built)}"]
    out = [f"entry {a.name!r} differs from the layer's {b.name!r}"
           for a, b in zip(shared, built) if a != b]
    return out[:limit]


def same_state(table: LayerTable, built: LayerTable, blob) -> list[str]:
    """For formats whose state is a pure function of the blob (digests of
    chunks or frames at fixed places): it must equal the one built here."""
    return [] if table.state == built.state else ["chunk or frame digests differ from the layer's"]

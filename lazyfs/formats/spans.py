"""Checkpointed spans: a compressed stream cut where decoding can restart.

gzip (at deflate checkpoints) and plain zstd (at frame starts) are read the
same way: a table of spans, each a compressed extent of the blob, the output
extent it inflates to, and the sha256 of its compressed bytes (the blob digest
covers only the whole blob, so every fetched span is checked on its own). A
gzip span also keeps where its first bit is and the window it starts with.

``Entry.data`` of a file is ``LOCATOR``: its offset in the decompressed tar
and its size. The state is the span table in a binary layout whose magic
names the format, so one format's state is never read as another's.
"""

from __future__ import annotations

import bisect
import hashlib
import struct
import zlib
from dataclasses import dataclass
from typing import Sequence

from ..errors import CorruptData, DigestMismatch, LayerFormatError
from .base import LayerTable, Piece, check_locator, files_of
from .entry import Entry, EntryType
from .tarheader import Member

FEED = 64 << 10
"""Compressed bytes handed to a decompressor at a time."""
MAX_WINDOW = 32 << 10
"""The largest window deflate can refer back into."""

LOCATOR = struct.Struct("<QQ")
PARAMS = struct.Struct("<IQ")
_HEAD = struct.Struct("<4sHI")
_SPAN = struct.Struct("<QQQQBI")


@dataclass(frozen=True, slots=True)
class Span:
    start: int
    """First blob byte of the span (the byte holding the checkpoint's first bit)."""
    end: int
    ustart: int
    ulen: int
    bits: int
    """How many high bits of the byte at ``start`` begin this span; 0 when the
    span starts on a byte boundary."""
    window: bytes
    """zlib-compressed inflate window; empty at a stream start."""
    digest: bytes


def located(m: Member) -> Entry:
    """The entry of a tar member, a file's ``data`` set to its ``LOCATOR``."""
    if m.entry.type is EntryType.FILE:
        m.entry.data = LOCATOR.pack(m.offset, m.entry.size)
    return m.entry


def encode_state(layer: str, spans: Sequence[Span], magic: bytes) -> bytes:
    name = layer.encode()
    parts = [_HEAD.pack(magic, len(name), len(spans)), name]
    for s in spans:
        parts.append(_SPAN.pack(s.start, s.end, s.ustart, s.ulen, s.bits, len(s.window)))
    parts += [s.digest for s in spans]
    parts += [s.window for s in spans]
    return b"".join(parts)


def decode_state(state: bytes, magic: bytes) -> tuple[str, list[Span]]:
    """The inverse of ``encode_state``; ``LayerFormatError`` for anything else
    (the state may come from a shared layer table, i.e. from a registry)."""
    try:
        layer, spans, end = _decode_state(state, magic)
    except (struct.error, UnicodeDecodeError):
        raise LayerFormatError("layer table state is truncated or corrupt") from None
    if end != len(state):
        raise LayerFormatError("layer table state is truncated or corrupt")
    return layer, spans


def _decode_state(state: bytes, magic: bytes) -> tuple[str, list[Span], int]:
    got, nlen, n = _HEAD.unpack_from(state, 0)
    if got != magic:
        raise LayerFormatError("layer table state is not of this format")
    pos = _HEAD.size
    layer = state[pos:pos + nlen].decode()
    pos += nlen
    rows = [_SPAN.unpack_from(state, pos + i * _SPAN.size) for i in range(n)]
    pos += n * _SPAN.size
    digests = [state[pos + 32 * i: pos + 32 * i + 32] for i in range(n)]
    pos += 32 * n
    spans = []
    for (start, end, ustart, ulen, bits, wlen), digest in zip(rows, digests):
        spans.append(Span(start, end, ustart, ulen, bits, state[pos:pos + wlen], digest))
        pos += wlen
    return layer, spans, pos


def span_pieces(spans: Sequence[Span], starts: Sequence[int], codec: str,
                data: bytes, offset: int, size: int) -> list[Piece]:
    """One piece per span that holds part of ``[offset, offset + size)`` of the entry."""
    at, length = LOCATOR.unpack(data)
    offset, end = max(offset, 0), min(offset + size, length)
    if end <= offset:
        return []
    lo, hi = at + offset, at + end
    i = bisect.bisect_right(starts, lo) - 1
    out = []
    while i < len(spans) and spans[i].ustart < hi:
        s = spans[i]
        # Every read of a span inflates all of it: one piece (one cache key)
        # per span. Pieces that stopped early for reads near the span's start
        # saved a few ms of inflating but were a second key for the same
        # compressed bytes, which were fetched again for the first deeper
        # read once memory had let them go (random reads fetched 1.8x the layer).
        want = s.ulen
        first = max(s.ustart, at)
        out.append(Piece(s.start, s.end, codec, PARAMS.pack(i, want), first - s.ustart,
                         min(at + length, s.ustart + want) - first, first - at))
        i += 1
    return out


def check_span(layer: str, spans: Sequence[Span], i: int, raw: bytes) -> Span:
    if i >= len(spans):
        raise LayerFormatError(f"layer {layer}: span {i} is not in the layer table")
    s = spans[i]
    if hashlib.sha256(raw).digest() != s.digest:
        raise DigestMismatch(f"layer {layer}: bytes {s.start}-{s.end} (span {i}) "
                             f"do not match their recorded digest")
    return s


class SpanReader:
    """Plans reads over a span table; a format says how one span inflates
    (``inflate``) and which exceptions of its decoder mean broken data."""

    codec = ""
    magic = b""
    what = "span"
    errors: tuple[type[Exception], ...] = ()

    def __init__(self, state: bytes):
        self._layer, self._spans = decode_state(state, self.magic)
        self._starts = [s.ustart for s in self._spans]

    @classmethod
    def from_spans(cls, layer: str, spans: Sequence[Span]) -> "SpanReader":
        """A reader over spans known so far (a layer being indexed as it
        arrives), for content they already cover; no state to encode and decode."""
        self = cls.__new__(cls)
        self._layer, self._spans = layer, list(spans)
        self._starts = [s.ustart for s in self._spans]
        return self

    def pieces(self, data: bytes, offset: int, size: int) -> list[Piece]:
        return span_pieces(self._spans, self._starts, self.codec, data, offset, size)

    def decode(self, piece: Piece, raw: bytes) -> bytes:
        i, want = PARAMS.unpack(piece.params)
        span = check_span(self._layer, self._spans, i, raw)
        try:
            out = self.inflate(span, raw, want)
        except self.errors as e:
            raise CorruptData(f"layer {self._layer}: {self.what} {i}: {e}") from None
        if len(out) < want:
            raise CorruptData(f"layer {self._layer}: {self.what} {i} inflates to fewer "
                              f"bytes than the table says")
        return out[:want] if len(out) > want else out

    def inflate(self, span: Span, raw: bytes, want: int) -> bytes:
        """At least ``want`` bytes (if there are that many) of ``span``, from its bytes ``raw``."""
        raise NotImplementedError


def check_span_table(table: LayerTable, desc, magic: bytes, always_lazy: bool) -> None:
    """What a span table can be checked for without the blob: it was built for
    ``desc``, its spans tile the output and stay inside the blob, and every
    file lies inside the output. ``LayerFormatError`` otherwise."""
    try:
        layer, spans = decode_state(table.state, magic)
    except LayerFormatError as e:
        raise LayerFormatError(f"{table.format} {e}") from None
    if layer != desc.digest:
        raise LayerFormatError(f"the table was built for layer {layer}")
    if table.lazy != (always_lazy or len(spans) > 1):
        raise LayerFormatError(f"claims lazy={table.lazy} for {len(spans)} spans")
    out = 0
    for i, s in enumerate(spans):
        if s.ustart != out or s.ulen <= 0 or not 0 <= s.start < s.end <= desc.size \
                or not 0 <= s.bits < 8 or len(s.digest) != 32:
            raise LayerFormatError(f"span {i} is malformed or outside the layer")
        if s.window and len(zlib.decompressobj().decompress(s.window, MAX_WINDOW + 1)) \
                > MAX_WINDOW:
            raise LayerFormatError(f"span {i} has an oversized window")
        out += s.ulen
    for e in files_of(table):
        start, size = check_locator(LOCATOR, e)
        if start + size > out:
            raise LayerFormatError(f"{e.name} lies outside the layer")

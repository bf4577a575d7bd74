"""gzip layers (``tar+gzip``): one pass builds the entries and zran seek points.

A gzip stream has no random access, so the build pass inflates the whole
verified blob once (rapidgzip, in parallel), feeding the tar parser as it
goes, and keeps the library's deflate-block checkpoints about every ``SPAN``
bytes of output: compressed offset and bit, output offset and the 32 KiB
window that the next block may refer back into. A later read fetches only
the compressed span(s) between checkpoints, checks each span's sha256
(recorded in the build pass, since the blob digest covers only the whole
blob) and inflates it with stdlib zlib from the checkpoint.

A layer still downloading is indexed by ``StreamIndexer`` instead, from
its bytes as they arrive (``zran.py`` inflates them through libz): the same
entries and the same kind of spans, published as soon as they are known.

``Entry.data`` is ``(tar offset, size)``; the state holds the span table,
span digests and zlib-compressed windows.
"""

from __future__ import annotations

import array
import bisect
import collections
import hashlib
import io
import mmap
import os
import struct
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import rapidgzip
import trio

from ..blob import BlobSource
from .entry import Entry, EntryType
from ..errors import DigestMismatch, LayerFormatError
from .tarheader import Member, TarParser
from .base import LayerTable, Piece
from .zran import WINDOW, Inflater, Point

SPAN = 2 << 20
"""Output bytes between kept checkpoints. On a 99 MB tar of Python sources
(29 MB gzip) 1/2/4 MiB spans gave a 204/106/56 kB state and random 4 KiB
reads of 14/17/28 ms on a busy 2-core machine (a read inflates about half a
span); the library's sparse windows compress to ~2 kB each, so 2 MiB keeps a
400 MB layer's state near 0.4 MB while bounding a small read's inflate."""
STEP = 512 << 10
"""A piece inflates its span only up to a multiple of this, so small reads stay cheap
while pieces of one span still share few distinct cache keys."""
FEED = 64 << 10
CHUNK = 512 << 10
"""rapidgzip's chunk size, which also spaces its checkpoints. One thread per
layer: a mount indexes its layers concurrently anyway, and on a 99 MB layer
two threads peaked at ~130 MB against ~45 MB for one, for little gain on 2
cores."""

_LOC = struct.Struct("<QQ")
_PARAMS = struct.Struct("<IQ")
_HEAD = struct.Struct("<4sHI")
_SPAN = struct.Struct("<QQQQBI")
_MAGIC = b"LZG1"


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


async def build(desc, blob: BlobSource) -> LayerTable:
    path = await blob.path()
    return await trio.to_thread.run_sync(build_from_file, path, desc.digest)


def build_from_file(path: Path, layer: str, span: int = SPAN) -> LayerTable:
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            raise LayerFormatError(f"layer {layer}: blob is not gzip (bad magic)")
    parser = TarParser(layer)
    members = []
    try:
        with rapidgzip.RapidgzipFile(str(path), parallelization=1,
                                     chunk_size=min(span, CHUNK)) as f:
            while chunk := f.read(4 << 20):
                members += parser.feed(chunk)
            exported = io.BytesIO()
            f.export_index(exported)
    except (ValueError, RuntimeError) as e:
        raise LayerFormatError(f"layer {layer}: broken gzip stream: {_first_line(e)}") from None
    parser.close()
    size = os.path.getsize(path)
    points = _keep(parse_gzidx(exported.getvalue(), layer), span, size, parser.offset)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
        spans = _spans(points, mm)
    for m in members:
        if m.entry.type is EntryType.FILE:
            m.entry.data = _LOC.pack(m.offset, m.entry.size)
    return LayerTable("gzip", True, state=encode_state(layer, spans),
                      entries=[m.entry for m in members])


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


def parse_gzidx(data: bytes, layer: str) -> list[Point]:
    """The checkpoints of an index in indexed_gzip's GZIDX format, version 1."""
    if data[:5] != b"GZIDX" or len(data) < 35 or data[5] != 1:
        raise LayerFormatError(f"layer {layer}: unexpected gzip index format")
    _cs, _us, _spacing, wsize, n = struct.unpack_from("<QQIII", data, 7)
    pos = 35
    raw = []
    for _ in range(n):
        raw.append(struct.unpack_from("<QQBB", data, pos))
        pos += 18
    points = []
    for cmp, out, bits, has_window in raw:
        window = b""
        if has_window:
            window = data[pos:pos + wsize]
            pos += wsize
            if len(window) != wsize:
                raise LayerFormatError(f"layer {layer}: truncated gzip index")
            if out < wsize:
                window = window[wsize - out:]
        points.append(Point(cmp, bits, out, window))
    return points


def _keep(points: list[Point], span: int, size: int, total: int) -> list[Point]:
    """Checkpoints about ``span`` output bytes apart, ending with an end sentinel."""
    if not points or points[0].out != 0:
        raise LayerFormatError("gzip index does not start at offset 0")
    kept = [points[0]]
    for p in points[1:]:
        if p.out >= total:
            break
        if p.out - kept[-1].out >= span:
            kept.append(p)
    kept.append(Point(size, 0, total, b""))
    return kept


def _spans(points: list[Point], blob) -> list[Span]:
    spans = []
    view = memoryview(blob)
    try:
        for p, nxt in zip(points, points[1:]):
            if nxt.out == p.out:
                continue
            start = p.cmp - 1 if p.bits else p.cmp
            digest = hashlib.sha256(view[start:nxt.cmp]).digest()
            window = zlib.compress(p.window, 6) if p.window else b""
            spans.append(Span(start, nxt.cmp, p.out, nxt.out - p.out, p.bits, window, digest))
    finally:
        view.release()
    return spans


class StreamIndexer:
    """The table ``build_from_file`` makes, built from the blob's bytes as
    they arrive, so a mount can answer before the layer is whole.

    ``feed`` the blob in order; it returns the entries whose headers are
    complete. ``spans`` grows as checkpoints are passed and ``covered`` says
    how many output bytes those spans hold, so a reader over them
    (``GzipReader.from_spans``) can serve content that is already covered.
    Each span's digest is hashed on the way: memory stays at the feed plus
    the inflater's buffers, whatever the layer's size.

    A checkpoint is published only once output follows it: one at the very
    end of the output is dropped, as ``_keep`` drops it, so the last span
    runs to the end of the blob.
    """

    def __init__(self, layer: str, span: int = SPAN):
        self.layer = layer
        self.spans: list[Span] = []
        self.covered = 0
        self._inflater = Inflater(layer, span)
        self._parser = TarParser(layer)
        self._entries: list[Entry] = []
        self._size = 0
        self._last_byte = b""
        self._open = self._inflater.points[0]
        self._hash = hashlib.sha256()
        self._head = bytearray()
        self._seen = 1
        self._pending: tuple[Point, bytes] | None = None
        self._next = hashlib.sha256()
        self._next_head = bytearray()

    def feed(self, data: bytes) -> list[Entry]:
        members: list[Member] = []
        try:
            for chunk in self._inflater.feed(data):
                members += self._parser.feed(chunk)
        except BaseException:
            self.close()
            raise
        self._hash_through(memoryview(data))
        entries = [_located(m) for m in members]
        self._entries += entries
        return entries

    def finish(self) -> LayerTable:
        self._inflater.finish()
        self._parser.close()
        total = self._parser.offset
        if total > self._open.out:
            self._publish(Point(self._size, 0, total, b""), self._hash.digest())
        return LayerTable("gzip", True, state=encode_state(self.layer, self.spans),
                          entries=self._entries)

    def close(self) -> None:
        self._inflater.close()

    def _hash_through(self, view: memoryview) -> None:
        base, pos = self._size, 0
        points = self._inflater.points
        while self._seen < len(points):
            q = points[self._seen]
            self._seen += 1
            cut = q.cmp - base
            self._update(view[pos:cut])
            pos = cut
            if self._pending:
                self._confirm()
            overlap = (bytes(view[cut - 1:cut]) if cut else self._last_byte) if q.bits else b""
            self._pending = q, self._hash.digest()
            self._next = hashlib.sha256(overlap)
            self._next_head = bytearray(overlap)
        self._update(view[pos:])
        if self._pending and self._inflater.total_out > self._pending[0].out:
            self._confirm()
        self._size += len(view)
        if len(view):
            self._last_byte = bytes(view[-1:])

    def _update(self, part: memoryview) -> None:
        self._hash.update(part)
        _grab(self._head, part)
        if self._pending:
            self._next.update(part)
            _grab(self._next_head, part)

    def _confirm(self) -> None:
        q, digest = self._pending
        self._publish(q, digest)
        self._hash, self._head, self._pending = self._next, self._next_head, None

    def _publish(self, nxt: Point, digest: bytes) -> None:
        p = self._open
        used = used_window(p.window, bytes(self._head), p.bits, min(WINDOW, nxt.out - p.out))
        window = zlib.compress(used, 6) if used else b""
        self.spans.append(Span(p.cmp - 1 if p.bits else p.cmp, nxt.cmp, p.out, nxt.out - p.out,
                               p.bits, window, digest))
        self._open = nxt
        self.covered = nxt.out


HEAD = 256 << 10
"""Compressed bytes kept from a span's start to find which window bytes it
uses: its first 32 KiB of output (all that can refer back) fit in far less
unless the stream is made to waste bytes; then the whole window is kept."""
_LO = bytes(range(256)) * (WINDOW // 256)
_HI = bytes(j >> 8 for j in range(WINDOW))
_FLIP = _LO.translate(bytes(b ^ 0xA5 for b in range(256)))
_FROM_WINDOW = bytes.maketrans(b"\xa5", b"\xff")


def _grab(head: bytearray, part: memoryview) -> None:
    if len(head) < HEAD:
        head += part[:HEAD - len(head)]


def used_window(window: bytes, raw: bytes, bits: int, need: int) -> bytes:
    """``window`` with every byte that the first ``need`` bytes of output
    from ``raw`` do not refer to set to zero, so it compresses to little
    (a full 32 KiB window of text costs ~12 kB, the bytes in use ~2 kB).

    Inflating with windows of position markers (low byte, high byte, low
    byte flipped) tells, for each output byte, whether it came from the
    window and from which position; a literal is the same in every run.
    """
    if not window or need <= 0:
        return window
    runs = _marked_runs(window, raw, bits, need)
    if runs is None:
        return window
    low, high, flip = runs
    mask = _xor(low, flip).translate(_FROM_WINDOW)
    pairs = bytearray(2 * need)
    first = 0 if sys.byteorder == "little" else 1
    pairs[first::2], pairs[1 - first::2] = _and(low, mask), _and(high, mask)
    used = list(set(array.array("H", pairs)))
    keep = bytearray(len(window))
    collections.deque(map(keep.__setitem__, used, map(window.__getitem__, used)), maxlen=0)
    return bytes(keep)


def _marked_runs(window: bytes, raw: bytes, bits: int, need: int) -> list[bytes] | None:
    """The first ``need`` output bytes inflated with each marker window, or
    None if ``raw`` does not hold that many. ``inflate`` takes all the input
    it is given, and a few hundred bytes of deflate can hold megabytes
    (zeros), so the input grows from a little until it is enough."""
    n = len(window)
    cut = 64
    while cut < len(raw):
        cut = min(cut * 4, len(raw))
        try:
            runs = [inflate(raw[:cut], bits, m[:n], need) for m in (_LO, _HI, _FLIP)]
        except zlib.error:
            continue
        if min(map(len, runs)) >= need:
            return runs
    return None


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(len(a), "little")


def _and(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "little") & int.from_bytes(b, "little")).to_bytes(len(a), "little")


def _located(m: Member) -> Entry:
    if m.entry.type is EntryType.FILE:
        m.entry.data = _LOC.pack(m.offset, m.entry.size)
    return m.entry


def encode_state(layer: str, spans: Sequence[Span], magic: bytes = _MAGIC) -> bytes:
    name = layer.encode()
    parts = [_HEAD.pack(magic, len(name), len(spans)), name]
    for s in spans:
        parts.append(_SPAN.pack(s.start, s.end, s.ustart, s.ulen, s.bits, len(s.window)))
    parts += [s.digest for s in spans]
    parts += [s.window for s in spans]
    return b"".join(parts)


def decode_state(state: bytes, magic: bytes = _MAGIC) -> tuple[str, list[Span]]:
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
    at, length = _LOC.unpack(data)
    offset, end = max(offset, 0), min(offset + size, length)
    if end <= offset:
        return []
    lo, hi = at + offset, at + end
    i = bisect.bisect_right(starts, lo) - 1
    out = []
    while i < len(spans) and spans[i].ustart < hi:
        s = spans[i]
        need = min(hi, s.ustart + s.ulen) - s.ustart
        # A read near the span's start inflates only its first STEP; anything
        # deeper inflates the whole span once, so sequential reads share one
        # cached piece per span instead of re-inflating from its start.
        want = min(s.ulen, STEP) if need <= STEP else s.ulen
        first = max(s.ustart, at)
        out.append(Piece(s.start, s.end, codec, _PARAMS.pack(i, want), first - s.ustart,
                         min(at + length, s.ustart + want) - first, first - at))
        i += 1
    return out


def reader(table: LayerTable) -> GzipReader:
    return GzipReader(table.state)


class GzipReader:
    def __init__(self, state: bytes):
        self._layer, self._spans = decode_state(state)
        self._starts = [s.ustart for s in self._spans]

    @classmethod
    def from_spans(cls, layer: str, spans: Sequence[Span]) -> GzipReader:
        """A reader over the spans a ``StreamIndexer`` has published so far,
        for content they already cover (no state to encode and decode)."""
        self = cls.__new__(cls)
        self._layer, self._spans = layer, list(spans)
        self._starts = [s.ustart for s in self._spans]
        return self

    def pieces(self, data: bytes, offset: int, size: int) -> list[Piece]:
        return span_pieces(self._spans, self._starts, "gzip", data, offset, size)

    def decode(self, piece: Piece, raw: bytes) -> bytes:
        i, want = _PARAMS.unpack(piece.params)
        s = check_span(self._layer, self._spans, i, raw)
        try:
            out = inflate(raw, s.bits, zlib.decompress(s.window) if s.window else b"", want)
        except zlib.error as e:
            raise LayerFormatError(f"layer {self._layer}: span {i}: {e}") from None
        if len(out) < want:
            raise LayerFormatError(f"layer {self._layer}: span {i} inflates to fewer bytes "
                                   f"than the index says")
        return out


def check_span(layer: str, spans: Sequence[Span], i: int, raw: bytes) -> Span:
    if i >= len(spans):
        raise LayerFormatError(f"layer {layer}: span {i} is not in the layer table")
    s = spans[i]
    if hashlib.sha256(raw).digest() != s.digest:
        raise DigestMismatch(f"layer {layer}: bytes {s.start}-{s.end} (span {i}) "
                             f"do not match their recorded digest")
    return s


def inflate(raw: bytes, bits: int, window: bytes, want: int) -> bytes:
    """At least ``want`` bytes (if there are) of the deflate data in ``raw``
    whose first bit is the ``bits``-th highest of its first byte (0: the
    whole byte), continuing across gzip member boundaries.

    stdlib zlib has no ``inflatePrime``, so a checkpoint inside a byte is
    resumed by replacing the byte's low bits with a made-up prefix of
    complete deflate blocks that ends exactly there (see ``_prime``). The
    stream keeps its byte alignment, which stored blocks need. A checkpoint
    without a window (the library leaves it out when nothing refers back)
    gets a dummy one-byte window for the prefix to emit.
    """
    pos = 0
    skip = 0
    head = b""
    if bits:
        window = window or b"\0"
        head = _prime(window[-1], 8 - bits, raw[0])
        window = window[:-1]
        skip = 1
        pos = 1
    elif not window and raw[:2] == b"\x1f\x8b":
        pos = skip_header(raw, 0)
    d = zlib.decompressobj(-15, zdict=window) if window else zlib.decompressobj(-15)
    out = [d.decompress(head)] if head else []
    got = sum(map(len, out)) - skip
    view = memoryview(raw)
    while got < want:
        if d.eof:
            pos = _next_member(raw, pos - len(d.unused_data))
            if pos is None:
                break
            d = zlib.decompressobj(-15)
            continue
        if pos >= len(raw):
            break
        chunk = view[pos:pos + FEED]
        pos += len(chunk)
        data = d.decompress(chunk)
        out.append(data)
        got += len(data)
    result = b"".join(out)
    return result[skip:skip + want]


def _next_member(raw: bytes, end: int) -> int | None:
    """Where the next member's deflate data starts after a member that ended
    at ``end``, or None at the end of ``raw``."""
    if raw[end + 8:end + 11] == b"\x1f\x8b\x08":
        return skip_header(raw, end + 8)
    return None


_CL_ORDER = (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15)
_CL_LENGTHS = {18: 1, 0: 2, 1: 2}
_CL_CODES = {18: (0b0, 1), 0: (0b10, 2), 1: (0b11, 2)}


class _Bits:
    def __init__(self):
        self.value = 0
        self.n = 0

    def put(self, value: int, n: int) -> None:
        self.value |= value << self.n
        self.n += n

    def code(self, code: int, n: int) -> None:
        """Huffman codes go most significant bit first."""
        for i in range(n - 1, -1, -1):
            self.put(code >> i & 1, 1)


def _prime(last: int, k: int, first: int) -> bytes:
    """Bytes of complete non-final deflate blocks whose bit length is ``k``
    modulo 8, that output the one byte ``last``, followed by the top ``8 - k``
    bits of ``first``: inflating them (with the window minus its last byte as
    dictionary) leaves the decoder in the state of the checkpoint, one byte
    of known output ahead.

    An empty fixed block is 10 bits; the one dynamic block (a literal/length
    code of just ``last`` and end-of-block, no distance code) can be made 3
    bits longer by one more code-length-code entry, so every residue mod 8
    is reachable.
    """
    for extra_cl in (0, 1):
        for empties in range(4):
            bits = _Bits()
            for _ in range(empties):
                bits.put(0, 1)
                bits.put(1, 2)
                bits.put(0, 7)
            _dynamic_literal_block(bits, last, 18 + extra_cl)
            if bits.n % 8 == k:
                q = bits.n // 8
                prefix = bits.value.to_bytes(q + 1, "little")
                return prefix[:q] + bytes([(first & (0xFF << k) & 0xFF) | prefix[q]])
    raise AssertionError("unreachable: every residue has a prefix")


def _dynamic_literal_block(bits: _Bits, last: int, ncl: int) -> None:
    bits.put(0, 1)
    bits.put(2, 2)
    bits.put(0, 5)
    bits.put(0, 5)
    bits.put(ncl - 4, 4)
    for sym in _CL_ORDER[:ncl]:
        bits.put(_CL_LENGTHS.get(sym, 0), 3)
    for run, one in ((last, True), (255 - last, True), (1, False)):
        while run >= 11:
            r = min(run, 138)
            bits.code(*_CL_CODES[18])
            bits.put(r - 11, 7)
            run -= r
        for _ in range(run):
            bits.code(*_CL_CODES[0])
        if one:
            bits.code(*_CL_CODES[1])
    bits.code(0, 1)
    bits.code(1, 1)


def skip_header(raw: bytes, pos: int) -> int:
    """The offset just past the gzip member header at ``pos``."""
    if len(raw) < pos + 10 or raw[pos + 2] != 8:
        raise zlib.error("bad gzip member header")
    flags = raw[pos + 3]
    pos += 10
    if flags & 4:
        pos += 2 + int.from_bytes(raw[pos:pos + 2], "little")
    for bit in (8, 16):
        if flags & bit:
            end = raw.find(b"\0", pos)
            if end < 0:
                raise zlib.error("bad gzip member header")
            pos = end + 1
    if flags & 2:
        pos += 2
    return pos

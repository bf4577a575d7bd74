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

``Entry.data`` and the state are a span table's (``spans.py``), with
windows (zlib-compressed, only the bytes in use).
"""

from __future__ import annotations

import hashlib
import io
import mmap
import os
import struct
import zlib
from pathlib import Path

import rapidgzip
import trio

from ..blob import BlobSource
from ..errors import CorruptData, LayerFormatError
from .base import LayerTable
from .deflate import HEAD, inflate, used_window
from .entry import Entry
from .spans import Span, SpanReader, check_span_table, decode_state, encode_state, located
from .tarheader import Member, TarParser
from .zran import WINDOW, Inflater, Point

SPAN = 2 << 20
"""Output bytes between kept checkpoints. On a 99 MB tar of Python sources
(29 MB gzip) 1/2/4 MiB spans gave a 204/106/56 kB state and random 4 KiB
reads of 14/17/28 ms on a busy 2-core machine (a read inflates about half a
span); the library's sparse windows compress to ~2 kB each, so 2 MiB keeps a
400 MB layer's state near 0.4 MB while bounding a small read's inflate."""
CHUNK = 512 << 10
"""rapidgzip's chunk size, which also spaces its checkpoints. One thread per
layer: a mount indexes its layers concurrently anyway, and on a 99 MB layer
two threads peaked at ~130 MB against ~45 MB for one, for little gain on 2
cores."""
MAGIC = b"LZG1"
"""Marks a gzip span table (``spans.encode_state``)."""


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
        raise CorruptData(f"layer {layer}: broken gzip stream: {_first_line(e)}") from None
    parser.close()
    size = os.path.getsize(path)
    points = _keep(parse_gzidx(exported.getvalue(), layer), span, size, parser.offset)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
        spans = _spans(points, mm)
    return LayerTable("gzip", True, state=encode_state(layer, spans, MAGIC),
                      entries=[located(m) for m in members], diff_id=parser.diff_id)


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
        entries = [located(m) for m in members]
        self._entries += entries
        return entries

    def finish(self) -> LayerTable:
        self._inflater.finish()
        self._parser.close()
        total = self._parser.offset
        if total > self._open.out:
            self._publish(Point(self._size, 0, total, b""), self._hash.digest())
        return LayerTable("gzip", True, state=encode_state(self.layer, self.spans, MAGIC),
                          entries=self._entries, diff_id=self._parser.diff_id)

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


def _grab(head: bytearray, part: memoryview) -> None:
    if len(head) < HEAD:
        head += part[:HEAD - len(head)]


def reader(table: LayerTable) -> "GzipReader":
    return GzipReader(table.state)


class GzipReader(SpanReader):
    codec = "gzip"
    magic = MAGIC
    errors = (zlib.error,)

    def inflate(self, span: Span, raw: bytes, want: int) -> bytes:
        return inflate(raw, span.bits, zlib.decompress(span.window) if span.window else b"", want)


def check_table(table: LayerTable, desc) -> None:
    check_span_table(table, desc, MAGIC, always_lazy=True)


def state_differences(table: LayerTable, built: LayerTable, blob: Path) -> list[str]:
    """Each span of ``table`` checked against the real stream: its digest
    against the blob's bytes, its inflate from the checkpoint against the
    layer's output (``built`` may place its checkpoints elsewhere)."""
    _, spans = decode_state(table.state, MAGIC)
    out = []
    with open(blob, "rb") as raw, rapidgzip.RapidgzipFile(str(blob)) as real:
        for i, s in enumerate(spans):
            truth = real.read(s.ulen)
            data = os.pread(raw.fileno(), s.end - s.start, s.start)
            if hashlib.sha256(data).digest() != s.digest:
                out.append(f"span {i}: digest differs from the blob's bytes {s.start}-{s.end}")
                continue
            window = zlib.decompress(s.window) if s.window else b""
            try:
                got = inflate(data, s.bits, window, s.ulen)
            except zlib.error as e:
                got = str(e).encode()
            if got != truth:
                out.append(f"span {i}: inflates to other bytes than the layer at {s.ustart}")
    return out

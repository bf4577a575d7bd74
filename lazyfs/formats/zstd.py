"""Plain zstd layers (``tar+zstd``): seekable only at frame boundaries.

The build pass walks the frame headers and block headers (so frame extents
are known without trusting the optional content size), inflates each frame
into the tar parser and records a frame table: compressed extent, output
extent and the sha256 of the compressed frame, which every later read
checks. A layer of one frame (what most tools write) cannot be read in part:
its table says ``lazy=False`` and its one piece is the whole blob.

``Entry.data`` and the state are a span table's (``spans.py``), like gzip's
with no windows.
"""

from __future__ import annotations

import hashlib
import mmap
from pathlib import Path
from typing import Iterator

import trio
import zstandard

from ..blob import BlobSource
from ..errors import CorruptData, LayerFormatError
from .base import LayerTable, same_state
from .spans import FEED, Span, SpanReader, check_span_table, encode_state, located
from .tarheader import TarParser

FRAME_MAGIC = 0xFD2FB528
SKIPPABLE_MASK = 0xFFFFFFF0
SKIPPABLE_MAGIC = 0x184D2A50
NOT_SEEKABLE = "single zstd frame: not seekable"

MAGIC = b"LZZ1"
"""Marks a zstd frame table (``spans.encode_state``)."""


async def build(desc, blob: BlobSource) -> LayerTable:
    path = await blob.path()
    return await trio.to_thread.run_sync(build_from_file, path, desc.digest)


def build_from_file(path: Path, layer: str) -> LayerTable:
    with open(path, "rb") as f:
        if f.read(4) == b"":
            raise LayerFormatError(f"layer {layer}: empty blob is not zstd")
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
            view = memoryview(mm)
            try:
                members, spans, parser = _inflate_all(view, layer)
            finally:
                view.release()
    parser.close()
    lazy = len(spans) > 1
    return LayerTable("zstd", lazy, "" if lazy else NOT_SEEKABLE,
                      encode_state(layer, spans, MAGIC), [located(m) for m in members],
                      parser.diff_id)


def _inflate_all(view: memoryview, layer: str):
    parser = TarParser(layer)
    members = []
    spans: list[Span] = []
    out_at = 0
    for start, end in frames(view, layer):
        d = zstandard.ZstdDecompressor().decompressobj()
        n = 0
        try:
            for pos in range(start, end, FEED):
                data = d.decompress(view[pos:min(pos + FEED, end)])
                members += parser.feed(data)
                n += len(data)
        except zstandard.ZstdError as e:
            raise CorruptData(f"layer {layer}: zstd frame at {start}: {e}") from None
        if not d.eof:
            raise CorruptData(f"layer {layer}: zstd frame at {start} is incomplete")
        if n:
            digest = hashlib.sha256(view[start:end]).digest()
            spans.append(Span(start, end, out_at, n, 0, b"", digest))
            out_at += n
    return members, spans, parser


def frames(buf, layer: str) -> Iterator[tuple[int, int]]:
    """The ``(start, end)`` of each data frame, skipping skippable frames."""
    n = len(buf)
    pos = 0
    while pos < n:
        magic = _u(buf, pos, 4, layer)
        if magic & SKIPPABLE_MASK == SKIPPABLE_MAGIC:
            pos += 8 + _u(buf, pos + 4, 4, layer)
            if pos > n:
                raise LayerFormatError(f"layer {layer}: skippable zstd frame runs past the blob")
            continue
        if magic != FRAME_MAGIC:
            raise LayerFormatError(f"layer {layer}: not zstd (bad frame magic at {pos})")
        end = _frame_end(buf, pos, layer)
        yield pos, end
        pos = end


def _frame_end(buf, start: int, layer: str) -> int:
    fhd = _u(buf, start + 4, 1, layer)
    if fhd & 0x08:
        raise LayerFormatError(f"layer {layer}: zstd frame at {start} sets a reserved bit")
    single = fhd >> 5 & 1
    pos = start + 5 + (0 if single else 1)
    dict_size = (0, 1, 2, 4)[fhd & 3]
    if dict_size and _u(buf, pos, dict_size, layer):
        raise LayerFormatError(f"layer {layer}: zstd frame at {start} needs a dictionary")
    pos += dict_size + ((1 if single else 0), 2, 4, 8)[fhd >> 6]
    while True:
        header = _u(buf, pos, 3, layer)
        kind = header >> 1 & 3
        if kind == 3:
            raise LayerFormatError(f"layer {layer}: zstd block at {pos} has a reserved type")
        pos += 3 + (1 if kind == 1 else header >> 3)
        if header & 1:
            break
    pos += 4 if fhd & 0x04 else 0
    if pos > len(buf):
        raise CorruptData(f"layer {layer}: zstd frame at {start} is truncated")
    return pos


def _u(buf, pos: int, size: int, layer: str) -> int:
    if pos + size > len(buf):
        raise LayerFormatError(f"layer {layer}: zstd stream truncated at {pos}")
    return int.from_bytes(buf[pos:pos + size], "little")


def reader(table: LayerTable) -> "ZstdReader":
    return ZstdReader(table.state)


class ZstdReader(SpanReader):
    codec = "zstd"
    magic = MAGIC
    what = "zstd frame"
    errors = (zstandard.ZstdError,)

    def inflate(self, span: Span, raw: bytes, want: int) -> bytes:
        d = zstandard.ZstdDecompressor().decompressobj()
        out = []
        got = 0
        view = memoryview(raw)
        for pos in range(0, len(raw), FEED):
            if got >= want:
                break
            data = d.decompress(view[pos:pos + FEED])
            out.append(data)
            got += len(data)
        return b"".join(out)


def check_table(table: LayerTable, desc) -> None:
    check_span_table(table, desc, MAGIC, always_lazy=False)


state_differences = same_state

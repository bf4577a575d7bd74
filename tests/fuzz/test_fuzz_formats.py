"""Untrusted layer bytes: tar headers, gzip seek-point state, eStargz footer
and TOC, zstd:chunked footer, position and TOC.

Every parser answers with a value or ``LayerFormatError`` (``DigestMismatch``
where a digest is checked), in bounded time, whatever the bytes; the tar
parser gives the same members however the stream is split.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import time

from hypothesis import given
from hypothesis import strategies as st

from lazyfs.formats.entry import EntryType
from lazyfs.errors import LayerFormatError, LazyfsError
from lazyfs.formats import LayerTable, estargz, open_reader, zstdchunked
from lazyfs.formats.gzip import MAGIC as GZIP_MAGIC
from lazyfs.formats.spans import Span, decode_state, encode_state
from lazyfs.formats.toc import entries_from_toc, parse_toc
from lazyfs.formats.tarheader import TarParser
from tests.fuzz.budget import fuzz
from tests.support import tarbytes as tb

LAYER = "sha256:" + "cd" * 32

SEED_TAR = (tb.member("a/b.txt", b"hello") + tb.pax({"path": "long/" + "x" * 200, "mtime": "1.5"})
            + tb.member("p", b"12345") + tb.gnu_long(b"L", "g" * 150) + tb.member("s", magic=tb.GNU)
            + tb.member("l", type=b"2", linkname="a/b.txt") + tb.member("d/", type=b"5")
            + tb.member("dev", type=b"3", devmajor=1, devminor=3) + tb.end())


@st.composite
def mutated(draw, seed: bytes, max_edits: int = 8):
    """``seed`` with a few bytes overwritten, cut, or spliced: inputs close
    enough to valid to reach the deep branches of a parser."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, max_edits))):
        kind = draw(st.sampled_from(["set", "cut", "insert", "number"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at:at + draw(st.integers(1, 600))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(max_size=64))
        elif data:
            field = draw(st.sampled_from([b"77777777777\0", b"\xff" * 12, b"\x80" + b"\xff" * 11,
                                          b"-1\0", b" " * 12, b"\0" * 12]))
            data[at:at + len(field)] = field
    return bytes(data)


def splits(data_len: int):
    return st.lists(st.integers(0, max(data_len, 0)), max_size=6).map(sorted)


def feed_split(data: bytes, cuts: list[int]):
    parser = TarParser(LAYER)
    members = []
    prev = 0
    for cut in cuts + [len(data)]:
        members += parser.feed(data[prev:cut])
        prev = max(prev, cut)
    parser.close()
    return [(m.offset, m.entry) for m in members]


@given(st.data())
@fuzz(300)
def test_tar_parser_only_raises_format_errors_and_ignores_split_points(data):
    raw = data.draw(st.one_of(st.binary(max_size=3000), mutated(SEED_TAR)))
    started = time.monotonic()
    try:
        whole = feed_split(raw, [])
    except LayerFormatError:
        whole = None
    try:
        pieces = feed_split(raw, data.draw(splits(len(raw))))
    except LayerFormatError:
        pieces = None
    assert whole == pieces
    assert time.monotonic() - started < 5
    for _, e in whole or ():
        assert e.size >= 0 and e.uid >= 0 and e.gid >= 0
        assert e.type is EntryType.FILE or e.size == 0


def _state() -> bytes:
    spans = [Span(10, 5000, 0, 70000, 3, b"w" * 100, b"d" * 32),
             Span(5000, 9000, 70000, 30000, 0, b"", b"e" * 32)]
    return encode_state(LAYER, spans, GZIP_MAGIC)


@given(st.one_of(st.binary(max_size=400), mutated(_state())))
@fuzz(300)
def test_gzip_state_decodes_or_raises_format_errors(state):
    try:
        decode_state(state, GZIP_MAGIC)
    except LayerFormatError:
        pass
    try:
        open_reader(LayerTable(format="gzip", lazy=True, state=state))
    except LayerFormatError:
        pass


def _estargz_tail(toc_offset: int) -> bytes:
    return estargz.footer_bytes(toc_offset)


@given(st.one_of(st.binary(max_size=80), mutated(_estargz_tail(123456), 4),
                 mutated(estargz.footer_bytes(99, legacy=True), 4)))
@fuzz(300)
def test_estargz_footer(tail):
    try:
        off, size = estargz.parse_footer(tail)
    except LayerFormatError:
        return
    assert off >= 0 and size in (estargz.FOOTER_SIZE, estargz.LEGACY_FOOTER_SIZE)


def _toc_member(toc: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as f:
        f.write(tb.member(estargz.TOC_NAME, toc) + tb.end())
    return buf.getvalue()


json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.text(max_size=12),
              st.sampled_from(["reg", "dir", "symlink", "hardlink", "chunk", "char", "fifo",
                               "sha256:" + "ab" * 32, "2024-01-01T00:00:00Z", "../x", "/"])),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
        st.sampled_from(["type", "name", "size", "offset", "chunkOffset", "chunkSize",
                         "chunkDigest", "digest", "linkName", "mode", "uid", "gid", "modtime",
                         "endOffset", "innerOffset", "devMajor", "devMinor", "xattrs"]), kids,
        max_size=8), max_leaves=30)

toc_items = st.lists(st.fixed_dictionaries(
    {"type": st.sampled_from(["reg", "dir", "symlink", "hardlink", "chunk", "char", "bogus"]),
     "name": st.sampled_from(["a", "a/b", "../up", "", "c", "a/b/c", "/abs"])},
    optional={"size": st.integers(-5, 10**12), "offset": st.integers(-5, 10**6),
              "chunkOffset": st.integers(-5, 10**6), "chunkSize": st.integers(-5, 10**6),
              "endOffset": st.integers(-5, 10**6), "innerOffset": st.integers(-5, 10**6),
              "linkName": st.sampled_from(["a", "../x", ""]),
              "digest": st.sampled_from(["sha256:" + "ab" * 32, "md5:x", ""]),
              "chunkDigest": st.sampled_from(["sha256:" + "ab" * 32, "nope"]),
              "mode": st.integers(-1, 2**40), "uid": st.integers(-1, 2**40),
              "modtime": st.sampled_from(["2024-01-01T00:00:00Z", "yesterday", ""]),
              "xattrs": st.dictionaries(st.text(max_size=5), st.text(max_size=8), max_size=2)}),
    max_size=8)


@given(st.one_of(st.binary(max_size=300), json_value.map(lambda v: json.dumps(v).encode()),
                 toc_items.map(lambda items: json.dumps({"version": 1, "entries": items}).encode()),
                 st.integers(1, 3000).map(lambda n: b"[" * n)),
       st.booleans(), st.integers(0, 10**6))
@fuzz(400)
def test_estargz_and_zstdchunked_tocs(toc, end_offsets, data_end):
    try:
        items = parse_toc(toc, LAYER)
        entries = entries_from_toc(items, LAYER, data_end, end_offsets=end_offsets)
    except LayerFormatError:
        return
    for e in entries:
        assert e.size >= 0


@given(st.one_of(st.binary(max_size=600), mutated(_toc_member(b'{"version":1,"entries":[]}'))))
@fuzz(200)
def test_estargz_toc_member(raw):
    try:
        estargz.toc_json_from_member(raw, LAYER)
    except LayerFormatError:
        pass


def _zstd_footer(legacy: bool) -> bytes:
    if legacy:
        return struct.pack("<4Q", 100, 50, 200, 1) + zstdchunked.LEGACY_MAGIC
    return struct.pack("<7Q", 100, 50, 200, 1, 0, 0, 0) + zstdchunked.MAGIC


@given(st.one_of(st.binary(max_size=80), mutated(_zstd_footer(False), 4),
                 mutated(_zstd_footer(True), 4)),
       st.text(max_size=40) | st.builds(lambda *n: ":".join(map(str, n)),
                                        st.integers(-3, 2**70), st.integers(-3, 9),
                                        st.integers(-3, 9), st.integers(0, 2)))
@fuzz(300)
def test_zstdchunked_footer_and_position(tail, position):
    try:
        *_, size = zstdchunked.parse_footer(tail)
        assert size in (zstdchunked.FOOTER_SIZE + 8, zstdchunked.LEGACY_FOOTER_SIZE + 8)
    except LayerFormatError:
        pass
    try:
        zstdchunked.parse_position(position)
    except LayerFormatError:
        pass


@given(st.sampled_from(["estargz", "zstd:chunked", "zstd", "tar"]),
       st.one_of(st.binary(max_size=200), json_value.map(lambda v: json.dumps(v).encode())))
@fuzz(200)
def test_format_state_of_other_formats(fmt, state):
    try:
        open_reader(LayerTable(format=fmt, lazy=True, state=state))
    except LazyfsError:
        pass

"""eStargz layers: a gzip tar whose files are separate gzip members, indexed
by a TOC (``stargz.index.json``) near the end of the blob.

Building a table costs two range requests: the footer (the last 51 bytes,
or the 47-byte footer of legacy stargz inside them), then the TOC member.
The TOC is trusted only if it hashes (sha256 of the uncompressed JSON) to
the layer annotation ``containerd.io/snapshot/stargz/toc.digest``; like
stargz-snapshotter without ``allow_no_verification``, a layer without that
annotation is refused here, and ``detect_format`` sends it to the gzip
reader instead, which verifies the whole blob. Every chunk is verified
against its ``chunkDigest`` when read.

The landmark files (``.prefetch.landmark``, ``.no.prefetch.landmark``) and
the TOC itself are format metadata, not image content, and yield no entry,
as in stargz-snapshotter's filesystem.

The TOC-to-entry conversion (``toc.py``) is shared with zstd:chunked,
whose TOC is the same JSON.
"""

from __future__ import annotations

import hashlib
import struct
import tarfile
import zlib
from typing import Sequence

import trio

from ..blob import BlobSource
from ..errors import CorruptData, DigestMismatch, LayerFormatError
from .base import LayerTable, Piece, inflate_streams
from .deflate import fast
from .entry import Entry, EntryType
from .toc import (MAX_TOC_SIZE, entries_from_toc, pack_state, parse_toc, piece_params, plain_name,
                  plan, first_start, unpack_state, verify_chunk)

TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
TOC_NAME = "stargz.index.json"
FOOTER_SIZE = 51
LEGACY_FOOTER_SIZE = 47
TOC_GUESS = 64 << 10
"""The blob's end asked for first: the footer and a TOC of up to about a
thousand entries."""


# --- footer -----------------------------------------------------------------

def parse_footer(tail: bytes) -> tuple[int, int]:
    """``(toc_offset, footer_size)`` from the last bytes of a blob (at least
    47); ``LayerFormatError`` when neither footer is there."""
    if len(tail) >= FOOTER_SIZE:
        extra = _gzip_extra(tail[-FOOTER_SIZE:])
        if extra is not None and len(extra) == 26 and extra[:2] == b"SG" \
                and extra[2:4] == b"\x16\x00":
            off = _stargz_offset(extra[4:])
            if off is not None:
                return off, FOOTER_SIZE
    if len(tail) >= LEGACY_FOOTER_SIZE:
        extra = _gzip_extra(tail[-LEGACY_FOOTER_SIZE:])
        if extra is not None and len(extra) == 22:
            off = _stargz_offset(extra)
            if off is not None:
                return off, LEGACY_FOOTER_SIZE
    raise LayerFormatError("no eStargz or stargz footer at the end of the blob")


def _gzip_extra(member: bytes) -> bytes | None:
    """The FEXTRA field of a gzip member holding nothing else, or None."""
    if member[:3] != b"\x1f\x8b\x08" or member[3] != 0x04:
        return None
    xlen = member[10] | member[11] << 8
    if 12 + xlen + 13 != len(member):
        return None
    return member[12:12 + xlen]


def _stargz_offset(field: bytes) -> int | None:
    if len(field) != 22 or field[16:] != b"STARGZ":
        return None
    try:
        return int(field[:16].decode("ascii"), 16)
    except ValueError:
        return None


def footer_bytes(toc_offset: int, legacy: bool = False) -> bytes:
    """The footer pointing at ``toc_offset`` (for writers and tests)."""
    field = b"%016xSTARGZ" % toc_offset
    extra = field if legacy else b"SG\x16\x00" + field
    return (b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff" + struct.pack("<H", len(extra)) + extra
            + b"\x01\x00\x00\xff\xff" + bytes(8))


# --- TOC --------------------------------------------------------------------

def toc_json_from_member(raw: bytes, layer: str) -> bytes:
    """The TOC JSON from the gzip member holding its tar entry (inflated by
    zlib-ng: a large TOC is on the way to a new image's first answer)."""
    d = fast.decompressobj(31)
    try:
        data = d.decompress(raw, 512 + MAX_TOC_SIZE + 512)
    except (zlib.error, fast.error) as e:
        raise CorruptData(f"layer {layer}: TOC is not valid gzip ({e})") from None
    if len(data) < 512:
        raise LayerFormatError(f"layer {layer}: TOC member holds no tar header")
    try:
        info = tarfile.TarInfo.frombuf(data[:512], "utf-8", "surrogateescape")
    except tarfile.TarError as e:
        raise LayerFormatError(f"layer {layer}: TOC tar header is invalid ({e})") from None
    if info.name != TOC_NAME:
        raise LayerFormatError(f"layer {layer}: TOC tar entry is named {info.name!r}, not {TOC_NAME!r}")
    if len(data) < 512 + info.size:
        raise LayerFormatError(f"layer {layer}: TOC is truncated")
    return data[512:512 + info.size]


def check_digest(data: bytes, expected: str, what: str) -> None:
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != expected:
        raise DigestMismatch(f"{what}: content hashes to {got}, expected {expected}")


# --- build and read ---------------------------------------------------------

async def build(desc, blob: BlobSource) -> LayerTable:
    layer = desc.digest
    expected = (desc.annotations or {}).get(TOC_DIGEST_ANNOTATION)
    if not expected:
        raise LayerFormatError(f"layer {layer}: no {TOC_DIGEST_ANNOTATION} annotation; "
                               "an unverified eStargz TOC is not used")
    if blob.size < LEGACY_FOOTER_SIZE:
        raise LayerFormatError(f"layer {layer}: {blob.size} bytes is too small for eStargz")
    tail_start = blob.size - toc_guess(blob.size)
    tail = await blob.read_range(tail_start, blob.size)
    try:
        toc_offset, footer = parse_footer(tail[-FOOTER_SIZE:])
    except LayerFormatError as e:
        raise LayerFormatError(f"layer {layer}: {e}") from None
    data_end = blob.size - footer
    if toc_offset >= data_end:
        raise LayerFormatError(f"layer {layer}: TOC offset {toc_offset} is past the blob's "
                               f"data ({data_end} bytes)")
    if toc_offset >= tail_start:
        raw = tail[toc_offset - tail_start:data_end - tail_start]
    else:
        raw = await blob.read_range(toc_offset, tail_start) + tail[:data_end - tail_start]

    def decode() -> tuple[list[Entry], int | None]:
        toc_json = toc_json_from_member(raw, layer)
        check_digest(toc_json, expected, f"layer {layer}: eStargz TOC")
        items = parse_toc(toc_json, layer)
        return entries_from_toc(items, layer, toc_offset), prefetch_end(items)

    entries, prefetch = await trio.to_thread.run_sync(decode)
    state = pack_state(layer=layer, toc_digest=expected, toc_offset=toc_offset,
                       footer=footer, prefetch_end=prefetch)
    return LayerTable(format="estargz", lazy=True, state=state, entries=entries)


def toc_guess(size: int) -> int:
    """How much of the blob's end to ask for at once: the footer and, for
    small layers, the TOC behind it. Nothing tells a TOC's size before the
    footer is read, and a guess sized to the layer fetches the files in front
    of the TOC whenever it overshoots (1% of debian-py's layers: 0.3 MB of
    files no read wanted, 6% of what a ``python3`` start fetched); a larger
    TOC costs one more request, for exactly the rest of it."""
    return min(size, max(FOOTER_SIZE, TOC_GUESS))


def prefetch_end(items: list[dict]) -> int | None:
    """Where the producer's prioritized files end in the blob: the offset of
    ``.prefetch.landmark``, 0 with ``.no.prefetch.landmark``, None without
    either. Kept in the state for a prefetcher; reads do not need it."""
    for item in items:
        if isinstance(item, dict) and item.get("type") == "reg":
            name = plain_name(str(item.get("name", "")))
            if name == ".no.prefetch.landmark":
                return 0
            if name == ".prefetch.landmark" and isinstance(item.get("offset"), int):
                return item["offset"]
    return None


def reader(table: LayerTable) -> "EstargzReader":
    return EstargzReader(unpack_state(table.state).get("layer", "?"))


class EstargzReader:
    """Each chunk is one piece: the gzip stream from the chunk's offset to the
    next offset in the TOC, verified against its ``chunkDigest``."""

    def __init__(self, layer: str):
        self.layer = layer

    def pieces(self, data: bytes, offset: int, size: int) -> Sequence[Piece]:
        return plan(data, offset, size, lambda c: "gzip-member")

    def decode(self, piece: Piece, raw: bytes) -> bytes:
        inner, size, digest, _ = piece_params(piece)
        try:
            out = _inflate(raw, inner + size)
        except (zlib.error, fast.error) as e:
            raise CorruptData(f"layer {self.layer}: eStargz chunk at blob bytes "
                                 f"{piece.start}-{piece.end} is not valid gzip ({e})") from None
        return verify_chunk(out[inner:inner + size], size, digest,
                            f"layer {self.layer}: eStargz chunk at blob bytes {piece.start}-{piece.end}")


def _inflate(raw: bytes, want: int) -> bytes:
    return inflate_streams(raw, want, lambda: fast.decompressobj(31), fast.error, "gzip member")


def prioritized(table) -> list[Entry]:
    """The files a producer put before ``.prefetch.landmark``: what a container
    reads at start, to be fetched ahead of any read (as stargz-snapshotter does)."""
    end = unpack_state(table.state).get("prefetch_end") or 0
    if not end:
        return []
    return [e for e in table.entries
            if e.type is EntryType.FILE and e.size and e.data and first_start(e.data) < end]

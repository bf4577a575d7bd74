"""zstd:chunked layers: a zstd tar whose file payloads (and their chunks) are
separate frames, indexed by a TOC in a skippable frame near the end.

Two producers exist and both are read:

- containers/storage (podman, buildah, newer skopeo): annotations
  ``io.github.containers.zstd-chunked.manifest-{position,checksum}``, a
  64-byte footer ending in ``GNUlInUx``, entries with ``endOffset`` and
  ``chunkType`` ("zeros" marks a hole);
- stargz-snapshotter (``ctr-remote images convert --zstdchunked``) and
  containers/storage before November 2022: the same keys under
  ``io.containers.``, a 40-byte footer ending in ``GnUlInUx``, and
  eStargz-style entries (``innerOffset``, a zero ``chunkSize`` meaning "to the
  end of the file").

The manifest position comes from the annotation (one range request for the
TOC) or, when absent, from the footer (two). The TOC is trusted only when the
sha256 of its compressed bytes equals the ``manifest-checksum`` annotation, as
containers/storage checks it; a layer without that annotation is refused
here (``detect_format`` reads it as plain zstd). Every chunk is verified
against its ``chunkDigest`` (or the file's ``digest`` when it is one chunk).
"""

from __future__ import annotations

import hashlib
import struct
from typing import Sequence

import trio
import zstandard

from ..blob import BlobSource
from ..errors import CorruptData, DigestMismatch, LayerFormatError
from .base import LayerTable, Piece, inflate_streams
from .toc import (MAX_TOC_SIZE, ZEROS, entries_from_toc, pack_state, parse_toc, piece_params, plan,
                  unpack_state, verify_chunk)

CHECKSUM_KEYS = ("io.github.containers.zstd-chunked.manifest-checksum",
                 "io.containers.zstd-chunked.manifest-checksum")
POSITION_KEYS = ("io.github.containers.zstd-chunked.manifest-position",
                 "io.containers.zstd-chunked.manifest-position")
FOOTER_SIZE = 64
LEGACY_FOOTER_SIZE = 40
MAGIC = b"GNUlInUx"
LEGACY_MAGIC = b"GnUlInUx"
SKIPPABLE_MAGIC = b"\x50\x2a\x4d\x18"
MANIFEST_TYPE_CRFS = 1


def parse_position(text: str) -> tuple[int, int, int]:
    """``(offset, length, uncompressed_length)`` from ``offset:length:ulength:type``."""
    parts = text.split(":")
    try:
        off, length, ulength, kind = (int(p) for p in parts)
    except ValueError:
        raise LayerFormatError(f"manifest position {text!r} is not offset:length:length:type") from None
    if kind != MANIFEST_TYPE_CRFS:
        raise LayerFormatError(f"manifest position {text!r}: unknown manifest type {kind}")
    return off, length, ulength


def parse_footer(tail: bytes) -> tuple[int, int, int, int]:
    """``(offset, length, uncompressed_length, footer_size)`` of the TOC from
    the last (at least 40) bytes of a blob."""
    if len(tail) >= FOOTER_SIZE and tail[-8:] == MAGIC:
        fields = struct.unpack("<7Q", tail[-FOOTER_SIZE:-8])
        off, length, ulength, kind = fields[:4]
        size = FOOTER_SIZE
    elif len(tail) >= LEGACY_FOOTER_SIZE and tail[-8:] == LEGACY_MAGIC:
        off, length, ulength, kind = struct.unpack("<4Q", tail[-LEGACY_FOOTER_SIZE:-8])
        size = LEGACY_FOOTER_SIZE
    else:
        raise LayerFormatError("no zstd:chunked footer at the end of the blob")
    if kind != MANIFEST_TYPE_CRFS:
        raise LayerFormatError(f"zstd:chunked footer names unknown manifest type {kind}")
    return off, length, ulength, size + 8


def decompress_frame(raw: bytes, limit: int) -> bytes:
    """One zstd frame, whether or not its header records the content size."""
    d = zstandard.ZstdDecompressor().decompressobj()
    out = bytearray()
    view = memoryview(raw)
    pos = 0
    while pos < len(view) and not d.eof:
        out += d.decompress(view[pos:pos + 65536])
        pos += 65536
        if len(out) > limit:
            raise zstandard.ZstdError(f"frame decodes to more than {limit} bytes")
    if not d.eof:
        raise zstandard.ZstdError("data ends inside the frame")
    return bytes(out)


def inflate_frames(raw: bytes, want: int) -> bytes:
    """Bytes from consecutive zstd frames (see ``inflate_streams``); skippable frames yield nothing."""
    return inflate_streams(raw, want, lambda: zstandard.ZstdDecompressor().decompressobj(),
                           zstandard.ZstdError, "zstd frame")


def _annotation(annotations: dict, keys: tuple[str, ...]) -> tuple[str | None, int]:
    for i, key in enumerate(keys):
        if annotations.get(key):
            return annotations[key], i
    return None, -1


async def build(desc, blob: BlobSource) -> LayerTable:
    layer = desc.digest
    annotations = desc.annotations or {}
    checksum, family = _annotation(annotations, CHECKSUM_KEYS)
    if not checksum:
        raise LayerFormatError(f"layer {layer}: no zstd:chunked manifest-checksum annotation; "
                               "an unverified TOC is not used")
    position = annotations.get(POSITION_KEYS[family])
    try:
        if position:
            off, length, ulength = parse_position(position)
            data_end = off - 8
        else:
            if blob.size < LEGACY_FOOTER_SIZE + 8:
                raise LayerFormatError(f"{blob.size} bytes is too small for zstd:chunked")
            tail = await blob.read_range(blob.size - min(FOOTER_SIZE, blob.size), blob.size)
            off, length, ulength, _ = parse_footer(tail)
            data_end = off - 8
    except LayerFormatError as e:
        raise LayerFormatError(f"layer {layer}: {e}") from None
    if data_end < 0 or length <= 0 or off + length > blob.size:
        raise LayerFormatError(f"layer {layer}: TOC at {off}+{length} lies outside the blob "
                               f"of {blob.size} bytes")
    if length > MAX_TOC_SIZE or ulength > MAX_TOC_SIZE:
        raise LayerFormatError(f"layer {layer}: TOC of {ulength} bytes is too large")
    raw = await blob.read_range(off, off + length)

    def decode():
        got = "sha256:" + hashlib.sha256(raw).hexdigest()
        if got != checksum:
            raise DigestMismatch(f"layer {layer}: zstd:chunked TOC hashes to {got}, "
                                 f"expected {checksum}")
        try:
            toc_json = decompress_frame(raw, ulength)
        except zstandard.ZstdError as e:
            raise CorruptData(f"layer {layer}: TOC is not valid zstd ({e})") from None
        if len(toc_json) != ulength:
            raise LayerFormatError(f"layer {layer}: TOC is {len(toc_json)} bytes, the manifest "
                                   f"position says {ulength}")
        return entries_from_toc(parse_toc(toc_json, layer), layer, data_end, end_offsets=True)

    entries = await trio.to_thread.run_sync(decode)
    state = pack_state(layer=layer, toc_checksum=checksum, toc_offset=off, toc_length=length)
    return LayerTable(format="zstd:chunked", lazy=True, state=state, entries=entries)


def reader(table: LayerTable) -> "ZstdChunkedReader":
    return ZstdChunkedReader(unpack_state(table.state).get("layer", "?"))


class ZstdChunkedReader:
    """Each chunk is one piece: its frame(s) from the chunk's offset to the
    next one. A hole ("zeros") needs no decoding; its frame is still named so
    every piece is a real range of the blob."""

    def __init__(self, layer: str):
        self.layer = layer

    def pieces(self, data: bytes, offset: int, size: int) -> Sequence[Piece]:
        return plan(data, offset, size, lambda c: "zeros" if c.kind == ZEROS else "zstd-frame")

    def decode(self, piece: Piece, raw: bytes) -> bytes:
        inner, size, digest, kind = piece_params(piece)
        what = f"layer {self.layer}: zstd:chunked chunk at blob bytes {piece.start}-{piece.end}"
        if kind == ZEROS:
            return verify_chunk(bytes(size), size, digest, what)
        try:
            out = inflate_frames(raw, inner + size)
        except zstandard.ZstdError as e:
            raise CorruptData(f"{what} is not valid zstd ({e})") from None
        return verify_chunk(out[inner:inner + size], size, digest, what)

"""Uncompressed tar layers: content offsets in the tar are offsets in the blob.

A ranged read cannot be checked against the blob digest, so the build pass
records a sha256 for every ``CHUNK`` bytes of every file's content; each
later read fetches whole chunks and verifies them. ``Entry.data`` holds the
content offset, size and the index of the file's first chunk digest in
``LayerTable.state`` (the layer digest, a newline, then 32-byte digests).
"""

from __future__ import annotations

import hashlib
import mmap
import struct
from pathlib import Path

import trio

from ..blob import BlobSource
from .entry import EntryType
from ..errors import DigestMismatch, LayerFormatError
from .tarheader import Member, TarParser
from .base import LayerTable, Piece, check_locator, files_of, same_state

CHUNK = 1 << 20
_LOC = struct.Struct("<QQI")
_PARAMS = struct.Struct("<I")


async def build(desc, blob: BlobSource) -> LayerTable:
    path = await blob.path()
    return await trio.to_thread.run_sync(build_from_file, path, desc.digest)


def build_from_file(path: Path, layer: str) -> LayerTable:
    parser = TarParser(layer)
    digests: list[bytes] = []
    with open(path, "rb") as f, _mapped(f) as mm:
        view = memoryview(mm)
        try:
            members = parser.feed(view)
            parser.close()
            for m in members:
                _locate(m, view, digests)
        finally:
            view.release()
    return LayerTable("tar", True, state=layer.encode() + b"\n" + b"".join(digests),
                      entries=[m.entry for m in members], diff_id=parser.diff_id)


def _locate(m: Member, view: memoryview, digests: list[bytes]) -> None:
    e = m.entry
    if e.type is not EntryType.FILE:
        return
    e.data = _LOC.pack(m.offset, e.size, len(digests))
    for start in range(m.offset, m.offset + e.size, CHUNK):
        end = min(start + CHUNK, m.offset + e.size)
        digests.append(hashlib.sha256(view[start:end]).digest())


class _mapped:
    """An mmap of the file, or an empty buffer for an empty file (mmap refuses those)."""

    def __init__(self, f):
        self._mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) if _size(f) else None

    def __enter__(self):
        return self._mm if self._mm is not None else b""

    def __exit__(self, *exc):
        if self._mm is not None:
            self._mm.close()


def _size(f) -> int:
    f.seek(0, 2)
    n = f.tell()
    f.seek(0)
    return n


def reader(table: LayerTable) -> "TarReader":
    return TarReader(table.state)


class TarReader:
    def __init__(self, state: bytes):
        layer, _, self._digests = state.partition(b"\n")
        self._layer = layer.decode("utf-8", "replace")
        if len(self._digests) % 32:
            raise LayerFormatError(f"layer {self._layer}: tar state is truncated or corrupt")

    def pieces(self, data: bytes, offset: int, size: int) -> list[Piece]:
        start, length, first = _LOC.unpack(data)
        offset, end = max(offset, 0), min(offset + size, length)
        if end <= offset:
            return []
        out = []
        for k in range(offset // CHUNK, (end - 1) // CHUNK + 1):
            lo = k * CHUNK
            n = min(CHUNK, length - lo)
            out.append(Piece(start + lo, start + lo + n, "raw", _PARAMS.pack(first + k),
                             0, n, lo))
        return out

    def decode(self, piece: Piece, raw: bytes) -> bytes:
        (index,) = _PARAMS.unpack(piece.params)
        want = self._digests[32 * index: 32 * index + 32]
        if len(want) != 32:
            raise LayerFormatError(f"layer {self._layer}: chunk {index} is not in the layer table")
        if hashlib.sha256(raw).digest() != want:
            raise DigestMismatch(f"layer {self._layer}: bytes {piece.start}-{piece.end} "
                                 f"do not match the digest of chunk {index}")
        return raw


def check_table(table: LayerTable, desc) -> None:
    """Without the blob: built for ``desc``, and every file's bytes and chunk
    digests inside what the table and the layer hold."""
    layer, _, digests = table.state.partition(b"\n")
    if layer.decode() != desc.digest:
        raise LayerFormatError(f"the table was built for layer {layer.decode()}")
    if len(digests) % 32 or not table.lazy:
        raise LayerFormatError("malformed chunk digests")
    chunks = len(digests) // 32
    for e in files_of(table):
        start, size, first = check_locator(_LOC, e)
        if start + size > desc.size or first + -(-size // CHUNK) > chunks:
            raise LayerFormatError(f"{e.name} lies outside the layer")


state_differences = same_state

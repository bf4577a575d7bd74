"""TOCs of lazily readable layers: eStargz's ``stargz.index.json`` and the
zstd:chunked manifest, which is the same JSON (containers/storage adds
``endOffset`` and ``chunkType``).

A TOC lists every entry, and for each file the compressed streams (gzip
members, zstd frames) holding its chunks; the formats differ only in where
the TOC sits and how a stream inflates. Here a TOC becomes entries whose
``data`` is a packed chunk list, and a read of a file becomes one piece per
chunk, each verified against its ``chunkDigest`` once decoded.
"""

from __future__ import annotations

import base64
import calendar
import functools
import hashlib
import json
import re
import struct
from dataclasses import dataclass
from typing import Callable, Sequence

from ..errors import CorruptData, DigestMismatch, LayerFormatError
from .base import Piece
from .entry import Entry, EntryType

LANDMARKS = frozenset({".prefetch.landmark", ".no.prefetch.landmark"})
"""Files eStargz producers add to mark prioritized files: format metadata,
not image content, so they yield no entry (as in stargz-snapshotter)."""
MAX_TOC_SIZE = 512 << 20
"""Largest uncompressed TOC accepted (a 100k-file layer's TOC is ~40 MB)."""

_TYPES = {"dir": EntryType.DIR, "reg": EntryType.FILE, "symlink": EntryType.SYMLINK,
          "hardlink": EntryType.HARDLINK, "char": EntryType.CHAR, "block": EntryType.BLOCK,
          "fifo": EntryType.FIFO}


def parse_toc(toc_json: bytes, layer: str) -> list[dict]:
    try:
        toc = json.loads(toc_json)
    except RecursionError:
        raise LayerFormatError(f"layer {layer}: TOC is JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise LayerFormatError(f"layer {layer}: TOC is not JSON ({e})") from None
    if not isinstance(toc, dict) or not isinstance(toc.get("entries"), list):
        raise LayerFormatError(f"layer {layer}: TOC has no entries list")
    if toc.get("version") != 1:
        raise LayerFormatError(f"layer {layer}: TOC version {toc.get('version')!r} is not 1")
    return toc["entries"]


# --- locators ---------------------------------------------------------------

_CHUNK = struct.Struct("<QQQQQ32sB")
"""content offset, blob start, blob end, inner offset, size, sha256, kind:
one chunk of a file. Fixed-size records, so a read finds its first chunk by
bisection even in a file of many thousand chunks."""
_PARAMS = struct.Struct("<QQ32sB")
DATA, ZEROS = 0, 1


@dataclass(frozen=True, slots=True)
class Chunk:
    offset: int
    """Offset of the chunk in the file's content."""
    start: int
    """Blob offset of the compressed stream holding the chunk."""
    end: int
    """Blob offset where that stream's range ends."""
    inner: int
    """Offset of the chunk in the decompressed stream from ``start``."""
    size: int
    digest: bytes
    kind: int = DATA


def pack_chunks(chunks: Sequence[Chunk]) -> bytes:
    return b"".join(_CHUNK.pack(c.offset, c.start, c.end, c.inner, c.size, c.digest, c.kind)
                    for c in chunks)


def unpack_chunks(data: bytes) -> list[Chunk]:
    _check_locator(data)
    return [Chunk(*t) for t in _CHUNK.iter_unpack(data)]


def _check_locator(data: bytes) -> None:
    if len(data) % _CHUNK.size:
        raise LayerFormatError(f"chunk locator of {len(data)} bytes is corrupt")


def plan(data: bytes, offset: int, size: int, codec: Callable[[Chunk], str]) -> list[Piece]:
    """Pieces for ``[offset, offset + size)`` of a file made of ``data``'s chunks."""
    _check_locator(data)
    count = len(data) // _CHUNK.size
    lo, hi = 0, count
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _CHUNK.unpack_from(data, mid * _CHUNK.size)[0] <= offset:
            lo = mid
        else:
            hi = mid
    out, stop = [], offset + size
    for i in range(lo, count if size > 0 else 0):
        c = Chunk(*_CHUNK.unpack_from(data, i * _CHUNK.size))
        if c.offset >= stop:
            break
        if c.offset + c.size > offset:
            out.append(Piece(c.start, c.end, codec(c), _PARAMS.pack(c.inner, c.size, c.digest, c.kind),
                             0, c.size, c.offset))
    return out


def piece_params(piece: Piece) -> tuple[int, int, bytes, int]:
    return _PARAMS.unpack(piece.params)


# --- TOC entries -> Entry ----------------------------------------------------

_RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?"
                      r"(?:([Zz])|([+-])(\d\d):(\d\d))$")


@functools.lru_cache(maxsize=4096)
def parse_time(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time (Go's format, any
    fraction); 0 for Go's zero time (year 1), which means "unknown"."""
    m = _RFC3339.match(text)
    if not m:
        raise ValueError(text)
    y, mo, d, h, mi, s = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    if y <= 1:
        return 0
    secs = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
    if m.group(9):
        delta = int(m.group(10)) * 3600 + int(m.group(11)) * 60
        secs -= delta if m.group(9) == "+" else -delta
    frac = (m.group(7) or "")[:9].ljust(9, "0")
    return secs * 1_000_000_000 + int(frac)


def _digest_bytes(text, what: str) -> bytes:
    if not isinstance(text, str) or not text.startswith("sha256:") or len(text) != 71:
        raise LayerFormatError(f"{what}: unsupported digest {text!r}")
    try:
        return bytes.fromhex(text[7:])
    except ValueError:
        raise LayerFormatError(f"{what}: malformed digest {text!r}") from None


@dataclass
class _File:
    entry: Entry
    digest: str | None
    chunks: list[dict]


def entries_from_toc(items: list[dict], layer: str, data_end: int,
                     end_offsets: bool = False) -> list[Entry]:
    """Entries of a TOC whose file streams all lie in ``[0, data_end)``.

    A chunk's compressed range runs from its ``offset`` to the next larger
    offset of any chunk (or ``data_end``); with ``end_offsets``
    (containers/storage) a file's ``endOffset`` ends its last chunk.
    """
    files: list[_File] = []
    entries: list[Entry] = []
    unames: dict[int, str] = {}
    gnames: dict[int, str] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise LayerFormatError(f"layer {layer}: TOC entry {i} is not an object")
        name = item.get("name")
        kind = item.get("type")
        if not isinstance(name, str):
            raise LayerFormatError(f"layer {layer}: TOC entry {i} has no name")
        what = f"layer {layer}: TOC entry {name!r}"
        if kind == "chunk":
            if not files or files[-1].entry.name != name:
                raise LayerFormatError(f"{what}: chunk does not follow its file")
            files[-1].chunks.append(item)
            continue
        if kind not in _TYPES:
            raise LayerFormatError(f"{what}: unknown type {kind!r}")
        if kind == "reg" and name.endswith("landmark") and plain_name(name) in LANDMARKS:
            continue
        entry = _entry(item, kind, what, unames, gnames)
        entries.append(entry)
        if kind == "reg":
            files.append(_File(entry, item.get("digest"), [item]))
    _locate(files, layer, data_end, end_offsets)
    return entries


def plain_name(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def _entry(item: dict, kind: str, what: str, unames: dict, gnames: dict) -> Entry:
    get = item.get
    try:
        uid, gid = int(get("uid", 0)), int(get("gid", 0))
        mode = int(get("mode", 0))
        size = int(get("size", 0)) if kind == "reg" else 0
        modtime = get("modtime")
        mtime = parse_time(modtime) if modtime else 0
        xattrs = get("xattrs")
        xattrs = {k: base64.b64decode(v, validate=True) for k, v in xattrs.items()} if xattrs else {}
        dev = (int(get("devMajor", 0)), int(get("devMinor", 0))) if kind in ("char", "block") else (0, 0)
    except (TypeError, ValueError, AttributeError) as e:
        raise LayerFormatError(f"{what}: malformed field ({e})") from None
    if size < 0 or uid < 0 or gid < 0:
        raise LayerFormatError(f"{what}: negative size or owner")
    uname = get("userName") or unames.get(uid, "")
    gname = get("groupName") or gnames.get(gid, "")
    if uid not in unames:
        unames[uid] = uname
    if gid not in gnames:
        gnames[gid] = gname
    link = get("linkName", "")
    if not link and kind in ("symlink", "hardlink"):
        raise LayerFormatError(f"{what}: {kind} has no linkName")
    return Entry(item["name"], _TYPES[kind], mode & 0o7777, uid, gid, uname, gname, size,
                 mtime, link, dev[0], dev[1], xattrs)


def _locate(files: list[_File], layer: str, data_end: int, end_offsets: bool) -> None:
    """Fill each file's ``data`` with its checked chunk list."""
    shared: dict[int, int] = {}
    for f in files:
        if not f.entry.size:
            continue
        for c in f.chunks:
            off = c.get("offset")
            if type(off) is not int or not 0 <= off < data_end:
                raise LayerFormatError(
                    f"layer {layer}: TOC entry {f.entry.name!r}: offset {off!r} outside "
                    f"the blob's data (0-{data_end})")
            shared[off] = shared.get(off, 0) + 1
    ordered = sorted(shared)
    nxt = dict(zip(ordered, ordered[1:] + [data_end]))
    members: dict[int, list[tuple[int, int, str]]] = {}
    for f in files:
        if f.entry.size:
            chunks = _chunks(f, nxt, layer, data_end, end_offsets)
            for c in chunks:
                if shared[c.start] > 1:
                    members.setdefault(c.start, []).append((c.inner, c.size, f.entry.name))
            f.entry.data = pack_chunks(chunks)
    for start, spans in members.items():
        spans.sort()
        for (a, asize, aname), (b, _, bname) in zip(spans, spans[1:]):
            if b < a + asize:
                raise LayerFormatError(f"layer {layer}: TOC entries {aname!r} and {bname!r} "
                                       f"overlap in the stream at {start}")


def _chunks(f: _File, nxt: dict[int, int], layer: str, data_end: int,
            end_offsets: bool) -> list[Chunk]:
    what = f"layer {layer}: TOC entry {f.entry.name!r}"
    size = f.entry.size
    end_offset = f.chunks[0].get("endOffset") if end_offsets else None
    chunks, pos = [], 0
    for n, c in enumerate(f.chunks):
        try:
            coff = int(c.get("chunkOffset", 0))
            csize = int(c.get("chunkSize", 0)) or size - coff
            inner = int(c.get("innerOffset", 0))
        except (TypeError, ValueError):
            raise LayerFormatError(f"{what}: malformed chunk fields") from None
        if coff != pos:
            raise LayerFormatError(f"{what}: chunk at {coff} overlaps or leaves a gap "
                                   f"(expected {pos})")
        if csize <= 0 or inner < 0 or pos + csize > size:
            raise LayerFormatError(f"{what}: chunk at {coff} of {csize} bytes does not fit "
                                   f"a file of {size} bytes")
        start = c["offset"]
        end = nxt[start]
        if end_offset and n == len(f.chunks) - 1:
            if type(end_offset) is not int or not start < end_offset <= data_end:
                raise LayerFormatError(f"{what}: endOffset {end_offset!r} outside its data")
            end = end_offset
        digest = c.get("chunkDigest") or (f.digest if len(f.chunks) == 1 else None)
        if not digest:
            raise LayerFormatError(f"{what}: chunk at {coff} has no digest")
        chunk_type = c.get("chunkType")
        if chunk_type not in (None, "", "zeros"):
            raise LayerFormatError(f"{what}: unknown chunkType {chunk_type!r}")
        chunks.append(Chunk(pos, start, end, inner, csize, _digest_bytes(digest, what),
                            ZEROS if chunk_type == "zeros" else DATA))
        pos += csize
    if pos != size:
        raise LayerFormatError(f"{what}: chunks hold {pos} bytes, the file has {size}")
    return chunks


# --- state ------------------------------------------------------------------

def pack_state(**fields) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def unpack_state(state: bytes) -> dict:
    try:
        fields = json.loads(state)
    except (ValueError, RecursionError):
        raise LayerFormatError("format state of the layer table is corrupt") from None
    if not isinstance(fields, dict):
        raise LayerFormatError("format state of the layer table is corrupt")
    return fields


def verify_chunk(data: bytes, size: int, digest: bytes, what: str) -> bytes:
    if len(data) != size:
        raise CorruptData(f"{what}: decoded to {len(data)} bytes, expected {size}")
    got = hashlib.sha256(data).digest()
    if got != digest:
        raise DigestMismatch(f"{what}: content hashes to sha256:{got.hex()}, "
                             f"expected sha256:{digest.hex()}")
    return data

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
from .entry import Entry, EntryType, gc_paused

try:
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - a dependency; the stdlib parser gives the same objects
    _fast_loads = json.loads

LANDMARKS = frozenset({".prefetch.landmark", ".no.prefetch.landmark"})
"""Files eStargz producers add to mark prioritized files: format metadata,
not image content, so they yield no entry (as in stargz-snapshotter)."""
MAX_TOC_SIZE = 512 << 20
"""Largest uncompressed TOC accepted (a 100k-file layer's TOC is ~40 MB)."""

_TYPES = {"dir": EntryType.DIR, "reg": EntryType.FILE, "symlink": EntryType.SYMLINK,
          "hardlink": EntryType.HARDLINK, "char": EntryType.CHAR, "block": EntryType.BLOCK,
          "fifo": EntryType.FIFO}


def _loads(text: bytes):
    """JSON parsed by orjson, twice as fast as the stdlib on a large TOC (a
    new image waits for it). What orjson refuses and the stdlib takes (lone
    surrogate escapes, integers beyond 64 bits) is left to the stdlib, so
    that the same TOCs are accepted either way."""
    try:
        return _fast_loads(text)
    except ValueError:
        return json.loads(text)


def parse_toc(toc_json: bytes, layer: str) -> list[dict]:
    try:
        with gc_paused():
            toc = _loads(toc_json)
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


def first_start(data: bytes) -> int:
    """Blob offset of the stream holding a file's first chunk (a non-empty locator)."""
    _check_locator(data)
    return _CHUNK.unpack_from(data, 0)[1]


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


def _digest_bytes(text, layer: str, name: str) -> bytes:
    if not isinstance(text, str) or not text.startswith("sha256:") or len(text) != 71:
        raise LayerFormatError(f"layer {layer}: TOC entry {name!r}: unsupported digest {text!r}")
    try:
        return bytes.fromhex(text[7:])
    except ValueError:
        raise LayerFormatError(f"layer {layer}: TOC entry {name!r}: malformed digest "
                               f"{text!r}") from None


def entries_from_toc(items: list[dict], layer: str, data_end: int,
                     end_offsets: bool = False) -> list[Entry]:
    """Entries of a TOC whose file streams all lie in ``[0, data_end)``.

    A chunk's compressed range runs from its ``offset`` to the next larger
    offset of any chunk (or ``data_end``); with ``end_offsets``
    (containers/storage) a file's ``endOffset`` ends its last chunk.
    This runs before a new image's first answer, once per TOC entry: it
    makes one ``Entry`` each and few other objects.
    """
    with gc_paused():
        return _entries(items, layer, data_end, end_offsets)


def _entries(items: list[dict], layer: str, data_end: int, end_offsets: bool) -> list[Entry]:
    files: list[tuple[Entry, object, list[dict]]] = []
    entries: list[Entry] = []
    unames: dict[int, str] = {}
    gnames: dict[int, str] = {}
    types = _TYPES
    for i, item in enumerate(items):
        if type(item) is not dict and not isinstance(item, dict):
            raise LayerFormatError(f"layer {layer}: TOC entry {i} is not an object")
        name = item.get("name")
        kind = item.get("type")
        if type(name) is not str and not isinstance(name, str):
            raise LayerFormatError(f"layer {layer}: TOC entry {i} has no name")
        if kind == "chunk":
            if not files or files[-1][0].name != name:
                raise LayerFormatError(f"layer {layer}: TOC entry {name!r}: chunk does not "
                                       "follow its file")
            files[-1][2].append(item)
            continue
        etype = types.get(kind) if isinstance(kind, str) else None
        if etype is None:
            raise LayerFormatError(f"layer {layer}: TOC entry {name!r}: unknown type {kind!r}")
        if kind == "reg" and name.endswith("landmark") and plain_name(name) in LANDMARKS:
            continue
        entry = _entry(item, kind, etype, layer, unames, gnames)
        entries.append(entry)
        if kind == "reg":
            files.append((entry, item.get("digest"), [item]))
    _locate(files, layer, data_end, end_offsets)
    return entries


def plain_name(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def _int(value) -> int:
    return value if type(value) is int else int(value)


def _entry(item: dict, kind: str, etype: EntryType, layer: str, unames: dict,
           gnames: dict) -> Entry:
    get = item.get
    uid, gid, mode = get("uid", 0), get("gid", 0), get("mode", 0)
    size = get("size", 0) if kind == "reg" else 0
    try:
        # JSON numbers are ints already; anything else goes through int()
        if type(uid) is not int or type(gid) is not int or type(mode) is not int \
                or type(size) is not int:
            uid, gid, mode, size = _int(uid), _int(gid), _int(mode), _int(size)
        modtime = get("modtime")
        mtime = parse_time(modtime) if modtime else 0
        xattrs = get("xattrs")
        xattrs = {k: base64.b64decode(v, validate=True) for k, v in xattrs.items()} if xattrs else {}
        dev = (_int(get("devMajor", 0)), _int(get("devMinor", 0))) if kind in ("char", "block") \
            else (0, 0)
    except (TypeError, ValueError, AttributeError) as e:
        raise LayerFormatError(f"layer {layer}: TOC entry {item['name']!r}: "
                               f"malformed field ({e})") from None
    if size < 0 or uid < 0 or gid < 0:
        raise LayerFormatError(f"layer {layer}: TOC entry {item['name']!r}: "
                               "negative size or owner")
    uname = get("userName") or unames.get(uid, "")
    gname = get("groupName") or gnames.get(gid, "")
    if uid not in unames:
        unames[uid] = uname
    if gid not in gnames:
        gnames[gid] = gname
    link = get("linkName", "")
    if not link and kind in ("symlink", "hardlink"):
        raise LayerFormatError(f"layer {layer}: TOC entry {item['name']!r}: "
                               f"{kind} has no linkName")
    return Entry(item["name"], etype, mode & 0o7777, uid, gid, uname, gname, size,
                 mtime, link, dev[0], dev[1], xattrs)


def _locate(files: list[tuple[Entry, object, list[dict]]], layer: str, data_end: int,
            end_offsets: bool) -> None:
    """Fill each file's ``data`` with its checked chunk list."""
    shared: dict[int, int] = {}
    for entry, _, chunks in files:
        if not entry.size:
            continue
        for c in chunks:
            off = c.get("offset")
            if type(off) is not int or not 0 <= off < data_end:
                raise LayerFormatError(
                    f"layer {layer}: TOC entry {entry.name!r}: offset {off!r} outside "
                    f"the blob's data (0-{data_end})")
            shared[off] = shared.get(off, 0) + 1
    ordered = sorted(shared)
    nxt = dict(zip(ordered, ordered[1:] + [data_end]))
    streams = {off for off, n in shared.items() if n > 1}
    members: dict[int, list[tuple[int, int, str]]] = {}
    pack = _CHUNK.pack
    for entry, digest, chunks in files:
        size = entry.size
        if not size:
            continue
        if len(chunks) == 1 and not end_offsets:
            # one chunk, the whole file (most files): as _chunks, inline
            get = chunks[0].get
            start = chunks[0]["offset"]
            if (get("chunkOffset", 0) == 0 and get("chunkSize", 0) in (0, size)
                    and get("innerOffset", 0) == 0 and get("chunkType") is None
                    and start not in streams):
                digest = get("chunkDigest") or digest
                if type(digest) is str and len(digest) == 71 and digest.startswith("sha256:"):
                    try:
                        entry.data = pack(0, start, nxt[start], 0, size,
                                          bytes.fromhex(digest[7:]), DATA)
                        continue
                    except ValueError:
                        pass
        entry.data = _chunks(entry, digest, chunks, nxt, layer, data_end,
                             end_offsets, streams, members)
    for start, spans in members.items():
        spans.sort()
        for (a, asize, aname), (b, _, bname) in zip(spans, spans[1:]):
            if b < a + asize:
                raise LayerFormatError(f"layer {layer}: TOC entries {aname!r} and {bname!r} "
                                       f"overlap in the stream at {start}")


def _chunks(entry: Entry, file_digest, items: list[dict], nxt: dict[int, int], layer: str,
            data_end: int, end_offsets: bool, streams: set[int],
            members: dict[int, list[tuple[int, int, str]]]) -> bytes:
    """The packed chunk list of one file (``Chunk`` records)."""
    size = entry.size
    end_offset = items[0].get("endOffset") if end_offsets else None
    last = len(items) - 1
    out, pos = [], 0
    for n, c in enumerate(items):
        get = c.get
        try:
            coff = _int(get("chunkOffset", 0))
            csize = _int(get("chunkSize", 0)) or size - coff
            inner = _int(get("innerOffset", 0))
        except (TypeError, ValueError):
            raise LayerFormatError(f"layer {layer}: TOC entry {entry.name!r}: "
                                   "malformed chunk fields") from None
        if coff != pos:
            raise LayerFormatError(f"layer {layer}: TOC entry {entry.name!r}: chunk at {coff} "
                                   f"overlaps or leaves a gap (expected {pos})")
        if csize <= 0 or inner < 0 or pos + csize > size:
            raise LayerFormatError(f"layer {layer}: TOC entry {entry.name!r}: chunk at {coff} "
                                   f"of {csize} bytes does not fit a file of {size} bytes")
        start = c["offset"]
        end = nxt[start]
        if end_offset and n == last:
            if type(end_offset) is not int or not start < end_offset <= data_end:
                raise LayerFormatError(f"layer {layer}: TOC entry {entry.name!r}: endOffset "
                                       f"{end_offset!r} outside its data")
            end = end_offset
        digest = get("chunkDigest") or (file_digest if not last else None)
        if not digest:
            raise LayerFormatError(f"layer {layer}: TOC entry {entry.name!r}: chunk at {coff} "
                                   "has no digest")
        chunk_type = get("chunkType")
        if chunk_type is not None and chunk_type not in ("", "zeros"):
            raise LayerFormatError(f"layer {layer}: TOC entry {entry.name!r}: unknown "
                                   f"chunkType {chunk_type!r}")
        out.append(_CHUNK.pack(pos, start, end, inner, csize,
                               _digest_bytes(digest, layer, entry.name),
                               ZEROS if chunk_type == "zeros" else DATA))
        if start in streams:
            members.setdefault(start, []).append((inner, csize, entry.name))
        pos += csize
    if pos != size:
        raise LayerFormatError(f"layer {layer}: TOC entry {entry.name!r}: chunks hold {pos} "
                               f"bytes, the file has {size}")
    return out[0] if len(out) == 1 else b"".join(out)


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

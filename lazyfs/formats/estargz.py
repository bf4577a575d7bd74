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

The TOC-to-entry conversion here is shared with zstd:chunked, whose TOC is
the same JSON (containers/storage adds ``endOffset`` and ``chunkType``).
"""

from __future__ import annotations

import base64
import calendar
import functools
import hashlib
import json
import re
import struct
import tarfile
import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

import trio

from ..blob import BlobSource
from .entry import Entry, EntryType
from ..errors import DigestMismatch, LayerFormatError
from .base import LayerTable, Piece, inflate_streams

TOC_DIGEST_ANNOTATION = "containerd.io/snapshot/stargz/toc.digest"
TOC_NAME = "stargz.index.json"
LANDMARKS = frozenset({".prefetch.landmark", ".no.prefetch.landmark"})
FOOTER_SIZE = 51
LEGACY_FOOTER_SIZE = 47
MAX_TOC_SIZE = 512 << 20
"""Largest uncompressed TOC accepted (a 100k-file layer's TOC is ~40 MB)."""

_TYPES = {"dir": EntryType.DIR, "reg": EntryType.FILE, "symlink": EntryType.SYMLINK,
          "hardlink": EntryType.HARDLINK, "char": EntryType.CHAR, "block": EntryType.BLOCK,
          "fifo": EntryType.FIFO}


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
    """The TOC JSON from the gzip member holding its tar entry."""
    d = zlib.decompressobj(31)
    try:
        data = d.decompress(raw, 512 + MAX_TOC_SIZE + 512)
    except zlib.error as e:
        raise LayerFormatError(f"layer {layer}: TOC is not valid gzip ({e})") from None
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


def check_digest(data: bytes, expected: str, what: str) -> None:
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != expected:
        raise DigestMismatch(f"{what}: content hashes to {got}, expected {expected}")


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
        if kind == "reg" and name.endswith("landmark") and _plain(name) in LANDMARKS:
            continue
        entry = _entry(item, kind, what, unames, gnames)
        entries.append(entry)
        if kind == "reg":
            files.append(_File(entry, item.get("digest"), [item]))
    _locate(files, layer, data_end, end_offsets)
    return entries


def _plain(name: str) -> str:
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


# --- build and read ---------------------------------------------------------

async def build(desc, blob: BlobSource) -> LayerTable:
    layer = desc.digest
    expected = (desc.annotations or {}).get(TOC_DIGEST_ANNOTATION)
    if not expected:
        raise LayerFormatError(f"layer {layer}: no {TOC_DIGEST_ANNOTATION} annotation; "
                               "an unverified eStargz TOC is not used")
    if blob.size < LEGACY_FOOTER_SIZE:
        raise LayerFormatError(f"layer {layer}: {blob.size} bytes is too small for eStargz")
    tail = await blob.read_range(blob.size - min(FOOTER_SIZE, blob.size), blob.size)
    try:
        toc_offset, footer = parse_footer(tail)
    except LayerFormatError as e:
        raise LayerFormatError(f"layer {layer}: {e}") from None
    data_end = blob.size - footer
    if toc_offset >= data_end:
        raise LayerFormatError(f"layer {layer}: TOC offset {toc_offset} is past the blob's "
                               f"data ({data_end} bytes)")
    raw = await blob.read_range(toc_offset, data_end)

    def decode() -> tuple[list[Entry], int | None]:
        toc_json = toc_json_from_member(raw, layer)
        check_digest(toc_json, expected, f"layer {layer}: eStargz TOC")
        items = parse_toc(toc_json, layer)
        return entries_from_toc(items, layer, toc_offset), prefetch_end(items)

    entries, prefetch = await trio.to_thread.run_sync(decode)
    state = pack_state(layer=layer, toc_digest=expected, toc_offset=toc_offset,
                       footer=footer, prefetch_end=prefetch)
    return LayerTable(format="estargz", lazy=True, state=state, entries=entries)


def prefetch_end(items: list[dict]) -> int | None:
    """Where the producer's prioritized files end in the blob: the offset of
    ``.prefetch.landmark``, 0 with ``.no.prefetch.landmark``, None without
    either. Kept in the state for a prefetcher; reads do not need it."""
    for item in items:
        if isinstance(item, dict) and item.get("type") == "reg":
            name = _plain(str(item.get("name", "")))
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
        except zlib.error as e:
            raise DigestMismatch(f"layer {self.layer}: eStargz chunk at blob bytes "
                                 f"{piece.start}-{piece.end} is not valid gzip ({e})") from None
        return verify_chunk(out[inner:inner + size], size, digest,
                            f"layer {self.layer}: eStargz chunk at blob bytes {piece.start}-{piece.end}")


def verify_chunk(data: bytes, size: int, digest: bytes, what: str) -> bytes:
    if len(data) != size:
        raise DigestMismatch(f"{what}: decoded to {len(data)} bytes, expected {size}")
    got = hashlib.sha256(data).digest()
    if got != digest:
        raise DigestMismatch(f"{what}: content hashes to sha256:{got.hex()}, "
                             f"expected sha256:{digest.hex()}")
    return data


def _inflate(raw: bytes, want: int) -> bytes:
    return inflate_streams(raw, want, lambda: zlib.decompressobj(31), zlib.error, "gzip member")


def prioritized(table) -> list[Entry]:
    """The files a producer put before ``.prefetch.landmark``: what a container
    reads at start, to be fetched ahead of any read (as stargz-snapshotter does)."""
    end = unpack_state(table.state).get("prefetch_end") or 0
    out = []
    for e in table.entries:
        if e.type is EntryType.FILE and e.size and e.data:
            if unpack_chunks(e.data)[0].start < end:
                out.append(e)
    return out

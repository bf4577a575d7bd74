"""One layer's entry table on disk, so a layer is listed once per machine.

The file is columnar rather than one record per entry: each string column is
a single NUL-joined text (tar names cannot hold NUL) and each number column a
packed array, so both directions run at C speed and 100k entries take tens of
milliseconds. A keyed BLAKE2b digest over the whole payload is checked before
anything is decoded: a truncated, corrupt or foreign file is a ``CacheError``,
never a wrong table.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import tempfile
from array import array
from itertools import repeat
from operator import attrgetter
from pathlib import Path
from types import MappingProxyType

import zstandard

from ..formats.entry import Entry, EntryType, gc_paused
from ..errors import CacheError
from ..formats.base import LayerTable

MAGIC = b"LZFS-LT1"
_DIGEST_KEY = b"lazyfs layer table v1"
_DIGEST_SIZE = 32
_TYPES = tuple(EntryType)
_TYPE_CODE = {t: i for i, t in enumerate(_TYPES)}
_INT_FIELDS = ("mode", "uid", "gid", "size", "mtime_ns", "devmajor", "devminor")
_STR_FIELDS = ("name", "uname", "gname", "linkname")
_LEN = struct.Struct("<Q")


def table_path(store, fmt: str, digest: str) -> Path:
    """Where ``store`` keeps the table of layer ``digest`` read as ``fmt``."""
    return store.index_path("layer-" + fmt.replace(":", "-"), digest)


def save_layer_table(path: Path, table: LayerTable) -> None:
    """Write ``table`` to ``path`` atomically (temp file, fsync, rename)."""
    path = Path(path)
    payload = zstandard.ZstdCompressor(level=3).compress(_encode(table))
    digest = hashlib.blake2b(payload, digest_size=_DIGEST_SIZE, key=_DIGEST_KEY).digest()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(MAGIC + digest + payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        raise CacheError(f"cannot write layer table {path}: {e.strerror or e}") from None


def load_layer_table(path: Path) -> LayerTable:
    """Read a table written by ``save_layer_table``; ``CacheError`` unless intact."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise CacheError(f"cannot read layer table {path}: {e.strerror or e}") from None
    head = len(MAGIC) + _DIGEST_SIZE
    if len(blob) < head or blob[:len(MAGIC)] != MAGIC:
        raise CacheError(f"layer table {path} is not a lazyfs layer table")
    payload = memoryview(blob)[head:]
    digest = hashlib.blake2b(payload, digest_size=_DIGEST_SIZE, key=_DIGEST_KEY).digest()
    if digest != blob[len(MAGIC):head]:
        raise CacheError(f"layer table {path} is corrupt (checksum mismatch)")
    try:
        raw = zstandard.ZstdDecompressor().decompress(payload)
        return _decode(raw)
    except (zstandard.ZstdError, ValueError, KeyError, IndexError, TypeError,
            UnicodeDecodeError, struct.error) as e:
        raise CacheError(f"layer table {path} is corrupt ({e})") from None


def _encode(table: LayerTable) -> bytes:
    entries = table.entries
    head = json.dumps({"format": table.format, "lazy": table.lazy, "reason": table.reason,
                       "count": len(entries), "diff_id": table.diff_id}).encode()
    datas = list(map(attrgetter("data"), entries))
    types = bytes(map(_TYPE_CODE.__getitem__, map(attrgetter("type"), entries)))
    sections = [head, table.state, types]
    for field in _STR_FIELDS:
        sections.append(_join(map(attrgetter(field), entries)))
    for field in _INT_FIELDS:
        sections.append(_ints(map(attrgetter(field), entries)))
    sections.append(_ints(map(len, datas)))
    sections.append(b"".join(datas))
    sections.append(_encode_xattrs(entries))
    return b"".join(_LEN.pack(len(s)) + s for s in sections)


def _decode(raw: bytes) -> LayerTable:
    sections = _split(raw)
    head = json.loads(sections[0])
    n = head["count"]
    state, types = sections[1], sections[2]
    strs = [_unjoin(s, n) for s in sections[3:3 + len(_STR_FIELDS)]]
    pos = 3 + len(_STR_FIELDS)
    ints = [_unints(s, n) for s in sections[pos:pos + len(_INT_FIELDS)]]
    pos += len(_INT_FIELDS)
    datas = _unslice(sections[pos + 1], _unints(sections[pos], n))
    if len(types) != n:
        raise ValueError("column length differs from entry count")
    kinds = [_TYPES[t] for t in types]
    names, unames, gnames, links = strs
    modes, uids, gids, sizes, mtimes, majors, minors = ints
    with gc_paused():
        entries = list(map(Entry, names, kinds, modes, uids, gids, unames, gnames, sizes, mtimes,
                           links, majors, minors, repeat(_NO_XATTRS, n), datas))
    _decode_xattrs(sections[pos + 2], entries)
    return LayerTable(head["format"], head["lazy"], head["reason"], state, entries,
                      str(head.get("diff_id", "")))


def _split(raw: bytes) -> list[bytes]:
    view, out, pos = memoryview(raw), [], 0
    while pos < len(raw):
        (size,) = _LEN.unpack_from(raw, pos)
        pos += _LEN.size
        if pos + size > len(raw):
            raise ValueError("section runs past the end")
        out.append(bytes(view[pos:pos + size]))
        pos += size
    expected = 4 + len(_STR_FIELDS) + len(_INT_FIELDS) + 2
    if len(out) != expected:
        raise ValueError(f"{len(out)} sections, expected {expected}")
    return out


def _join(texts) -> bytes:
    return "\0".join(texts).encode("utf-8", "surrogateescape")


def _unjoin(blob: bytes, n: int) -> list[str]:
    texts = blob.decode("utf-8", "surrogateescape").split("\0") if n else []
    if len(texts) != n:
        raise ValueError("string column length differs from entry count")
    return texts


def _ints(values) -> bytes:
    a = array("q", values)
    if sys.byteorder != "little":
        a.byteswap()
    return a.tobytes()


def _unints(blob: bytes, n: int) -> list[int]:
    a = array("q")
    a.frombytes(blob)
    if sys.byteorder != "little":
        a.byteswap()
    if len(a) != n:
        raise ValueError("number column length differs from entry count")
    return a.tolist()


def _unslice(blob: bytes, lengths: list[int]) -> list[bytes]:
    if sum(lengths) != len(blob) or min(lengths, default=0) < 0:
        raise ValueError("data column does not add up")
    out, pos = [], 0
    for size in lengths:
        out.append(blob[pos:pos + size])
        pos += size
    return out


def _encode_xattrs(entries: list[Entry]) -> bytes:
    rows = [[i, k, v.hex()] for i, e in enumerate(entries) for k, v in e.xattrs.items()]
    return json.dumps(rows).encode()


_NO_XATTRS = MappingProxyType({})
"""Shared by the loaded entries without xattrs (nearly all): an empty dict
each is 6 MiB for 100k entries, held while an image opens."""


def _decode_xattrs(blob: bytes, entries: list[Entry]) -> None:
    for i, key, value in json.loads(blob):
        e = entries[i]
        if e.xattrs is _NO_XATTRS:
            e.xattrs = {}
        e.xattrs[key] = bytes.fromhex(value)

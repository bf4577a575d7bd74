"""An incremental parser of tar streams (ustar, GNU, PAX), from bytes to entries.

It is fed the (decompressed) stream in pieces of any size, so it runs in the
same single pass that inflates a gzip or zstd layer, and it skips content
without buffering it: only headers and the small PAX / long-name records
are ever held. ``tarfile`` is not used: it is several times slower, stops
silently at a broken header and can loop on a negative base-256 size.

Decisions where tar implementations differ:

* End of archive is two zero blocks; whatever follows them is ignored. A
  stream that ends cleanly on a header boundary (with zero or one zero block)
  is accepted, as Go's ``archive/tar`` (and so containerd) accepts it. A
  single zero block followed by a non-zero header is an error, as in Go.
* Unknown type flags are refused rather than read as regular files (POSIX
  allows either): containerd refuses them too, and guessing could turn a
  vendor extension into wrong content. ``7`` (contiguous) is a regular file.
* Link, symlink, device, directory and fifo entries have no content whatever
  their size field says (as in Go and ``tarfile``).
* PAX global headers (``g``) apply to every later entry, as POSIX and GNU tar
  say, except ``path``, ``linkpath`` and ``size``, which only make sense per
  entry.
* GNU sparse files (type ``S``, PAX ``GNU.sparse.*``) are refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from .entry import Entry, EntryType
from ..errors import LayerFormatError

BLOCK = 512
MAX_SIZE = 1 << 63
MAX_META = 1 << 20
"""Largest PAX or GNU long-name record we hold in memory (Go's limit too)."""

_ZERO = bytes(BLOCK)
_TYPES = {
    b"0": EntryType.FILE, b"\0": EntryType.FILE, b"7": EntryType.FILE,
    b"1": EntryType.HARDLINK, b"2": EntryType.SYMLINK, b"3": EntryType.CHAR,
    b"4": EntryType.BLOCK, b"5": EntryType.DIR, b"6": EntryType.FIFO,
}
_META = frozenset(b"xgLK")
_GLOBAL_IGNORED = frozenset({"path", "linkpath", "size"})


@dataclass(frozen=True, slots=True)
class Member:
    entry: Entry
    offset: int
    """Where the entry's content starts in the (decompressed) tar stream."""


class TarParser:
    """Feed bytes with ``feed``, collect members, then call ``close``.

    ``layer`` only names the layer in error messages. ``offset`` counts the
    bytes fed so far (the stream's length once all is fed); ``done`` turns
    true at the end-of-archive marker. Every byte fed is hashed on the way:
    a pass that feeds the whole stream learns the layer's diff_id for free.
    """

    def __init__(self, layer: str = "layer"):
        self.layer = layer
        self.offset = 0
        self._digest = hashlib.sha256()
        self.done = False
        self._hdr = bytearray()
        self._skip = 0
        self._meta: bytearray | None = None
        self._meta_type = 0
        self._meta_len = 0
        self._meta_pad = 0
        self._meta_at = 0
        self._pax: dict[str, bytes] = {}
        self._long: dict[int, bytes] = {}
        self._global: dict[str, bytes] = {}
        self._zero_at = -1

    def feed(self, data) -> list[Member]:
        """The members whose header ends in ``data`` (any bytes-like object)."""
        mv = memoryview(data).cast("B")
        try:
            self._digest.update(mv)
            return self._feed(mv)
        finally:
            mv.release()

    @property
    def diff_id(self) -> str:
        """The sha256 digest of every byte fed so far."""
        return "sha256:" + self._digest.hexdigest()

    def _feed(self, mv: memoryview) -> list[Member]:
        n = len(mv)
        pos = 0
        out: list[Member] = []
        while pos < n:
            if self.done:
                self.offset += n - pos
                break
            if self._skip:
                k = min(self._skip, n - pos)
                self._skip -= k
                pos += k
                self.offset += k
                continue
            if self._meta is not None:
                k = min(self._meta_len - len(self._meta), n - pos)
                self._meta += mv[pos:pos + k]
                pos += k
                self.offset += k
                if len(self._meta) == self._meta_len:
                    self._end_meta()
                continue
            if self._hdr or n - pos < BLOCK:
                k = min(BLOCK - len(self._hdr), n - pos)
                self._hdr += mv[pos:pos + k]
                pos += k
                self.offset += k
                if len(self._hdr) < BLOCK:
                    continue
                block = bytes(self._hdr)
                self._hdr.clear()
            else:
                block = bytes(mv[pos:pos + BLOCK])
                pos += BLOCK
                self.offset += BLOCK
            member = self._header(block)
            if member is not None:
                out.append(member)
        return out

    def close(self) -> None:
        """Raise if the stream ended inside a header, a record or content."""
        if self.done:
            return
        if self._hdr or self._skip or self._meta is not None or self._pax or self._long:
            raise LayerFormatError(
                f"layer {self.layer}: tar stream truncated at offset {self.offset}")

    def _fail(self, what: str, at: int, name: str = "") -> LayerFormatError:
        where = f"entry {name!r} at offset {at}" if name else f"header at offset {at}"
        return LayerFormatError(f"layer {self.layer}: {where}: {what}")

    def _header(self, block: bytes) -> Member | None:
        at = self.offset - BLOCK
        if block == _ZERO:
            if self._zero_at >= 0:
                self.done = True
            else:
                self._zero_at = at
            return None
        if self._zero_at >= 0:
            raise self._fail(f"header after a lone zero block at {self._zero_at}", at)
        fields = _FIELDS.unpack(block)
        name = _cstr(fields[0])
        if not _checksum_ok(block):
            raise self._fail("bad header checksum", at, name)
        size = self._numbers(fields, (4,), at, name)[0]
        if size < 0 or size >= MAX_SIZE:
            raise self._fail(f"impossible size {size}", at, name)
        flag = block[156]
        if flag in _META:
            self._start_meta(flag, size, at, name)
            return None
        return self._member(fields, flag, size, at, name)

    def _start_meta(self, flag: int, size: int, at: int, name: str) -> None:
        if size > MAX_META:
            raise self._fail(f"{chr(flag)!r} record of {size} bytes is too large", at, name)
        self._meta = bytearray()
        self._meta_type = flag
        self._meta_len = size
        self._meta_pad = -size % BLOCK
        self._meta_at = at
        if size == 0:
            self._end_meta()

    def _end_meta(self) -> None:
        data = bytes(self._meta)
        flag, at = self._meta_type, self._meta_at
        self._meta = None
        self._skip = self._meta_pad
        if flag in b"LK":
            self._long[flag] = data.split(b"\0", 1)[0]
            return
        records = self._pax_records(data, at)
        if flag == ord("x"):
            self._pax.update(records)
        else:
            for key, value in records.items():
                if key in _GLOBAL_IGNORED:
                    continue
                if value:
                    self._global[key] = value
                else:
                    self._global.pop(key, None)

    def _pax_records(self, data: bytes, at: int) -> dict[str, bytes]:
        records: dict[str, bytes] = {}
        pos = 0
        while pos < len(data):
            if not data[pos:].strip(b"\0"):
                break
            sp = data.find(b" ", pos)
            digits = data[pos:sp] if sp > pos else b""
            if not digits.isdigit():
                raise self._fail("malformed PAX record", at)
            end = pos + int(digits)
            if end <= sp or end > len(data) or data[end - 1] != 0x0A:
                raise self._fail("malformed PAX record", at)
            key, eq, value = data[sp + 1:end - 1].partition(b"=")
            if not eq:
                raise self._fail("PAX record without '='", at)
            key_s = key.decode("utf-8", "surrogateescape")
            if key_s.startswith("GNU.sparse."):
                raise self._fail("GNU sparse files are not supported", at)
            records[key_s] = value
            pos = end
        return records

    def _member(self, fields: tuple, flag: int, size: int, at: int, name: str) -> Member:
        if fields[9][:6] == b"ustar\x00" and fields[14][:1] != b"\0":
            name = _cstr(fields[14]) + "/" + name
        if self._long:
            if ord("L") in self._long:
                name = _text(self._long[ord("L")])
        linkname = _cstr(fields[8])
        if ord("K") in self._long:
            linkname = _text(self._long[ord("K")])
        etype = _TYPES.get(bytes((flag,)))
        if etype is None:
            what = "GNU sparse files are not supported" if flag == ord("S") else \
                f"unsupported entry type {chr(flag)!r}"
            raise self._fail(what, at, name)
        if flag == 0 and name.endswith("/"):
            etype = EntryType.DIR
        mode, uid, gid, mtime = self._numbers(fields, (1, 2, 3, 5), at, name)
        entry = Entry(name, etype, mode & 0o7777, uid, gid, _cstr(fields[10]),
                      _cstr(fields[11]), size, mtime * 1_000_000_000, linkname)
        if etype is EntryType.CHAR or etype is EntryType.BLOCK:
            entry.devmajor, entry.devminor = self._numbers(fields, (12, 13), at, name)
        if self._global or self._pax:
            self._apply_pax({**self._global, **self._pax}, entry, at)
        self._pax = {}
        self._long = {}
        if entry.size < 0 or entry.size >= MAX_SIZE:
            raise self._fail(f"impossible size {entry.size}", at, entry.name)
        if entry.uid < 0 or entry.gid < 0:
            raise self._fail("negative uid or gid", at, entry.name)
        if etype is EntryType.FILE:
            self._skip = entry.size + (-entry.size % BLOCK)
        else:
            entry.size = 0
        return Member(entry, self.offset)

    def _apply_pax(self, records: dict[str, bytes], e: Entry, at: int) -> None:
        for key, value in records.items():
            if not value:
                continue
            if key == "path":
                e.name = _text(value)
            elif key == "linkpath":
                e.linkname = _text(value)
            elif key in ("size", "uid", "gid", "SCHILY.devmajor", "SCHILY.devminor"):
                if not value.isdigit():
                    raise self._fail(f"bad PAX {key} {value!r}", at, e.name)
                setattr(e, _PAX_INT[key], int(value))
            elif key == "mtime":
                e.mtime_ns = self._pax_time(value, at, e.name)
            elif key == "uname":
                e.uname = _text(value)
            elif key == "gname":
                e.gname = _text(value)
            elif key.startswith("SCHILY.xattr."):
                e.xattrs[key[13:]] = value
            elif key.startswith("LIBARCHIVE.xattr."):
                xname = unquote_to_bytes(key[17:]).decode("utf-8", "surrogateescape")
                try:
                    e.xattrs[xname] = base64.b64decode(value + b"=" * (-len(value) % 4))
                except binascii.Error:
                    raise self._fail(f"bad base64 in PAX {key}", at, e.name) from None

    def _pax_time(self, value: bytes, at: int, name: str) -> int:
        neg = value.startswith(b"-")
        whole, _, frac = value.lstrip(b"-").partition(b".")
        if not (whole.isdigit() and (frac.isdigit() or not frac)):
            raise self._fail(f"bad PAX mtime {value!r}", at, name)
        ns = int(whole) * 1_000_000_000 + int((frac[:9] or b"0").ljust(9, b"0"))
        return -ns if neg else ns

    def _numbers(self, fields: tuple, which: tuple[int, ...], at: int, name: str) -> list[int]:
        try:
            return [int(fields[i].split(b"\0", 1)[0] or b"0", 8) for i in which]
        except ValueError:
            return [self._number(fields[i], _FIELD_NAMES[i], at, name) for i in which]

    def _number(self, field: bytes, what: str, at: int, name: str) -> int:
        """Octal (space or NUL padded), or GNU base-256 when the top bit is set."""
        if field[0] & 0x80:
            if field[0] == 0xFF:
                return int.from_bytes(field, "big", signed=True)
            return int.from_bytes(bytes((field[0] & 0x7F,)) + field[1:], "big")
        digits = field.split(b"\0", 1)[0].strip(b" ")
        if not digits:
            return 0
        if not digits.isdigit():
            raise self._fail(f"bad {what} field {field!r}", at, name)
        try:
            return int(digits, 8)
        except ValueError:
            raise self._fail(f"bad {what} field {field!r}", at, name) from None


_FIELDS = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")
_FIELD_NAMES = {1: "mode", 2: "uid", 3: "gid", 4: "size", 5: "mtime", 12: "devmajor",
                13: "devminor"}
_PAX_INT = {"size": "size", "uid": "uid", "gid": "gid",
            "SCHILY.devmajor": "devmajor", "SCHILY.devminor": "devminor"}


def _cstr(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def _checksum_ok(block: bytes) -> bool:
    """As tar does: the stored sum may be of unsigned or of signed bytes."""
    field = block[148:156]
    digits = field.split(b"\0", 1)[0].strip(b" ")
    if not digits.isdigit():
        return False
    try:
        stored = int(digits, 8)
    except ValueError:
        return False
    unsigned = sum(block) - sum(field) + 8 * 0x20
    if stored == unsigned:
        return True
    high = sum(1 for b in block[:148] if b & 0x80) + sum(1 for b in block[156:] if b & 0x80)
    return stored == unsigned - 256 * high


def parse(data, layer: str = "layer") -> list[Member]:
    """Every member of a whole tar stream held in memory."""
    parser = TarParser(layer)
    members = parser.feed(data)
    parser.close()
    return members

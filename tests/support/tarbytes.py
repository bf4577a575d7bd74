"""Hand-written tar bytes: headers a test states field by field.

Enough of ustar, GNU and PAX to write what real tools write and what they
should never write (bad checksums, sparse entries, absurd sizes), without
going through ``tarfile``, which refuses to produce most of the latter.
"""

from __future__ import annotations

BLOCK = 512
USTAR = b"ustar\x0000"
GNU = b"ustar  \x00"
V7 = b"\x00" * 8


def octal(n: int, width: int) -> bytes:
    return b"%0*o\x00" % (width - 1, n)


def base256(n: int, width: int) -> bytes:
    """GNU's binary number: top bit set, two's complement for negatives."""
    raw = bytearray(n.to_bytes(width, "big", signed=True))
    if n >= 0:
        raw[0] |= 0x80
    return bytes(raw)


def _field(value: bytes | str | int, width: int) -> bytes:
    if isinstance(value, int):
        value = octal(value, width)
    elif isinstance(value, str):
        value = value.encode()
    if len(value) > width:
        raise ValueError(f"{value!r} does not fit in {width} bytes")
    return value.ljust(width, b"\0")


def header(name: str | bytes, *, type: bytes = b"0", size: int | bytes = 0,
           mode: int | bytes = 0o644, uid: int | bytes = 0, gid: int | bytes = 0,
           mtime: int | bytes = 1_700_000_000, linkname: str | bytes = "",
           uname: str = "root", gname: str = "root", devmajor: int | bytes = 0,
           devminor: int | bytes = 0, prefix: str | bytes = "", magic: bytes = USTAR,
           checksum: int | None = None, signed_checksum: bool = False) -> bytes:
    """One 512-byte header; int fields are written in octal, bytes verbatim."""
    b = bytearray(BLOCK)
    b[0:100] = _field(name, 100)
    b[100:108] = _field(mode, 8)
    b[108:116] = _field(uid, 8)
    b[116:124] = _field(gid, 8)
    b[124:136] = _field(size, 12)
    b[136:148] = _field(mtime, 12)
    b[148:156] = b" " * 8
    b[156:157] = type
    b[157:257] = _field(linkname, 100)
    b[257:265] = magic
    b[265:297] = _field(uname, 32)
    b[297:329] = _field(gname, 32)
    b[329:337] = _field(devmajor, 8)
    b[337:345] = _field(devminor, 8)
    b[345:500] = _field(prefix, 155)
    if checksum is None:
        checksum = sum(x - 256 if signed_checksum and x >= 128 else x for x in b)
    b[148:156] = b"%06o\x00 " % checksum
    return bytes(b)


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def member(name: str | bytes, data: bytes = b"", **fields) -> bytes:
    """A header and its padded content; ``size`` defaults to ``len(data)``."""
    fields.setdefault("size", len(data))
    return header(name, **fields) + pad(data)


def pax_records(records: dict[str, bytes | str]) -> bytes:
    out = b""
    for key, value in records.items():
        value = value.encode() if isinstance(value, str) else value
        body = b" " + key.encode() + b"=" + value + b"\n"
        n = len(body) + 1
        while len(str(n).encode()) + len(body) != n:
            n = len(str(n).encode()) + len(body)
        out += str(n).encode() + body
    return out


def pax(records: dict[str, bytes | str], *, type: bytes = b"x",
        name: str = "PaxHeaders/x") -> bytes:
    return member(name, pax_records(records), type=type)


def gnu_long(kind: bytes, value: str | bytes) -> bytes:
    """A ``././@LongLink`` record: kind ``L`` (name) or ``K`` (link target)."""
    data = (value.encode() if isinstance(value, str) else value) + b"\0"
    return member("././@LongLink", data, type=kind, magic=GNU)


def end() -> bytes:
    return bytes(2 * BLOCK)

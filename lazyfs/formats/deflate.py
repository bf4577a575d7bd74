"""Raw deflate resumed at a checkpoint, with zlib-ng's Python binding.

zlib-ng inflates this machine's layers 2.5 times as fast as the system
libz behind stdlib ``zlib`` (ISA-L's binding, also measured, twice as
fast) and takes the same arguments; stdlib ``zlib`` stands in without it.
Its errors are raised as ``zlib.error``, which callers catch.

A checkpoint (zran's seek point) is a position in a deflate stream, to the
bit, and the 32 KiB of output before it that later blocks may refer back
into. ``inflate`` restarts there; ``used_window`` finds which window bytes
the output after a checkpoint really uses, so a table keeps only those.
"""

from __future__ import annotations

import array
import collections
import sys
import zlib

try:
    from zlib_ng import zlib_ng as fast
except ImportError:  # pragma: no cover - a dependency; stdlib zlib is the same API
    fast = zlib

from .spans import FEED
from .zran import WINDOW

HEAD = 256 << 10
"""Compressed bytes kept from a span's start to find which window bytes it
uses: its first 32 KiB of output (all that can refer back) fit in far less
unless the stream is made to waste bytes; then the whole window is kept."""
_LO = bytes(range(256)) * (WINDOW // 256)
_HI = bytes(j >> 8 for j in range(WINDOW))
_FLIP = _LO.translate(bytes(b ^ 0xA5 for b in range(256)))
_FROM_WINDOW = bytes.maketrans(b"\xa5", b"\xff")


def used_window(window: bytes, raw: bytes, bits: int, need: int) -> bytes:
    """``window`` with every byte that the first ``need`` bytes of output
    from ``raw`` do not refer to set to zero, so it compresses to little
    (a full 32 KiB window of text costs ~12 kB, the bytes in use ~2 kB).

    Inflating with windows of position markers (low byte, high byte, low
    byte flipped) tells, for each output byte, whether it came from the
    window and from which position; a literal is the same in every run.
    """
    if not window or need <= 0:
        return window
    runs = _marked_runs(window, raw, bits, need)
    if runs is None:
        return window
    low, high, flip = runs
    mask = _xor(low, flip).translate(_FROM_WINDOW)
    pairs = bytearray(2 * need)
    first = 0 if sys.byteorder == "little" else 1
    pairs[first::2], pairs[1 - first::2] = _and(low, mask), _and(high, mask)
    used = list(set(array.array("H", pairs)))
    keep = bytearray(len(window))
    collections.deque(map(keep.__setitem__, used, map(window.__getitem__, used)), maxlen=0)
    return bytes(keep)


def _marked_runs(window: bytes, raw: bytes, bits: int, need: int) -> list[bytes] | None:
    """The first ``need`` output bytes inflated with each marker window, or
    None if ``raw`` does not hold that many. ``inflate`` takes all the input
    it is given, and a few hundred bytes of deflate can hold megabytes
    (zeros), so the input grows from a little until it is enough."""
    n = len(window)
    cut = 64
    while cut < len(raw):
        cut = min(cut * 4, len(raw))
        try:
            runs = [inflate(raw[:cut], bits, m[:n], need) for m in (_LO, _HI, _FLIP)]
        except zlib.error:
            continue
        if min(map(len, runs)) >= need:
            return runs
    return None


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(len(a), "little")


def _and(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "little") & int.from_bytes(b, "little")).to_bytes(len(a), "little")


def inflate(raw: bytes, bits: int, window: bytes, want: int) -> bytes:
    """At least ``want`` bytes (if there are) of the deflate data in ``raw``
    whose first bit is the ``bits``-th highest of its first byte (0: the
    whole byte), continuing across gzip member boundaries.

    stdlib zlib has no ``inflatePrime``, so a checkpoint inside a byte is
    resumed by replacing the byte's low bits with a made-up prefix of
    complete deflate blocks that ends exactly there (see ``_prime``). The
    stream keeps its byte alignment, which stored blocks need. A checkpoint
    without a window (the library leaves it out when nothing refers back)
    gets a dummy one-byte window for the prefix to emit.
    """
    try:
        return _inflate(raw, bits, window, want)
    except fast.error as e:
        raise zlib.error(str(e)) from None


def _inflate(raw: bytes, bits: int, window: bytes, want: int) -> bytes:
    pos = 0
    skip = 0
    head = b""
    if bits:
        window = window or b"\0"
        head = _prime(window[-1], 8 - bits, raw[0])
        window = window[:-1]
        skip = 1
        pos = 1
    elif not window and raw[:2] == b"\x1f\x8b":
        pos = skip_header(raw, 0)
    d = fast.decompressobj(-15, zdict=window) if window else fast.decompressobj(-15)
    out = [d.decompress(head)] if head else []
    got = sum(map(len, out)) - skip
    view = memoryview(raw)
    while got < want:
        if d.eof:
            pos = _next_member(raw, pos - len(d.unused_data))
            if pos is None:
                break
            d = fast.decompressobj(-15)
            continue
        if pos >= len(raw):
            break
        chunk = view[pos:pos + FEED]
        pos += len(chunk)
        data = d.decompress(chunk)
        out.append(data)
        got += len(data)
    result = b"".join(out)
    return result[skip:skip + want]


def _next_member(raw: bytes, end: int) -> int | None:
    """Where the next member's deflate data starts after a member that ended
    at ``end``, or None at the end of ``raw``."""
    if raw[end + 8:end + 11] == b"\x1f\x8b\x08":
        return skip_header(raw, end + 8)
    return None


_CL_ORDER = (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15)
_CL_LENGTHS = {18: 1, 0: 2, 1: 2}
_CL_CODES = {18: (0b0, 1), 0: (0b10, 2), 1: (0b11, 2)}


class _Bits:
    def __init__(self):
        self.value = 0
        self.n = 0

    def put(self, value: int, n: int) -> None:
        self.value |= value << self.n
        self.n += n

    def code(self, code: int, n: int) -> None:
        """Huffman codes go most significant bit first."""
        for i in range(n - 1, -1, -1):
            self.put(code >> i & 1, 1)


def _prime(last: int, k: int, first: int) -> bytes:
    """Bytes of complete non-final deflate blocks whose bit length is ``k``
    modulo 8, that output the one byte ``last``, followed by the top ``8 - k``
    bits of ``first``: inflating them (with the window minus its last byte as
    dictionary) leaves the decoder in the state of the checkpoint, one byte
    of known output ahead.

    An empty fixed block is 10 bits; the one dynamic block (a literal/length
    code of just ``last`` and end-of-block, no distance code) can be made 3
    bits longer by one more code-length-code entry, so every residue mod 8
    is reachable.
    """
    for extra_cl in (0, 1):
        for empties in range(4):
            bits = _Bits()
            for _ in range(empties):
                bits.put(0, 1)
                bits.put(1, 2)
                bits.put(0, 7)
            _dynamic_literal_block(bits, last, 18 + extra_cl)
            if bits.n % 8 == k:
                q = bits.n // 8
                prefix = bits.value.to_bytes(q + 1, "little")
                return prefix[:q] + bytes([(first & (0xFF << k) & 0xFF) | prefix[q]])
    raise AssertionError("unreachable: every residue has a prefix")


def _dynamic_literal_block(bits: _Bits, last: int, ncl: int) -> None:
    bits.put(0, 1)
    bits.put(2, 2)
    bits.put(0, 5)
    bits.put(0, 5)
    bits.put(ncl - 4, 4)
    for sym in _CL_ORDER[:ncl]:
        bits.put(_CL_LENGTHS.get(sym, 0), 3)
    for run, one in ((last, True), (255 - last, True), (1, False)):
        while run >= 11:
            r = min(run, 138)
            bits.code(*_CL_CODES[18])
            bits.put(r - 11, 7)
            run -= r
        for _ in range(run):
            bits.code(*_CL_CODES[0])
        if one:
            bits.code(*_CL_CODES[1])
    bits.code(0, 1)
    bits.code(1, 1)


def skip_header(raw: bytes, pos: int) -> int:
    """The offset just past the gzip member header at ``pos``."""
    if len(raw) < pos + 10 or raw[pos + 2] != 8:
        raise zlib.error("bad gzip member header")
    flags = raw[pos + 3]
    pos += 10
    if flags & 4:
        pos += 2 + int.from_bytes(raw[pos:pos + 2], "little")
    for bit in (8, 16):
        if flags & bit:
            end = raw.find(b"\0", pos)
            if end < 0:
                raise zlib.error("bad gzip member header")
            pos = end + 1
    if flags & 2:
        pos += 2
    return pos

"""One piece's file in the chunk cache: a header, a CRC-32 per block, the bytes.

A warm read checks the bytes it serves when it serves them: it reads the
blocks holding its range with one ``pread`` and compares their CRC-32s with
the table in the header. A FUSE read of 1 MiB thus costs a copy from the page
cache and a few microseconds of checking (zlib-ng's CRC-32 runs at tens of
GB/s), cheap enough for the event loop, where a whole-piece check had to load
all 4 MiB of a piece into memory, in a worker thread, before its first byte
could go out, and then keep it there for the reads after.

Each block's CRC is seeded with the piece's tag (its name in the cache) and
the block's number, so a file under another piece's name, or a block moved
inside one, fails like a flipped bit. A file whose size disagrees with its
header is refused when opened; a block that fails its check makes the whole
file suspect (``Damaged``): the caller deletes it and fetches the piece.

An open ``PieceFile`` keeps its inode, so a file that another process evicts
or replaces goes on serving the bytes checked against its own table; its
space comes back when the last reference is dropped and the file closes.
"""

from __future__ import annotations

import os
import struct
import zlib

try:
    from zlib_ng import zlib_ng as _fast
    crc32 = _fast.crc32
except ImportError:  # pragma: no cover - zlib-ng is a dependency; the same CRC, slower
    crc32 = zlib.crc32

MAGIC = b"LZC3"
BLOCK = 64 << 10
"""Bytes per checked block: a 4 KiB read reads and checks at most 128 KiB."""
_HEAD = struct.Struct("<4sQ")


class Damaged(Exception):
    """A piece file that is not what its header says."""


def header(tag: str, data) -> bytes:
    """The header and CRC table that precede ``data`` on disk."""
    seed = crc32(tag.encode())
    view = memoryview(data)
    sums = [crc32(view[i:i + BLOCK], crc32(_number(n), seed))
            for n, i in enumerate(range(0, len(view), BLOCK))]
    return _HEAD.pack(MAGIC, len(view)) + struct.pack(f"<{len(sums)}I", *sums)


def header_size(length: int) -> int:
    return _HEAD.size + 4 * _blocks(length)


class PieceFile:
    """An open, size-checked piece file; every read is checked block by block."""

    __slots__ = ("_fd", "length", "mtime", "damaged", "_sums", "_seed", "_base")

    def __init__(self, fd: int, tag: str, length: int, sums: tuple[int, ...],
                 mtime: float = 0.0):
        self._fd = fd
        self.length = length
        self.mtime = mtime
        self.damaged = False
        """Set once a read found the file not as its header says."""
        self._sums = sums
        self._seed = crc32(tag.encode())
        self._base = header_size(length)

    @classmethod
    def open(cls, path: str | os.PathLike, tag: str) -> PieceFile | None:
        """The file at ``path``; ``None`` if there is none; ``Damaged`` if
        its header or size is wrong."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            return cls.adopt(fd, tag)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def adopt(cls, fd: int, tag: str) -> PieceFile:
        """A ``PieceFile`` over the open file ``fd``, which it closes from then on."""
        head = os.pread(fd, _HEAD.size, 0)
        if len(head) < _HEAD.size:
            raise Damaged("short header")
        magic, length = _HEAD.unpack(head)
        if magic != MAGIC:
            raise Damaged("not a piece file of this version")
        n = _blocks(length)
        st = os.fstat(fd)
        if st.st_size != _HEAD.size + 4 * n + length:
            raise Damaged("size differs from the header's")
        table = os.pread(fd, 4 * n, _HEAD.size)
        if len(table) != 4 * n:
            raise Damaged("short CRC table")
        return cls(fd, tag, length, struct.unpack(f"<{n}I", table), st.st_mtime)

    def __len__(self) -> int:
        return self.length

    def read(self, lo: int, hi: int) -> bytes:
        """Bytes ``[lo, hi)`` of the piece, each block checked; ``Damaged``
        if one fails."""
        lo, hi = max(lo, 0), min(hi, self.length)
        if hi <= lo:
            return b""
        first, last = lo // BLOCK, (hi - 1) // BLOCK + 1
        start = first * BLOCK
        end = min(last * BLOCK, self.length)
        buf = os.pread(self._fd, end - start, self._base + start)
        if len(buf) != end - start:
            self.damaged = True
            raise Damaged("file shorter than when it was opened")
        view = memoryview(buf)
        seed, sums = self._seed, self._sums
        for n in range(first, last):
            at = (n - first) * BLOCK
            if crc32(view[at:at + BLOCK], crc32(_number(n), seed)) != sums[n]:
                self.damaged = True
                raise Damaged(f"block {n} fails its CRC")
        if lo == start and hi == end:
            return buf
        return buf[lo - start:hi - start]

    def __getitem__(self, s: slice) -> bytes:
        """``f[lo:hi]`` is ``read(lo, hi)``: code that slices decoded bytes
        slices an open file alike."""
        return self.read(s.start or 0, self.length if s.stop is None else s.stop)

    def read_all(self) -> bytes:
        return self.read(0, self.length)

    def advise(self) -> None:
        """Ask the kernel to read the whole file into the page cache now, in
        the background: for pieces a sequential reader will want next."""
        try:
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass

    def close(self) -> None:
        """Close the file now (else it closes when the last reference goes)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        self.close()


def _blocks(length: int) -> int:
    return -(-length // BLOCK)


def _number(n: int) -> bytes:
    return n.to_bytes(4, "little")

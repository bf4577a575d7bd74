"""Streaming zran: inflate a gzip blob fed in order, recording seek points on the way.

rapidgzip exports its checkpoints only once the whole blob is inflated, and
stdlib zlib exposes neither ``Z_BLOCK`` nor ``inflateGetDictionary``, so a
layer that is still downloading is inflated here through the system libz
itself, as zlib's ``examples/zran.c`` does: ``inflate`` stops at every
deflate block boundary, and about every ``span`` output bytes the position
there (byte and bit) and the 32 KiB window are kept as a ``Point``.

Concatenated members are one stream (``cat a.gz b.gz``). After a member,
only another whole member may follow: trailing zeros or garbage are refused,
as Go's ``compress/gzip`` (and so containerd) refuses them.
"""

from __future__ import annotations

import ctypes
import weakref
from collections.abc import Iterator
from ctypes import POINTER, c_char_p, c_int, c_uint, c_ulong, c_void_p
from dataclasses import dataclass

from ..errors import LayerFormatError

OUT = 1 << 20
"""Output is gathered in a buffer of this size and handed on whole, so the
per-block stops of ``Z_BLOCK`` cost one ctypes call each and nothing more."""
WINDOW = 32768
MAGIC = b"\x1f\x8b"

_Z_OK, _Z_STREAM_END, _Z_BUF_ERROR = 0, 1, -5
_Z_BLOCK = 5
_GZIP_ONLY = 31
_AT_BOUNDARY, _IN_LAST = 128, 64
_SAY = {
    "incorrect data check": "CRC32 mismatch",
    "incorrect length check": "size mismatch in the member trailer",
    "incorrect header check": "no gzip member header (trailing data?)",
}


@dataclass(frozen=True, slots=True)
class Point:
    cmp: int
    """First whole compressed byte after the checkpoint."""
    bits: int
    """How many high bits of byte ``cmp - 1`` belong to the stream after it."""
    out: int
    window: bytes


class _ZStream(ctypes.Structure):
    _fields_ = [
        ("next_in", c_void_p), ("avail_in", c_uint), ("total_in", c_ulong),
        ("next_out", c_void_p), ("avail_out", c_uint), ("total_out", c_ulong),
        ("msg", c_char_p), ("state", c_void_p),
        ("zalloc", c_void_p), ("zfree", c_void_p), ("opaque", c_void_p),
        ("data_type", c_int), ("adler", c_ulong), ("reserved", c_ulong),
    ]


def _load() -> ctypes.CDLL:
    lib = ctypes.CDLL("libz.so.1")
    stream = POINTER(_ZStream)
    lib.zlibVersion.restype = c_char_p
    lib.inflateInit2_.argtypes = [stream, c_int, c_char_p, c_int]
    lib.inflate.argtypes = [stream, c_int]
    lib.inflateReset.argtypes = [stream]
    lib.inflateEnd.argtypes = [stream]
    lib.inflateGetDictionary.argtypes = [stream, c_void_p, POINTER(c_uint)]
    return lib


_lib = _load()
_VERSION = _lib.zlibVersion()


class Inflater:
    """Feed the blob in order with ``feed`` (consume each generator whole),
    then call ``finish``. ``points`` grows as checkpoints are found; the
    first is at compressed 0, output 0."""

    def __init__(self, layer: str, span: int):
        self.layer = layer
        self.span = span
        self.points: list[Point] = [Point(0, 0, 0, b"")]
        self.total_in = 0
        self.total_out = 0
        self._last = 0
        self._between = False
        self._strm = _ZStream()
        self._ref = ctypes.byref(self._strm)
        self._out = ctypes.create_string_buffer(OUT)
        self._dict = ctypes.create_string_buffer(WINDOW)
        self._dict_len = c_uint()
        if _lib.inflateInit2_(self._ref, _GZIP_ONLY, _VERSION, ctypes.sizeof(_ZStream)) != _Z_OK:
            raise LayerFormatError(f"layer {layer}: cannot set up an inflater")
        self._end = weakref.finalize(self, _lib.inflateEnd, self._ref)

    def close(self) -> None:
        """Free libz's state (also done when the inflater is collected)."""
        self._end()

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The output of ``data``, in pieces of at most ``OUT`` bytes."""
        if not self._end.alive:
            raise LayerFormatError(f"layer {self.layer}: gzip stream fed after its end")
        data = data if isinstance(data, bytes) else bytes(data)
        if not data:
            return
        try:
            self._check_magic(data)
            yield from self._inflate(data)
        except BaseException:
            self.close()
            raise

    def finish(self) -> None:
        """Raise unless the data fed so far ends exactly after a gzip member."""
        try:
            if self.total_in < len(MAGIC):
                raise LayerFormatError(f"layer {self.layer}: blob is not gzip (bad magic)")
            if not self._between:
                raise self._broken(f"data ends inside a gzip member at offset {self.total_in}")
        finally:
            self.close()

    def _check_magic(self, data: bytes) -> None:
        if self.total_in < len(MAGIC):
            head = data[:len(MAGIC) - self.total_in]
            if head != MAGIC[self.total_in:self.total_in + len(head)]:
                raise LayerFormatError(f"layer {self.layer}: blob is not gzip (bad magic)")

    def _inflate(self, data: bytes) -> Iterator[bytes]:
        s = self._strm
        out = ctypes.addressof(self._out)
        s.next_in = ctypes.cast(c_char_p(data), c_void_p)
        s.avail_in = len(data)
        s.next_out, s.avail_out = out, OUT
        while True:
            if self._between:
                if not s.avail_in:
                    break
                _lib.inflateReset(self._ref)
                self._between = False
            have, room = s.avail_in, s.avail_out
            ret = _lib.inflate(self._ref, _Z_BLOCK)
            self.total_in += have - s.avail_in
            self.total_out += room - s.avail_out
            if ret == _Z_STREAM_END:
                self._between = True
            elif ret != _Z_OK and ret != _Z_BUF_ERROR:
                msg = (s.msg or b"error %d" % ret).decode(errors="replace")
                raise self._broken(f"{_SAY.get(msg, msg)} near offset {self.total_in}")
            elif (s.data_type & (_AT_BOUNDARY | _IN_LAST) == _AT_BOUNDARY
                  and self.total_out - self._last >= self.span):
                self._point()
            if not s.avail_out:
                yield ctypes.string_at(out, OUT)
                s.next_out, s.avail_out = out, OUT
            elif not s.avail_in:
                break
        s.next_in, s.avail_in = None, 0
        if s.avail_out < OUT:
            yield ctypes.string_at(out, OUT - s.avail_out)

    def _point(self) -> None:
        self._dict_len.value = WINDOW
        _lib.inflateGetDictionary(self._ref, self._dict, ctypes.byref(self._dict_len))
        window = ctypes.string_at(self._dict, self._dict_len.value)
        self.points.append(Point(self.total_in, self._strm.data_type & 7, self.total_out, window))
        self._last = self.total_out

    def _broken(self, what: str) -> LayerFormatError:
        return LayerFormatError(f"layer {self.layer}: broken gzip stream: {what}")

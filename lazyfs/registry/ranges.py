"""Byte ranges over HTTP, as pure functions: which spans to ask for, how to
ask (the ``Range`` header) and how to read the answer (``Content-Range``,
``multipart/byteranges``).

Spans are half-open ``(start, end)`` pairs throughout; HTTP's inclusive
ends appear only in the header text made and parsed here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from ..errors import RegistryError

Span = tuple[int, int]

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ContentRange:
    start: int
    end: int
    """Exclusive."""
    total: int | None
    """``None`` when the server sent ``*``."""


@dataclass(frozen=True, slots=True)
class Part:
    """One part of a ``multipart/byteranges`` body."""

    start: int
    end: int
    data: bytes


def coalesce(spans: Iterable[Span], gap: int = 0) -> list[Span]:
    """Overlapping spans, adjacent ones and those at most ``gap`` apart merged:
    a few wasted bytes cost less than another round trip."""
    out: list[list[int]] = []
    for start, end in sorted(spans):
        if start >= end:
            continue
        if out and start <= out[-1][1] + gap:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(s, e) for s, e in out]


def batches(spans: Sequence[Span], limit: int) -> list[list[Span]]:
    """Spans cut into runs of at most ``limit``: servers cap the ranges per request."""
    return [list(spans[i:i + limit]) for i in range(0, len(spans), limit)]


def range_header(spans: Sequence[Span]) -> str:
    if not spans or any(not 0 <= s < e for s, e in spans):
        raise ValueError(f"not a valid list of ranges: {spans!r}")
    return "bytes=" + ",".join(f"{s}-{e - 1}" for s, e in spans)


def parse_content_range(value: str | None) -> ContentRange | None:
    """``bytes a-b/total``; ``None`` for anything else (absent, unsatisfied, malformed)."""
    m = _CONTENT_RANGE.match(value or "")
    if not m:
        return None
    start, last = int(m[1]), int(m[2])
    total = None if m[3] == "*" else int(m[3])
    if last < start or (total is not None and last >= total):
        return None
    return ContentRange(start, last + 1, total)


def boundary_of(content_type: str | None) -> str | None:
    """The boundary of a ``multipart/byteranges`` content type, or ``None``."""
    kind, _, params = (content_type or "").partition(";")
    if kind.strip().lower() != "multipart/byteranges":
        return None
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "boundary":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value or None
    return None


def parse_multipart(body: bytes, boundary: str, what: str = "answer") -> list[Part]:
    """The parts of a ``multipart/byteranges`` body (RFC 9110 §14.6).

    Each part's length comes from its ``Content-Range``, not from searching
    for the boundary, so part data that happens to contain the boundary is
    read correctly.
    """
    delim = b"--" + boundary.encode("latin-1")
    pos = body.find(delim)
    if pos < 0:
        raise RegistryError(f"{what}: multipart body without its boundary")
    parts = []
    while True:
        pos += len(delim)
        if body[pos:pos + 2] == b"--":
            return parts
        head_end = body.find(b"\r\n\r\n", pos)
        if head_end < 0:
            raise RegistryError(f"{what}: multipart part without a header end")
        headers = _part_headers(body[pos:head_end])
        cr = parse_content_range(headers.get("content-range"))
        if cr is None:
            raise RegistryError(f"{what}: multipart part with Content-Range "
                                f"{headers.get('content-range')!r}")
        start = head_end + 4
        data = body[start:start + cr.end - cr.start]
        if len(data) != cr.end - cr.start:
            raise RegistryError(f"{what}: multipart part {cr.start}-{cr.end - 1} is truncated")
        parts.append(Part(cr.start, cr.end, data))
        pos = body.find(delim, start + len(data))
        if pos < 0:
            raise RegistryError(f"{what}: multipart body ends without its closing boundary")


def _part_headers(raw: bytes) -> dict[str, str]:
    headers = {}
    for line in raw.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


def cut(spans: Sequence[Span], parts: Sequence[Part], what: str = "answer") -> list[bytes]:
    """The bytes of each asked-for span, taken from the parts that came back.

    A server may merge or reorder ranges; every span must lie wholly inside
    one part, or the answer is refused.
    """
    out = []
    for start, end in spans:
        part = next((p for p in parts if p.start <= start and end <= p.end), None)
        if part is None:
            raise RegistryError(f"{what}: no part covers the asked-for bytes {start}-{end - 1}")
        out.append(part.data[start - part.start:end - part.start])
    return out

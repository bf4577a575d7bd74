"""Range requests answered the way Go's ``http.ServeContent`` answers them,
which is what distribution serves blobs with (and S3 much like it).

One satisfiable range: 206 with ``Content-Range``. Several: 206
``multipart/byteranges``, unless together they ask for more bytes than the
blob has, which Go takes for abuse and answers with the whole blob (200).
None satisfiable, or a header it cannot parse: 416 (with ``bytes */size``
when nothing overlaps). Distribution declares the blob's length before Go
writes the 416's short message, so that answer's body is cut short: the
caller (``MemoryRegistry``) reproduces this.

One difference is deliberate: ``bytes=-0`` is unsatisfiable here, as RFC 9110
says, where the Go of distribution 2.8 answers an empty 206.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

INVALID = "invalid range"
NO_OVERLAP = "invalid range: failed to overlap"
Span = tuple[int, int]
"""``[start, end)``."""


class Unsatisfiable(Exception):
    """The Range header asks for nothing the blob has, or cannot be parsed."""


def parse_range(header: str, size: int) -> list[Span]:
    """The spans of a ``Range`` header against a blob of ``size`` bytes
    (empty: no header); ranges starting past the end are dropped."""
    if not header:
        return []
    if not header.startswith("bytes="):
        raise Unsatisfiable(INVALID)
    spans: list[Span] = []
    skipped = False
    for item in header[len("bytes="):].split(","):
        item = item.strip()
        if not item:
            continue
        first, sep, last = (p.strip() for p in item.partition("-"))
        if not sep:
            raise Unsatisfiable(INVALID)
        if not first:
            if not last.isdigit():
                raise Unsatisfiable(INVALID)
            n = min(int(last), size)
            if n == 0:
                skipped = True
                continue
            spans.append((size - n, size))
            continue
        if not first.isdigit() or (last and not last.isdigit()):
            raise Unsatisfiable(INVALID)
        start = int(first)
        if start >= size:
            skipped = True
            continue
        end = size if not last else int(last) + 1
        if end <= start:
            raise Unsatisfiable(INVALID)
        spans.append((start, min(end, size)))
    if skipped and not spans:
        raise Unsatisfiable(NO_OVERLAP)
    return spans


@dataclass
class Ranged:
    status: int
    headers: dict[str, str]
    body: bytes


def serve_ranges(data: bytes, header: str, content_type: str) -> Ranged:
    """The answer to a GET of ``data`` carrying the Range ``header``."""
    size = len(data)
    try:
        spans = parse_range(header, size)
    except Unsatisfiable as e:
        headers = {"content-type": "text/plain; charset=utf-8"}
        if str(e) == NO_OVERLAP:
            headers["content-range"] = f"bytes */{size}"
        return Ranged(416, headers, f"{e}\n".encode())
    if sum(e - s for s, e in spans) > size:
        spans = []
    if not spans:
        return Ranged(200, {"content-type": content_type}, data)
    if len(spans) == 1:
        start, end = spans[0]
        return Ranged(206, {"content-type": content_type,
                            "content-range": f"bytes {start}-{end - 1}/{size}"},
                      data[start:end])
    boundary = secrets.token_hex(30)
    out = []
    for start, end in spans:
        out.append(f"--{boundary}\r\nContent-Range: bytes {start}-{end - 1}/{size}\r\n"
                   f"Content-Type: {content_type}\r\n\r\n".encode() + data[start:end] + b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return Ranged(206, {"content-type": f"multipart/byteranges; boundary={boundary}"},
                  b"".join(out))

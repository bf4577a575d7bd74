"""Count what the registry served, from its own access log.

The registry writes one combined-log line per request::

    127.0.0.1 - - [date] "GET /v2/r/blobs/sha256:... HTTP/1.1" 206 4096 "" "lazyfs/0.1.0"

so a cursor on that file (its size before a phase) tells exactly the requests
and body bytes of the phase, whoever the client was.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_LINE = re.compile(r'^\S+ \S+ \S+ \[[^]]*\] "(?P<method>[A-Z]+) (?P<uri>\S+) [^"]*" '
                   r'(?P<status>\d{3}) (?P<bytes>\d+|-) "[^"]*" "(?P<agent>[^"]*)"')


@dataclass(frozen=True)
class Request:
    method: str
    uri: str
    status: int
    bytes: int
    agent: str

    @property
    def is_blob(self) -> bool:
        return "/blobs/" in self.uri and "/uploads/" not in self.uri


@dataclass(frozen=True)
class Served:
    requests: int
    blob_requests: int
    bytes: int
    blob_bytes: int

    def as_dict(self) -> dict:
        return {"requests": self.requests, "blob_requests": self.blob_requests,
                "bytes": self.bytes, "blob_bytes": self.blob_bytes}


def parse(text: str) -> list[Request]:
    out = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            n = 0 if m["bytes"] == "-" else int(m["bytes"])
            out.append(Request(m["method"], m["uri"], int(m["status"]), n, m["agent"]))
    return out


def summarise(requests: list[Request]) -> Served:
    reads = [r for r in requests if r.method in ("GET", "HEAD")]
    blobs = [r for r in reads if r.is_blob]
    return Served(len(reads), len(blobs), sum(r.bytes for r in reads),
                  sum(r.bytes for r in blobs if r.method == "GET"))


class Cursor:
    """``mark()`` before a phase, ``served()`` after it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size

    def requests(self) -> list[Request]:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            text = f.read().decode(errors="replace")
        return parse(text)

    def served(self, layers: frozenset[str] | None = None) -> Served:
        """What was served since ``mark()``; with ``layers`` (digests) the
        blob bytes count only those blobs, leaving out config and manifests."""
        reqs = self.requests()
        if layers is not None:
            reqs = [r for r in reqs if not r.is_blob or r.uri.rpartition("/")[2] in layers]
        return summarise(reqs)

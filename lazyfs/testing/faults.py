"""What the memory registry records of each request, and the faults it can be told to commit.

A fault is armed with the requests it matches (method, kind of request, host,
a digest in the path, from the n-th match on, how many times) and one action.
Actions that replace the answer (``status``, ``stall`` and ``drop`` before the
headers) are taken when the request arrives; actions that spoil a body
(``truncate``, ``flip``, ``ignore_range``, ``stall`` or ``drop`` part-way) are
taken only by an answer that carries content, so a redirect or a 401 on the
way does not use them up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import trio

KINDS = ("ping", "token", "manifest", "blob", "range", "multirange", "upload", "tags",
         "referrers", "catalog", "other")
ACTIONS = ("stall", "drop", "truncate", "flip", "ignore_range", "status", "drip")
BODY_ACTIONS = frozenset({"truncate", "flip", "ignore_range", "drip"})
CHUNK = 64 << 10
"""Bytes per piece of a streamed answer, so a fault can strike between pieces."""


@dataclass
class Recorded:
    """One request as the registry saw it, and what it answered."""

    method: str
    url: httpx.URL
    headers: httpx.Headers
    kind: str
    status: int = 0
    sent: int = 0
    """Body bytes the client read."""
    fault: str = ""

    @property
    def host(self) -> str:
        """``host`` or ``host:port`` as the registry is named in references."""
        port = self.url.port
        return f"{self.url.host}:{port}" if port else self.url.host

    @property
    def path(self) -> str:
        return self.url.path

    @property
    def range(self) -> str:
        return self.headers.get("range", "")


@dataclass
class Fault:
    """One misbehaviour and the requests it applies to."""

    action: str
    kind: str | tuple[str, ...] | None = None
    """A kind from ``KINDS`` (or several); ``None``: any."""
    method: str | None = None
    host: str | None = None
    digest: str = ""
    """Only requests whose path holds this (a blob or manifest digest)."""
    nth: int = 1
    """The first matching request that gets it (1: the very first)."""
    times: int | None = 1
    """How many matching requests get it, from the ``nth``; ``None``: all."""
    seconds: float = 0.0
    """For ``stall``: how long, in trio time (so ``trio.fail_after`` interrupts it);
    for ``drip``: the pause before each byte of the body."""
    at: float | None = None
    """For ``stall``/``drop``: the share of the body sent first; ``None``: before the headers."""
    error: type[httpx.TransportError] = httpx.ReadError
    """For ``drop``: what the client's read raises (``httpx.RemoteProtocolError``, ...)."""
    status: int = 503
    retry_after: str | None = None
    matched: int = field(default=0, init=False)
    fired: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown fault action {self.action!r}")
        kinds = (self.kind,) if isinstance(self.kind, str) else self.kind or ()
        for k in kinds:
            if k not in KINDS:
                raise ValueError(f"unknown request kind {k!r}")

    @property
    def on_body(self) -> bool:
        return self.action in BODY_ACTIONS or (self.action in ("stall", "drop")
                                               and self.at is not None)

    @property
    def spent(self) -> bool:
        return self.times is not None and self.fired >= self.times

    def matches(self, rec: Recorded) -> bool:
        kinds = (self.kind,) if isinstance(self.kind, str) else self.kind
        return ((kinds is None or rec.kind in kinds)
                and (self.method is None or self.method == rec.method)
                and (self.host is None or self.host == rec.host)
                and self.digest in rec.path)


class Faults:
    """The armed faults, taken in the order they were armed."""

    def __init__(self) -> None:
        self.armed: list[Fault] = []

    def take(self, rec: Recorded, on_body: bool) -> Fault | None:
        for fault in self.armed:
            if fault.on_body != on_body or fault.spent or not fault.matches(rec):
                continue
            fault.matched += 1
            if fault.matched < fault.nth:
                continue
            fault.fired += 1
            rec.fault = fault.action
            return fault
        return None


async def before_headers(fault: Fault | None, request: httpx.Request) -> httpx.Response | None:
    """Apply a fault that strikes before any answer; an answer replaces the real one."""
    if fault is None:
        return None
    if fault.action == "stall":
        await trio.sleep(fault.seconds)
        return None
    if fault.action == "drop":
        raise fault.error("connection dropped (injected)", request=request)
    headers = {"content-type": "application/json"}
    if fault.retry_after is not None:
        headers["retry-after"] = fault.retry_after
    body = b'{"errors":[{"code":"UNAVAILABLE","message":"injected fault"}]}'
    return httpx.Response(fault.status, headers=headers, content=body)


def spoil(fault: Fault | None, body: bytes) -> bytes:
    """The body a ``truncate`` or ``flip`` fault makes of ``body``."""
    if fault is None or not body:
        return body
    if fault.action == "truncate":
        return body[:len(body) // 2]
    if fault.action == "flip":
        out = bytearray(body)
        out[len(out) // 2] ^= 0xFF
        return bytes(out)
    return body


class Body(httpx.AsyncByteStream):
    """A body handed over in pieces, counting what the client reads; a
    ``stall`` or ``drop`` fault with ``at`` strikes part-way."""

    def __init__(self, data: bytes, rec: Recorded, request: httpx.Request,
                 fault: Fault | None = None, declared: int | None = None) -> None:
        self._data, self._rec, self._request, self._fault = data, rec, request, fault
        self._declared = declared
        """A ``Content-Length`` longer than ``data``: the connection closes
        early, which h11 reports as ``RemoteProtocolError``."""
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._fault is not None and self._fault.action == "drip":
            for i in range(len(self._data)):
                await trio.sleep(self._fault.seconds)
                self._rec.sent += 1
                yield self._data[i:i + 1]
            return
        fault = self._fault if self._fault and self._fault.action in ("stall", "drop") else None
        cut = int(len(self._data) * fault.at) if fault else -1
        pos = 0
        while pos < len(self._data) or pos == cut:
            if self._closed:
                return
            if pos == cut:
                if fault.action == "drop":
                    raise fault.error("connection dropped mid-body (injected)",
                                      request=self._request)
                await trio.sleep(fault.seconds)
                cut = -1
            end = min(len(self._data), pos + CHUNK)
            if 0 <= cut < end:
                end = cut
            if end > pos:
                piece = self._data[pos:end]
                self._rec.sent += len(piece)
                yield piece
            pos = end
        if self._declared is not None and self._declared > len(self._data):
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body "
                f"(received {len(self._data)} bytes, expected {self._declared})",
                request=self._request)

    async def aclose(self) -> None:
        # A closed connection sends nothing more.
        self._closed = True

"""A registry proxy on loopback that misbehaves on request, for fault tests.

It runs in the test's trio loop in front of a real registry and passes every
request on, unless a ``Fault`` matching the request's kind is armed: then it
stalls, resets the connection mid-body, truncates or corrupts the body,
answers a Range request with the whole blob (200), lies in Content-Range, or
answers 5xx/429 with Retry-After. Faults can be armed and cleared while the
client runs; every request is recorded with its kind and body bytes sent, so
tests can count what a client fetched.
"""

from __future__ import annotations

import socket
import struct
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import AsyncIterator

import h11
import httpx
import trio

from tests.support.servers import Request, serve_h11

KINDS = ("ping", "manifest", "blob", "range", "multirange", "other")
ACTIONS = ("stall", "reset", "truncate", "ignore_range", "wrong_range", "flip", "status",
           "hold")
_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length",
        "content-encoding"}


@dataclass
class Fault:
    kinds: tuple[str, ...]
    action: str
    times: int | None = 1
    """How many matching requests get it; ``None``: until cleared."""
    seconds: float = 0.0
    """For ``stall``: how long."""
    at: float | None = None
    """For ``stall``/``reset``: the share of the body sent first (``None``: before the headers)."""
    status: int = 503
    retry_after: str | None = None
    path: str = ""
    """Only requests whose path holds this (e.g. a blob digest) get it."""
    gate: trio.Event | None = None
    """For ``hold``: the request is passed on only once this is set."""
    from_offset: int = 0
    """Only range requests starting at or beyond this byte get it."""

    def __post_init__(self):
        assert self.action in ACTIONS, self.action
        assert all(k in KINDS for k in self.kinds), self.kinds


@dataclass
class Seen:
    kind: str
    method: str
    path: str
    range: str
    status: int = 0
    sent: int = 0
    """Body bytes sent to the client."""
    fault: str = ""


@dataclass
class FaultProxy:
    upstream: str
    host: str = ""
    faults: list[Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)

    def arm(self, kinds: str | tuple[str, ...], action: str, **kw) -> Fault:
        fault = Fault((kinds,) if isinstance(kinds, str) else tuple(kinds), action, **kw)
        self.faults.append(fault)
        return fault

    def clear(self) -> None:
        self.faults.clear()

    def count(self, *kinds: str, path: str = "") -> int:
        """Requests of these kinds (all if none) whose path holds ``path``."""
        return len(self._matching(kinds, path))

    def bytes_sent(self, *kinds: str, path: str = "") -> int:
        return sum(s.sent for s in self._matching(kinds, path))

    def _matching(self, kinds: tuple[str, ...], path: str) -> list[Seen]:
        return [s for s in self.seen if (not kinds or s.kind in kinds) and path in s.path]

    def reset_counts(self) -> None:
        self.seen.clear()

    def _take(self, kind: str, path: str = "", first_byte: int = 0) -> Fault | None:
        for fault in self.faults:
            if kind in fault.kinds and fault.path in path and first_byte >= fault.from_offset:
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                return fault
        return None


def kind_of(request: Request) -> str:
    path = request.path
    if path == "/v2/":
        return "ping"
    if "/manifests/" in path:
        return "manifest"
    if "/blobs/" in path and request.method == "GET":
        rng = request.headers.get("range", "")
        if not rng:
            return "blob"
        return "multirange" if "," in rng else "range"
    return "other"


@asynccontextmanager
async def fault_proxy(upstream: str) -> AsyncIterator[FaultProxy]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    proxy = FaultProxy(upstream, f"127.0.0.1:{listeners[0].socket.getsockname()[1]}")
    async with httpx.AsyncClient(base_url=f"http://{upstream}", timeout=30) as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners,
                               partial(_connection, proxy, client), listeners)
            failed = None
            try:
                yield proxy
            except BaseException as e:
                # Raised below as it was, not inside the nursery's exception group.
                failed = e
            finally:
                nursery.cancel_scope.cancel()
        if failed is not None:
            raise failed


async def _connection(proxy: FaultProxy, client: httpx.AsyncClient,
                      stream: trio.SocketStream) -> None:
    async def answer(conn: h11.Connection, request: Request) -> bool:
        kind = kind_of(request)
        seen = Seen(kind, request.method, request.path, request.headers.get("range", ""))
        proxy.seen.append(seen)
        fault = proxy._take(kind, request.path, _first_byte(seen.range))
        seen.fault = fault.action if fault else ""
        return await _answer(conn, stream, client, request, fault, seen)

    # a reset or truncated answer leaves h11 refusing to send more: expected
    await serve_h11(stream, answer, quiet=(h11.LocalProtocolError,))


async def _answer(conn: h11.Connection, stream: trio.SocketStream, client: httpx.AsyncClient,
                  request: Request, fault: Fault | None, seen: Seen) -> bool:
    """Send one answer; False when the connection must not be used again."""
    action = fault.action if fault else ""
    if action == "status":
        headers = {"content-type": "application/json"}
        if fault.retry_after is not None:
            headers["retry-after"] = fault.retry_after
        body = b'{"errors":[{"code":"UNAVAILABLE","message":"injected"}]}'
        return await _send(conn, stream, seen, fault.status, headers, body)
    if action == "stall" and fault.at is None:
        await trio.sleep(fault.seconds)
    if action == "hold":
        await fault.gate.wait()
    headers = {k: v for k, v in request.headers.items() if k not in _HOP}
    headers["accept-encoding"] = "identity"
    if action == "ignore_range":
        headers.pop("range", None)
    r = await client.request(request.method, request.target, headers=headers,
                             content=request.body)
    out = {k: v for k, v in r.headers.items() if k not in _HOP}
    body = r.content
    if request.method == "HEAD" and "content-length" in r.headers:
        out["content-length"] = r.headers["content-length"]
    if action == "flip" and body:
        body = bytearray(body)
        body[len(body) // 2] ^= 0xFF
        body = bytes(body)
    elif action == "wrong_range" and "content-range" in out:
        out["content-range"] = _shifted(out["content-range"])
    elif action == "truncate":
        body = body[:len(body) // 2]
    elif action in ("reset", "stall") and fault.at is not None:
        return await _send_broken(conn, stream, seen, r.status_code, out, body, fault)
    return await _send(conn, stream, seen, r.status_code, out, body,
                       head=request.method == "HEAD")


async def _send(conn: h11.Connection, stream: trio.SocketStream, seen: Seen, status: int,
                headers: dict[str, str], body: bytes, head: bool = False) -> bool:
    seen.status = status
    if not head or "content-length" not in headers:
        headers["content-length"] = str(len(body))
    out = conn.send(h11.Response(status_code=status, headers=list(headers.items())))
    if body and not head:
        out += conn.send(h11.Data(data=body))
        seen.sent += len(body)
    out += conn.send(h11.EndOfMessage())
    await stream.send_all(out)
    return True


async def _send_broken(conn: h11.Connection, stream: trio.SocketStream, seen: Seen,
                       status: int, headers: dict[str, str], body: bytes, fault: Fault) -> bool:
    """Headers promising the whole body, part of it, then a stall (and the
    rest) or a TCP reset."""
    seen.status = status
    headers["content-length"] = str(len(body))
    cut = int(len(body) * fault.at)
    out = conn.send(h11.Response(status_code=status, headers=list(headers.items())))
    await stream.send_all(out + conn.send(h11.Data(data=body[:cut])))
    seen.sent += cut
    if fault.action == "stall":
        await trio.sleep(fault.seconds)
        await stream.send_all(conn.send(h11.Data(data=body[cut:])) + conn.send(h11.EndOfMessage()))
        seen.sent += len(body) - cut
        return True
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()
    return False


def _first_byte(range_header: str) -> int:
    first = range_header.partition("=")[2].partition("-")[0]
    return int(first) if first.isdigit() else 0


def _shifted(content_range: str) -> str:
    unit, _, rest = content_range.partition(" ")
    span, _, total = rest.partition("/")
    first, _, last = span.partition("-")
    return f"{unit} {int(first) + 1}-{int(last) + 1}/{total}"

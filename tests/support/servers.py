"""Small HTTP servers on loopback for the cases a real registry will not produce.

Each runs in the test's own trio loop (h11 over ``trio.serve_listeners``) and
records every request it saw, so tests can assert on what a client sent:
a tampered manifest, a 200 answer to a Range request, a CDN that must never
see the registry's credentials, a registry that is busy twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import ssl

import h11
import httpx
import trio

from lazyfs.testing.http1 import Request, serve_h11


@dataclass
class Response:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    cut_after: int | None = None
    """Announce the whole body but drop the connection after this many bytes."""
    drop: bool = False
    """Close the connection without answering at all."""


Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class FakeServer:
    host: str
    requests: list[Request] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def seen(self, path_prefix: str = "") -> list[Request]:
        return [r for r in self.requests if r.path.startswith(path_prefix)]


@asynccontextmanager
async def serve(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[FakeServer]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    server = FakeServer(f"127.0.0.1:{listeners[0].socket.getsockname()[1]}")
    if ssl_context is not None:
        listeners = [trio.SSLListener(lst, ssl_context, https_compatible=True) for lst in listeners]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, partial(_connection, handler, server), listeners)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


async def _connection(handler: Handler, server: FakeServer, stream: trio.abc.Stream) -> None:
    async def answer(conn: h11.Connection, request: Request) -> bool:
        server.requests.append(request)
        return await _send(conn, stream, request, await handler(request))

    await serve_h11(stream, answer)


async def _send(conn: h11.Connection, stream: trio.abc.Stream, request: Request,
                response: Response) -> bool:
    if response.drop:
        return False
    headers = {k.lower(): v for k, v in response.headers.items()}
    if request.method != "HEAD" or "content-length" not in headers:
        headers["content-length"] = str(len(response.body))
    out = conn.send(h11.Response(status_code=response.status, headers=list(headers.items())))
    body = response.body if request.method != "HEAD" else b""
    if response.cut_after is not None:
        await stream.send_all(out + body[:response.cut_after])
        return False
    if body:
        out += conn.send(h11.Data(data=body))
    out += conn.send(h11.EndOfMessage())
    await stream.send_all(out)
    return True


def with_ping(handler: Handler) -> Handler:
    """Answer ``GET /v2/`` like a registry without auth, and pass the rest on."""
    async def handle(request: Request) -> Response:
        if request.path == "/v2/":
            return Response(200, {"docker-distribution-api-version": "registry/2.0"}, b"{}")
        return await handler(request)
    return handle


_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "host", "content-length",
                "content-encoding"}


def forward(upstream: str, rewrite: Callable[[Request, Response], Response] | None = None) -> Handler:
    """Pass requests on to ``upstream`` (``host:port``), optionally rewriting each answer."""
    async def handle(request: Request) -> Response:
        headers = {k: v for k, v in request.headers.items() if k not in _HOP_HEADERS}
        headers["accept-encoding"] = "identity"
        async with httpx.AsyncClient(base_url=f"http://{upstream}") as client:
            r = await client.request(request.method, request.target, headers=headers,
                                     content=request.body)
        kept = {k: v for k, v in r.headers.items() if k not in _HOP_HEADERS}
        if request.method == "HEAD" and "content-length" in r.headers:
            kept["content-length"] = r.headers["content-length"]
        response = Response(r.status_code, kept, r.content)
        return rewrite(request, response) if rewrite else response
    return handle

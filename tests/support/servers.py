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


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes = b""

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> dict[str, str]:
        return dict(httpx.QueryParams(self.target.partition("?")[2]))


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


async def serve_h11(stream: trio.abc.Stream,
                    answer: Callable[[h11.Connection, Request], Awaitable[bool]],
                    quiet: tuple[type[Exception], ...] = ()) -> None:
    """One connection: each request read is given to ``answer`` (False: do
    not use the connection again) until either side closes it. A client
    that goes away, or an exception in ``quiet``, just ends it."""
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            request = await _read_request(conn, stream)
            if request is None:
                return
            if not await answer(conn, request):
                return
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, *quiet):
        pass
    finally:
        with trio.move_on_after(1):
            try:
                await stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


async def _read_request(conn: h11.Connection, stream: trio.abc.Stream) -> Request | None:
    request: Request | None = None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            conn.receive_data(data)
            if not data and request is None:
                return None
            continue
        if isinstance(event, h11.Request):
            headers: dict[str, str] = {}
            for k, v in event.headers:
                # Repeated fields (Go sends one Accept line per media type) combine.
                name = k.decode().lower()
                headers[name] = f"{headers[name]}, {v.decode()}" if name in headers else v.decode()
            request = Request(event.method.decode(), event.target.decode(), headers)
        elif isinstance(event, h11.Data) and request is not None:
            request.body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return request
        elif isinstance(event, h11.ConnectionClosed):
            return None


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

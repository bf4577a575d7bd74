"""One HTTP/1.1 server connection over h11, for the small loopback servers
tests and benchmarks start where a real registry cannot do what they need
(a proxy that spoils answers, a server that ignores Range, token auth)."""

from __future__ import annotations

import urllib.parse

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import h11
import trio


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    """Lower-case names; repeated fields joined with ", "."""
    body: bytes = b""

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(self.target.partition("?")[2], keep_blank_values=True))


Answer = Callable[[h11.Connection, Request], Awaitable[bool]]


async def serve_h11(stream: trio.abc.Stream, answer: Answer,
                    quiet: tuple[type[Exception], ...] = ()) -> None:
    """Each request read is given to ``answer`` (False: do not use the
    connection again) until either side closes it. A client that goes away,
    or an exception in ``quiet``, just ends it."""
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            request = await _read_request(conn, stream)
            if request is None:
                return
            if not await answer(conn, request):
                return
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, *quiet):
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

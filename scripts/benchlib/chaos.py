"""An HTTP proxy on loopback that spoils a share of the blob requests it
passes on to a registry, at random: for the soak.

Faults: a stall before the headers or half-way through the body (longer
than any deadline), a reset half-way, a body cut short under its full
``Content-Length``, one byte flipped, a ``Content-Range`` shifted by one, a
503 with ``Retry-After: 1``. Other requests (pings, manifests, tokens) pass
untouched, so only reads are disturbed. It runs its own trio loop in a
thread; ``enabled`` switches the faults on and off.
"""

from __future__ import annotations

import random
import threading
from collections import Counter

import h11
import httpx
import trio

from lazyfs.testing.http1 import Request, serve_h11

FAULTS = ("stall", "stall_mid", "reset", "truncate", "flip", "wrong_range", "status")
STALL = 60.0
_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length",
        "content-encoding"}


class ChaosProxy:
    def __init__(self, upstream: str, rate: float, seed: int = 15) -> None:
        self.upstream, self.rate = upstream, rate
        self.rng = random.Random(seed)
        self.enabled = False
        self.counts: Counter[str] = Counter()
        self.requests = 0
        self.host = ""
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    def __enter__(self) -> ChaosProxy:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the chaos proxy did not start")
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    async def _main(self) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.host = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        async with httpx.AsyncClient(base_url=f"http://{self.upstream}", timeout=120) as client:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.serve_listeners,
                                   lambda s: self._connection(client, s), listeners)
                self._ready.set()
                while not self._stop.is_set():
                    await trio.sleep(0.1)
                nursery.cancel_scope.cancel()

    def _pick(self, request: Request) -> str:
        if not self.enabled or request.method != "GET" or "/blobs/" not in request.target:
            return ""
        self.requests += 1
        if self.rng.random() >= self.rate:
            return ""
        fault = self.rng.choice(FAULTS)
        self.counts[fault] += 1
        return fault

    async def _connection(self, client: httpx.AsyncClient, stream: trio.SocketStream) -> None:
        async def answer(conn: h11.Connection, request: Request) -> bool:
            return await self._answer(conn, stream, client, request, self._pick(request))

        await serve_h11(stream, answer, quiet=(httpx.HTTPError,))

    async def _answer(self, conn: h11.Connection, stream: trio.SocketStream,
                      client: httpx.AsyncClient, request: Request, fault: str) -> bool:
        """Send one answer; False when the connection must not be used again."""
        if fault == "stall":
            await trio.sleep(STALL)
            return False
        if fault == "status":
            await _send(conn, stream, 503, {"retry-after": "1", "content-type": "application/json"},
                        b'{"errors":[{"code":"UNAVAILABLE","message":"chaos"}]}')
            return True
        headers = {k: v for k, v in request.headers.items() if k not in _HOP}
        headers["accept-encoding"] = "identity"
        r = await client.get(request.target, headers=headers)
        out = {k: v for k, v in r.headers.items() if k not in _HOP}
        body = r.content
        if fault == "flip" and body:
            flipped = bytearray(body)
            flipped[len(flipped) // 2] ^= 0xFF
            body = bytes(flipped)
        elif fault == "wrong_range" and "content-range" in out:
            unit, _, rest = out["content-range"].partition(" ")
            span, _, total = rest.partition("/")
            if "-" in span:
                a, _, b = span.partition("-")
                out["content-range"] = f"{unit} {int(a) + 1}-{int(b) + 1}/{total}"
        if fault in ("stall_mid", "reset", "truncate"):
            out["content-length"] = str(len(body))
            await stream.send_all(conn.send(h11.Response(status_code=r.status_code,
                                                         headers=list(out.items()))))
            await stream.send_all(conn.send(h11.Data(data=body[:len(body) // 2])))
            if fault == "stall_mid":
                await trio.sleep(STALL)
            return False
        await _send(conn, stream, r.status_code, out, body)
        return True


async def _send(conn: h11.Connection, stream: trio.SocketStream, status: int,
                headers: dict[str, str], body: bytes) -> None:
    headers = {**headers, "content-length": str(len(body))}
    await stream.send_all(conn.send(h11.Response(status_code=status,
                                                 headers=list(headers.items()))))
    await stream.send_all(conn.send(h11.Data(data=body)))
    await stream.send_all(conn.send(h11.EndOfMessage()))

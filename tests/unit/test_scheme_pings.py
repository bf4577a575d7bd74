"""First contact with a host that may speak HTTPS or plain HTTP: both pings at
once, the answers taken in order of preference."""

from __future__ import annotations

import functools

import httpx
import pytest
import trio

from lazyfs.errors import RegistryError, RegistryUnreachable
from lazyfs.registry.pings import first_answer, speaks_tls

SCHEMES = ("https", "http")


class Host:
    """Pings answered as told; each one waits for ``gate`` if given."""

    def __init__(self, answers: dict[str, int | None], gate: dict[str, str] | None = None):
        self.answers = answers
        self.gate = gate or {}
        self.started = {s: trio.Event() for s in SCHEMES}
        self.asked: list[str] = []

    async def ping(self, scheme: str) -> httpx.Response:
        self.asked.append(scheme)
        self.started[scheme].set()
        if scheme in self.gate:
            await self.started[self.gate[scheme]].wait()
        status = self.answers[scheme]
        if status is None:
            raise RegistryUnreachable(f"cannot reach registry h:1 over {scheme}")
        return httpx.Response(status)


async def test_a_plain_http_host_is_found_in_one_round_trip_not_two():
    # the TLS attempt fails only once the plain one was sent: one after the
    # other, this would never finish
    host = Host({"https": None, "http": 200}, gate={"https": "http"})
    with trio.fail_after(5):
        scheme, resp = await first_answer("h:1", "h:1", SCHEMES, host.ping, at_once=True,
                                          known=None)
    assert (scheme, resp.status_code) == ("http", 200)


async def test_https_is_preferred_whichever_answers_first():
    host = Host({"https": 401, "http": 200}, gate={"https": "http"})
    with trio.fail_after(5):
        scheme, resp = await first_answer("h:1", "h:1", SCHEMES, host.ping, at_once=True,
                                          known=None)
    assert (scheme, resp.status_code) == ("https", 401)


async def test_a_remembered_scheme_is_asked_alone_first():
    host = Host({"https": 200, "http": 200})
    scheme, _ = await first_answer("h:1", "h:1", ("http", "https"), host.ping, at_once=False,
                                   known="http")
    assert scheme == "http" and host.asked == ["http"]


@pytest.mark.parametrize("at_once", [True, False])
async def test_an_answer_that_is_not_a_registry_is_an_error(at_once):
    host = Host({"https": 404, "http": 200})
    with pytest.raises(RegistryError, match=r"GET https://h:1/v2/ answered HTTP 404"):
        await first_answer("h:1", "h:1", SCHEMES, host.ping, at_once=at_once, known=None)
    host = Host({"https": None, "http": None})
    with pytest.raises(RegistryUnreachable, match="over https"):
        await first_answer("h:1", "h:1", SCHEMES, host.ping, at_once=at_once, known=None)


async def _server(nursery, reply: bytes | None) -> int:
    """A loopback TCP server that reads the ClientHello, then answers ``reply``
    (or closes); its port."""

    async def handle(stream):
        async with stream:
            hello = await stream.receive_some(5)
            assert hello[:1] == b"\x16"  # a TLS handshake record
            if reply:
                await stream.send_all(reply)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]


@pytest.mark.parametrize("reply, speaks", [
    (b"HTTP/1.1 400 Bad Request\r\n\r\n", False),
    (b"\x15\x03\x03\x00\x02\x02\x28", True),   # a TLS alert: a TLS server refusing us
    (b"\x16\x03\x03\x00\x04", True),           # a server hello begins
    (None, None),                                # closed without a word: the request decides
])
async def test_speaks_tls_asks_without_a_trust_store(nursery, reply, speaks):
    port = await _server(nursery, reply)
    with trio.fail_after(5):
        assert await speaks_tls("127.0.0.1", port, timeout=5) is speaks


async def test_speaks_tls_cannot_tell_without_a_connection():
    with trio.socket.socket() as s:
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert await speaks_tls("127.0.0.1", port, timeout=5) is None

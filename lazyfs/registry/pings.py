"""Which scheme a registry host speaks: its ``/v2/`` pings, one per scheme.

On first contact with a host that may speak HTTPS or plain HTTP (loopback,
insecure registries) the pings are sent at once, so that a plain-HTTP
registry answers within the round trip a failing TLS handshake takes rather
than after it. The answers are still taken in the schemes' order of
preference, with the same rules as one after another: an unreachable scheme
gives way to the next, an answer that is not a registry's is an error
(unless it comes on a remembered scheme, which may have stopped working).
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable

import httpx
import trio

from ..errors import LazyfsError, RegistryError, RegistryUnreachable, single_error

Ping = Callable[[str], Awaitable[httpx.Response]]


async def first_answer(host: str, api_host: str, schemes: tuple[str, ...], ping: Ping, *,
                       at_once: bool, known: str | None) -> tuple[str, httpx.Response]:
    """The first scheme, in order, whose ping answered like a registry, and
    that answer (its body closed)."""
    with single_error():
        async with trio.open_nursery() as nursery:
            pings = _Pings(nursery, ping, schemes, at_once)
            try:
                return await _choose(host, api_host, schemes, pings, known)
            finally:
                nursery.cancel_scope.cancel()


async def _choose(host: str, api_host: str, schemes: tuple[str, ...], pings: "_Pings",
                  known: str | None) -> tuple[str, httpx.Response]:
    failure: LazyfsError | None = None
    for scheme in schemes:
        try:
            resp = await pings.get(scheme)
        except RegistryUnreachable as e:
            failure = failure or e
            continue
        if resp.status_code in (200, 401):
            return scheme, resp
        failure = RegistryError(f"{host} does not speak the registry v2 API "
                                f"(GET {scheme}://{api_host}/v2/ answered HTTP {resp.status_code})")
        if scheme != known:
            raise failure
    assert failure is not None
    raise failure


async def speaks_tls(host: str, port: int, timeout: float) -> bool | None:
    """Whether ``host:port`` answers a TLS ClientHello as a TLS server does
    (a handshake record or an alert); ``None`` when that could not be told
    (no connection, no answer in time, no bytes), which the HTTPS request
    itself then finds out. No trust store is needed to ask."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    try:
        ctx.wrap_bio(ssl.MemoryBIO(), outgoing).do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    with trio.move_on_after(timeout):
        try:
            async with await trio.open_tcp_stream(host, port) as stream:
                await stream.send_all(hello)
                first = await stream.receive_some(1)
        except (OSError, trio.BrokenResourceError):
            return None
        return first[0] in (0x15, 0x16) if first else None
    return None


class _Pings:
    """Each scheme's ping, sent up front or when first asked for."""

    def __init__(self, nursery: trio.Nursery, ping: Ping, schemes: tuple[str, ...],
                 at_once: bool):
        self._ping = ping
        self._sent: dict[str, list] = {}
        if at_once and len(schemes) > 1:
            for scheme in schemes:
                self._sent[scheme] = [trio.Event(), None, None]
                nursery.start_soon(self._run, scheme)

    async def _run(self, scheme: str) -> None:
        slot = self._sent[scheme]
        try:
            slot[1] = await self._ping(scheme)
        except Exception as e:
            slot[2] = e
        finally:
            slot[0].set()

    async def get(self, scheme: str) -> httpx.Response:
        slot = self._sent.get(scheme)
        if slot is None:
            return await self._ping(scheme)
        await slot[0].wait()
        if slot[2] is not None:
            raise slot[2]
        return slot[1]

"""A response body that outlives its connection.

A blob answer can break off part-way: a reset connection, a proxy that
closes early, a registry restarted mid-transfer. Asking for the whole answer
again would throw away what already arrived (and what the caller already
consumed), so a retried GET carries on instead: the bytes still missing are
asked for by Range and the body continues as if nothing had happened. Only
an answer that says exactly which bytes it holds (206 with the expected
``Content-Range``), or the whole blob again for a request that asked for
all of it, is taken; anything else gives up with the original failure. The
blob's digest, checked by the caller, still covers every byte.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import trio

from ..errors import LazyfsError
from .ranges import parse_content_range

RETRY_ERRORS = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError,
                httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout)
MAX_RESUMES = 32
"""Resumptions of one body at most, however much each one brings."""
_SINGLE_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")

Reopen = Callable[[str], Awaitable[httpx.Response]]
"""Sends the request again with the given ``Range`` header; an answer with a
2xx status, or a ``LazyfsError``."""


def resumable(resp: httpx.Response, request_range: str | None) -> tuple[int, int | None] | None:
    """The ``[start, end)`` of the blob ``resp`` carries (``end`` None: to the
    end), if its body can be resumed: a 200 or a 206 for one range, sent as is."""
    encoding = resp.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity") or resp.status_code not in (200, 206):
        return None
    if request_range is None:
        return (0, None) if resp.status_code == 200 else None
    m = _SINGLE_RANGE.match(request_range.strip())
    if m is None or resp.status_code != 206:
        return None
    return int(m[1]), int(m[2]) + 1 if m[2] else None


class ResumingBody(httpx.AsyncByteStream):
    """Stands in for ``resp.stream``: the same bytes, resumed after a break."""

    def __init__(self, resp: httpx.Response, wanted: tuple[int, int | None], reopen: Reopen,
                 tries: int, backoff: Callable[[int], float]):
        self._current: httpx.Response | None = None
        self._stream = resp.stream
        self._start, self._end = wanted
        self._length = _declared_length(resp)
        self._reopen, self._tries, self._backoff = reopen, tries, backoff

    async def __aiter__(self) -> AsyncIterator[bytes]:
        got = failures = resumes = 0
        skip = 0
        while True:
            before = got
            try:
                async for piece in self._stream:
                    if skip:
                        cut = min(skip, len(piece))
                        piece, skip = piece[cut:], skip - cut
                    got += len(piece)
                    if piece:
                        yield piece
                if self._length is None or got >= self._length:
                    return
                error: Exception = httpx.RemoteProtocolError(
                    f"body ended after {got} of {self._length} bytes")
            except RETRY_ERRORS as e:
                error = e
            failures = 0 if got > before else failures + 1
            resumes += 1
            if failures >= self._tries or resumes > MAX_RESUMES:
                raise error
            await self._close()
            await trio.sleep(self._backoff(failures))
            skip = await self._resume(got, error)

    async def _resume(self, got: int, error: Exception) -> int:
        """Ask for the bytes after the first ``got``; how many to skip of the new answer."""
        start = self._start + got
        last = "" if self._end is None else str(self._end - 1)
        try:
            resp = await self._reopen(f"bytes={start}-{last}")
        except LazyfsError:
            raise error from None
        self._current, self._stream = resp, resp.stream
        if resp.status_code == 206:
            cr = parse_content_range(resp.headers.get("content-range"))
            if cr is not None and cr.start == start and (self._end is None or cr.end == self._end):
                return 0
        elif resp.status_code == 200 and self._start == 0 and self._end is None:
            return got
        raise error

    async def _close(self) -> None:
        if self._current is not None:
            await self._current.aclose()
        else:
            await self._stream.aclose()

    async def aclose(self) -> None:
        await self._close()


def _declared_length(resp: httpx.Response) -> int | None:
    """The body's length as the answer states it: a 206's ``Content-Range``
    (a proxy may send fewer bytes under a matching ``Content-Length``), else
    its ``Content-Length``."""
    if resp.status_code == 206:
        cr = parse_content_range(resp.headers.get("content-range"))
        if cr is not None:
            return cr.end - cr.start
    try:
        return int(resp.headers["content-length"])
    except (KeyError, ValueError):
        return None

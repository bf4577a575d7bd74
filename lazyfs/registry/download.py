"""A whole blob from the registry into the store: the one way every caller
(a pull, a read that falls back to the whole layer, an index build) gets
one, as parallel range requests handed on in order.

One HTTP stream of a big layer is slow to start and capped per connection
behind a distant registry; several range requests in flight at once are not.
A consumer that inflates the blob as it arrives (an index build) still needs
the bytes in blob order, exactly once, while the blob lands verified in the
store. Pieces are written to the tmp file at their offsets as they come,
then hashed and handed to the consumer strictly in order; a window of
``parallel + 2`` pieces bounds memory, so downloads ahead of a slow consumer
wait for it.

A pull asks for one plain GET instead (``fetch_blob``), and finishes an
attempt an earlier process abandoned with ranges from where it stopped.

An attempt cut short stays in the store's ``tmp/`` to be resumed, which is
what a crash or a lost connection wants; a user who pressed Ctrl-C wants it
gone, so the partial files of this process are remembered until then
(``discard_partials``).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import trio

from ..blob import _pread
from ..errors import (DigestMismatch, LazyfsError, RangeNotSupported, RegistryError,
                      RegistryInterrupted, RegistryUnreachable, naming, single_error)
from ..manifest import Descriptor
from ..reference import Reference
from ..store.blobs import BlobWriter, Store

if TYPE_CHECKING:
    from .client import RegistryClient

log = logging.getLogger(__name__)

CHUNK = 8 << 20
"""Large enough that a request's round trip is small next to its transfer
(4 MiB paid visibly more round trips), small enough that a 60 MB layer still
spreads over several connections and the window stays modest in memory."""
PARALLEL = 6
"""Behind a 20-50 ms link capped per connection, 6 ranges fetched a 60 MB
blob in 0.9-1.0 s against 1.9-2.7 s for one stream. 8 was a little faster
but would take every range slot the client allows a host, starving the
reads served meanwhile."""
STREAM_PIECE = 1 << 20
"""What a plain GET hands on at a time: its bytes reach the tmp file as they
arrive, so a process killed mid-way leaves them to be resumed from."""
WHOLE_BLOB_STREAMED = "the whole blob was streamed (index build or export)"
FIRST_WAIT = 0.2
"""Seconds before a failed range is first asked for again (doubling after)."""
LONGEST_WAIT = 5.0

Consume = Callable[[bytes], object]
Watcher = Callable[[Descriptor, "DownloadProgress"], object]
T = TypeVar("T")

_watcher: ContextVar[Watcher | None] = ContextVar("lazyfs_download_watcher", default=None)
_partials: set[Path] = set()


@dataclass
class Fallback:
    """Per layer, shared by every reader of it: why it is served from a whole
    download rather than ranges, and what whole downloads cost."""

    reason: str = ""
    """Why reads of this layer cannot use ranges (empty while they can)."""
    pulled_bytes: int = 0
    """Bytes of whole-blob pulls (index builds, fallbacks, prefetch, ``--full-pull``)."""
    pull_reason: str = ""
    """Why the last whole pull was made."""
    whole_answers: int = 0
    """Range requests answered with the whole blob (200) so far."""
    lock: trio.Lock = field(default_factory=trio.Lock, repr=False, compare=False)


@dataclass
class DownloadProgress:
    """How far a ``stream_blob`` got, for statistics and for readers that
    may ``pread`` ``tmp_path`` below ``consumed`` before the blob is whole."""

    received: int = 0
    """Bytes arrived from the registry (or read from the stored blob)."""
    consumed: int = 0
    """Bytes, from offset 0, written to ``tmp_path``, hashed and consumed."""
    tmp_path: Path | None = None
    """The file holding the bytes below ``consumed``: the tmp file while
    downloading (renamed away once done), the blob itself if it was stored."""
    resumed: int = 0
    """Bytes taken over from an attempt an earlier process abandoned."""
    done: bool = False
    path: Path | None = None
    """The verified blob in the store, once ``done``."""


async def stream_blob(client: RegistryClient, ref: Reference, desc: Descriptor, store: Store,
                      consume: Consume | None = None, *, chunk: int = CHUNK,
                      parallel: int = PARALLEL, ranged: bool = True,
                      resume: bool = False, fallback: Fallback | None = None,
                      progress: DownloadProgress | None = None) -> Path:
    """The blob verified in ``store``, each of its bytes passed once, in
    order, to ``consume`` (called in a worker thread) on the way.

    ``ranged=False`` asks for one plain GET. ``resume`` takes over the bytes
    of an abandoned attempt (they are consumed first) and asks only for the
    rest, by Range.

    ``fallback``, when given, is the layer's record of whole pulls: this one
    is added to it, and a registry found to ignore Range is noted there so
    later reads and pulls of the layer do not ask again. Its lock is not
    taken: a caller that already holds it may call this."""
    if chunk <= 0 or parallel <= 0:
        raise LazyfsError(f"blob {desc.digest}: chunk and parallel must be positive")
    progress = progress or DownloadProgress()
    if (watcher := _watcher.get()) is not None:
        watcher(desc, progress)
    consume = consume or _ignore
    local = await trio.to_thread.run_sync(store.sized_blob_path, desc.digest, desc.size)
    if local is not None:
        progress.tmp_path = local
        await _consume_file(local, desc.size, chunk, consume, progress)
    else:
        plan = _Plan(chunk, parallel, ranged, resume)
        local = await _download(client, ref, desc, store, consume, plan, fallback, progress)
    progress.path, progress.done = local, True
    return local


@contextlib.contextmanager
def watch(watcher: Watcher) -> Iterator[None]:
    """Within this context (and the trio tasks it starts), ``watcher`` is
    shown every ``stream_blob`` as it begins, with the ``DownloadProgress``
    it keeps up to date: how a command shows what it is waiting for without
    every layer between it and the download passing a callback along."""
    token = _watcher.set(watcher)
    try:
        yield
    finally:
        _watcher.reset(token)


def discard_partials() -> int:
    """Delete what this process's interrupted downloads left in ``tmp/``
    (kept there otherwise, for a later attempt to resume); returns the bytes
    freed. For after Ctrl-C, when nothing of this process writes any more."""
    freed = 0
    for path in list(_partials):
        with contextlib.suppress(FileNotFoundError):
            freed += path.stat().st_size
            path.unlink()
        _partials.discard(path)
    return freed


def _ignore(data: bytes) -> None:
    pass


async def _consume_file(path: Path, size: int, chunk: int, consume: Consume,
                        progress: DownloadProgress) -> None:
    if consume is _ignore:
        progress.received += size
        progress.consumed += size
        return
    for offset in range(0, size, chunk):
        n = min(chunk, size - offset)
        await trio.to_thread.run_sync(_read_and_consume, path, offset, n, consume)
        progress.received += n
        progress.consumed += n


def _read_and_consume(path: Path, offset: int, length: int, consume: Consume) -> None:
    consume(_pread(path, offset, length))


@dataclass(frozen=True)
class _Plan:
    chunk: int
    parallel: int
    ranged: bool
    resume: bool


async def _download(client, ref: Reference, desc: Descriptor, store: Store, consume: Consume,
                    plan: _Plan, fallback: Fallback | None, progress: DownloadProgress) -> Path:
    async with store.blob_writer(desc.digest, desc.size) as w:
        if not (plan.resume and 0 < w.resume_offset() < desc.size):
            await trio.to_thread.run_sync(w.restart)
        progress.tmp_path = w.tmp_path
        _partials.add(w.tmp_path)
        try:
            await _adopt(w, consume, plan.chunk, progress)
            reason = await _fetch(client, ref, desc, w, consume, plan, fallback, progress)
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(w.keep_prefix)
            raise
    _partials.discard(progress.tmp_path)
    if fallback is not None:
        fallback.pulled_bytes += desc.size
        fallback.pull_reason = reason or fallback.reason or WHOLE_BLOB_STREAMED
    local = store.blob_path(desc.digest)
    if local is None:
        raise LazyfsError(f"blob {desc.digest} vanished from the store after its download")
    return local


async def _adopt(w: BlobWriter, consume: Consume, chunk: int,
                 progress: DownloadProgress) -> None:
    """The bytes an abandoned attempt left, already hashed by the writer,
    handed on as if they had just arrived."""
    progress.resumed = w.resume_offset()
    await _consume_file(w.tmp_path, progress.resumed, chunk, consume, progress)


async def _fetch(client, ref: Reference, desc: Descriptor, w: BlobWriter, consume: Consume,
                 plan: _Plan, fallback: Fallback | None, progress: DownloadProgress) -> str:
    """Ranges while the registry answers them; then one stream for the rest.
    Returns why the blob was streamed rather than fetched in ranges, if it was."""
    reason = ""
    patience = _Patience(client.options.retry_deadline, client.options.backoff, progress,
                         f"blob {desc.digest}", desc.digest)
    wanted = progress.consumed > 0 or (plan.ranged and desc.size > plan.chunk)
    if wanted and not (fallback is not None and fallback.reason):
        try:
            await _ranged(client, ref, desc, _Sink(w, consume, progress, plan.parallel + 2),
                          plan, patience)
            return ""
        except RangeNotSupported as e:
            reason = str(e)
            log.warning("%s; streaming it whole", naming(f"layer {desc.digest}", e, desc.digest))
            if fallback is not None and not fallback.reason:
                fallback.reason = reason
    await patience.persist(lambda: _streamed(client, ref, desc, _Sink(w, consume, progress, 3),
                                             plan.chunk))
    return reason


@dataclass
class _Patience:
    """How long a download keeps asking again for what the registry failed
    to send (a range cut short, a refused connection, a 5xx): until
    ``deadline`` seconds have passed without a byte arriving. What arrived
    stays: only the missing part is asked for again."""

    deadline: float
    backoff: float
    progress: DownloadProgress
    what: str
    mark: str
    """What names the blob in a message (its digest)."""
    _seen: int = -1
    _since: float = 0.0

    async def persist(self, op: Callable[[], Awaitable[T]]) -> T:
        failures = 0
        while True:
            try:
                return await op()
            except (RegistryInterrupted, RegistryUnreachable) as e:
                failures += 1
                left = self._left()
                if left <= 0:
                    raise type(e)(f"{e} (nothing arrived for {self.deadline:g} s; "
                                  "gave up)") from None
                wait = min(max(self.backoff, FIRST_WAIT) * 2 ** (failures - 1),
                           LONGEST_WAIT, left)
                log.warning("%s; asking again in %.1f s", naming(self.what, e, self.mark),
                            wait)
                await trio.sleep(wait)

    def _left(self) -> float:
        now = trio.current_time()
        if self.progress.received != self._seen:
            self._seen, self._since = self.progress.received, now
        return self._since + self.deadline - now


async def fetch_blob(client: RegistryClient, ref: Reference, desc: Descriptor, store: Store,
                     report: Callable[[int], object] | None = None) -> Path:
    """The blob verified in ``store`` by one plain GET, as a pull fetches a
    layer; ``report`` is told the bytes done so far (from a worker thread).
    An attempt an earlier process abandoned is finished by Range, and its
    bytes fetched afresh if the whole then fails verification."""
    for resume in (True, False):
        progress = DownloadProgress()
        consume = _Counter(report) if report is not None else None
        try:
            return await stream_blob(client, ref, desc, store, consume, ranged=False,
                                     resume=resume, progress=progress)
        except DigestMismatch:
            if not progress.resumed:
                raise
    raise AssertionError("unreachable")


class _Counter:
    def __init__(self, report: Callable[[int], object]):
        self._report, self._done = report, 0

    def __call__(self, data: bytes) -> None:
        self._done += len(data)
        self._report(self._done)


@dataclass
class _Piece:
    start: int
    end: int
    data: bytes | None = None
    ready: trio.Event = field(default_factory=trio.Event)


class _Sink:
    """Pieces reserved in blob order, filled in any order, absorbed in order."""

    def __init__(self, w: BlobWriter, consume: Consume, progress: DownloadProgress,
                 held: int):
        self._w, self._consume, self._progress = w, consume, progress
        self._window = trio.Semaphore(held)
        self._send, self._recv = trio.open_memory_channel[_Piece](math.inf)

    @property
    def consumed(self) -> int:
        return self._progress.consumed

    async def reserve(self, start: int, end: int) -> _Piece:
        await self._window.acquire()
        piece = _Piece(start, end)
        try:
            self._send.send_nowait(piece)
        except trio.BrokenResourceError:
            # ``deliver`` failed (the consumer raised): its error is the one
            # to report, and the nursery is cancelling us anyway.
            await trio.sleep_forever()
        return piece

    def close(self) -> None:
        self._send.close()

    async def fill(self, piece: _Piece, data: bytes) -> None:
        await trio.to_thread.run_sync(self._w.write_at, piece.start, data)
        self._progress.received += len(data)
        piece.data = data
        piece.ready.set()

    async def deliver(self) -> None:
        async with self._recv:
            async for piece in self._recv:
                await piece.ready.wait()
                await trio.to_thread.run_sync(self._absorb, piece.data)
                self._progress.consumed = piece.end
                piece.data = None
                self._window.release()

    def _absorb(self, data: bytes) -> None:
        self._w.absorb(data)
        self._consume(data)


async def _ranged(client, ref: Reference, desc: Descriptor, sink: _Sink, plan: _Plan,
                  patience: _Patience) -> None:
    in_flight = trio.Semaphore(plan.parallel)

    async def fetch(piece: _Piece) -> None:
        try:
            data = await patience.persist(lambda: client.get_range(
                ref, desc.digest, piece.start, piece.end, retry=True))
        finally:
            in_flight.release()
        await sink.fill(piece, data)

    with single_error():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sink.deliver)
            for i, offset in enumerate(range(sink.consumed, desc.size, plan.chunk)):
                piece = await sink.reserve(offset, min(offset + plan.chunk, desc.size))
                await in_flight.acquire()
                if i == 0:
                    # alone: a registry that ignores Range answers every
                    # request with the whole blob, so ask it once first
                    await fetch(piece)
                else:
                    nursery.start_soon(fetch, piece)
            sink.close()


async def _streamed(client, ref: Reference, desc: Descriptor, sink: _Sink, chunk: int) -> None:
    """One plain GET; bytes below what was already consumed are skipped."""
    skip = sink.consumed
    offset = 0
    with single_error():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sink.deliver)
            async with client.get_blob_stream(ref, desc.digest,
                                              min(chunk, STREAM_PIECE)) as pieces:
                async for data in pieces:
                    end = offset + len(data)
                    if end > desc.size:
                        raise DigestMismatch(f"blob {desc.digest}: registry sent more than "
                                             f"the {desc.size} bytes expected")
                    if end > skip:
                        at = max(offset, skip)
                        await sink.fill(await sink.reserve(at, end), data[at - offset:])
                    offset = end
            if offset != desc.size:
                raise RegistryError(f"blob {desc.digest}: body ended after {offset} of "
                                    f"{desc.size} bytes")
            sink.close()

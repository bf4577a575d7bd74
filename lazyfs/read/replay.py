"""Replaying a first-read trace: fetching, in the background and in the
order the last start needed them, the ranges the next start will read.

The trace comes from the store (this image's, else the newest of another
image sharing layers), else from the registry (``trace push``). It is
checked against the image's tables first (``trace.plan``); its ranges are
then warmed through the reader, so they are decoded, verified and cached
exactly as reads are, and a read needing a range in flight joins it
instead of asking again.

Reads come first: replay never holds more than ``concurrency`` batches in
flight, only half of them while any read is waiting, and never more bytes
per second than ``rate``. Batches start small (the first reads of a start
are needed soonest) and grow, so a long trace costs few round trips.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio

from ..errors import LazyfsError
from .reader import Reader
from .stats import fetch_kind
from .trace import Trace, load_trace, plan, pull_trace, related_trace, save_trace

log = logging.getLogger(__name__)

FIRST_BATCH = 256 << 10
LAST_BATCH = 4 << 20
"""File bytes asked for per batch: starting at the first, doubling to the last."""
POLL = 0.005
"""How often a replay held back by reads looks again."""


@dataclass
class ReplayOptions:
    enabled: bool = True
    """``False`` (``--no-prefetch``): nothing is fetched in the background."""
    concurrency: int = 4
    """Batches in flight at once (half of them while reads are waiting)."""
    rate: int = 0
    """Bytes per second replay may ask for; 0 for no bound."""


@dataclass
class Replay:
    """One image's replay, and what it did (for ``stats``)."""

    reader: Reader
    options: ReplayOptions = field(default_factory=ReplayOptions)
    source: str = ""
    """Where the trace came from: ``local``, ``registry`` or ``image <digest>``."""
    planned: int = 0
    dropped: int = 0
    done: int = 0
    failed: int = 0
    state: str = "looking"
    _inflight: int = 0
    _next: float = 0.0

    def stats(self) -> dict:
        return {"source": self.source, "state": self.state, "planned": self.planned,
                "dropped": self.dropped, "done": self.done, "failed": self.failed}

    def prepare(self, trace: Trace | None, layers: list[str], tables) -> list:
        """The trace's reads checked against the layer tables: the one use of
        the tables, which the caller can let go of before the reads run."""
        if not self.options.enabled or trace is None:
            self.state = "off" if not self.options.enabled else "no trace"
            return []
        reads, self.dropped = plan(trace, layers, tables)
        self.planned = len(reads)
        if not reads:
            self.state = "nothing to fetch"
        return reads

    async def run(self, reads: list) -> None:
        if not reads:
            return
        self.state = "running"
        fetch_kind.set("prefetch")
        async with trio.open_nursery() as nursery:
            for batch in batches(reads):
                await self._slot(sum(size for *_, size in batch))
                self._inflight += 1
                nursery.start_soon(self._one, batch)
        self.state = "done"

    async def _slot(self, size: int) -> None:
        """Wait until a batch of ``size`` bytes may start."""
        while True:
            limit = self.options.concurrency
            if self.reader.reading:
                limit = max(1, limit // 2)
            if self._inflight < limit:
                break
            await trio.sleep(POLL)
        if self.options.rate > 0:
            now = trio.current_time()
            if self._next > now:
                await trio.sleep(self._next - now)
            self._next = max(now, self._next) + size / self.options.rate

    async def _one(self, batch: list[tuple[int, bytes, int, int]]) -> None:
        try:
            await self.reader.warm(batch, foreground=False)
            self.done += len(batch)
        except LazyfsError as e:
            self.failed += len(batch)
            log.info("trace replay: %d ranges not fetched ahead: %s", len(batch), e)
        finally:
            self._inflight -= 1


def batches(reads: list[tuple[int, bytes, int, int]]) -> list[list[tuple[int, bytes, int, int]]]:
    """The reads cut, in order, into batches of growing size."""
    out: list[list] = []
    target, current, size = FIRST_BATCH, [], 0
    for read in reads:
        current.append(read)
        size += read[3]
        if size >= target:
            out.append(current)
            current, size = [], 0
            target = min(target * 2, LAST_BATCH)
    if current:
        out.append(current)
    return out


async def find_trace(store, client, ref, manifest: str, layers: list[str]) -> tuple[Trace | None, str]:
    """The trace to replay for image ``manifest`` and where it came from: this
    image's own in the store, the newest of another image sharing layers, or
    one published in the registry (then kept in the store)."""
    trace = await trio.to_thread.run_sync(load_trace, store, manifest)
    if trace is not None:
        return trace, "local"
    trace = await trio.to_thread.run_sync(related_trace, store, manifest, layers)
    if trace is not None:
        return trace, f"image {trace.manifest}"
    if client is None:
        return None, ""
    trace = await pull_trace(client, ref, manifest)
    if trace is None:
        return None, ""
    try:
        await trio.to_thread.run_sync(save_trace, store, trace)
    except LazyfsError as e:
        log.warning("%s", e)
    return trace, "registry"

"""What an opened image cost so far: per layer, how it is read and what it fetched.

JSON-ready, for ``lazyfs stats`` (through the mount) and ``--stats`` files.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import time
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CacheError

if TYPE_CHECKING:
    from ..image import Image


EVENTS_KEPT = 4096
"""Fetch events a mount keeps for ``stats --timeline``: the first ones (a
start is what people study) and, past this, the newest."""
EVENTS_XATTR_BYTES = 60 << 10
"""What the compressed event log may take in the xattr that carries it (the
kernel caps an xattr value at 64 KiB)."""
EVENT_KINDS = ("read", "prefetch", "readahead", "index", "hit")

fetch_kind: contextvars.ContextVar[str] = contextvars.ContextVar("fetch_kind", default="read")
"""Why the current task fetches: set by background work (trace replay,
readahead) for the tasks it starts, so the reader can label its requests."""


@dataclass(slots=True)
class Event:
    start: float
    """Seconds since the image was opened."""
    end: float
    layer: int
    kind: str
    offset: int
    size: int

    def as_row(self) -> list:
        return [round(self.start, 4), round(self.end, 4), self.layer, self.kind,
                self.offset, self.size]


class EventLog:
    """A bounded log of what was fetched (or found in the chunk cache) and
    when: the first ``EVENTS_KEPT // 2`` events are kept, then a window of
    the newest, so a long-running mount costs no more than a start."""

    def __init__(self, started: float | None = None, kept: int = EVENTS_KEPT):
        self.started = time.monotonic() if started is None else started
        self._first: list[Event] = []
        self._first_max = kept // 2
        self._latest: deque[Event] = deque(maxlen=kept - self._first_max)
        self.dropped = 0
        self._last = float("-inf")

    def now(self) -> float:
        return time.monotonic() - self.started

    def add(self, layer: int, kind: str, offset: int, size: int,
            start: float | None = None) -> None:
        """An event ending now; ``start`` (from ``now()``) when it took time."""
        end = self._last = self.now()
        e = Event(end if start is None else start, end, layer, kind, offset, size)
        if len(self._first) < self._first_max:
            self._first.append(e)
            return
        if len(self._latest) == self._latest.maxlen:
            self.dropped += 1
        self._latest.append(e)

    def idle(self) -> float:
        """Seconds since the last event ended (``inf`` before the first)."""
        return self.now() - self._last

    def events(self) -> list[Event]:
        return self._first + list(self._latest)

    def document(self, image: Image | None = None) -> dict:
        doc = {"dropped": self.dropped, "columns": ["start", "end", "layer", "kind",
                                                   "offset", "size"],
               "events": [e.as_row() for e in self.events()]}
        if image is not None:
            doc["reference"] = str(image.ref)
            doc["layers"] = [{"digest": i.desc.digest, "size": i.desc.size}
                             for i in image.layers]
        return doc

    def packed(self, image: Image | None = None, limit: int = EVENTS_XATTR_BYTES) -> bytes:
        """The document as compressed JSON of at most ``limit`` bytes, the
        newest events given up first when it would not fit."""
        doc = self.document(image)
        while True:
            data = zlib.compress(json.dumps(doc, separators=(",", ":")).encode(), 9)
            if len(data) <= limit or not doc["events"]:
                return data
            cut = len(doc["events"]) // 4 or 1
            doc["dropped"] += cut
            doc["events"] = doc["events"][:-cut]


def unpack_events(data: bytes) -> dict:
    return json.loads(zlib.decompress(data))


def image_stats(image: Image) -> dict:
    layers = [_layer_stats(image, pos) for pos in range(len(image.layers))]
    out = {"reference": str(image.ref), "digest": image.digest,
           "open_seconds": round(image.opened_in, 3),
           "cache_corrupt": image.reader.cache.corrupt, "layers": layers}
    mirrors = image.mirrors() if image.mirrors is not None else []
    if mirrors:
        out["mirrors"] = mirrors
    if image.background is not None:
        out.update(image.background.state())
    if image.published:
        out["published_index"] = image.published
    if image.recorder is not None or image.replay is not None:
        out["trace"] = {"recorded": len(image.recorder) if image.recorder is not None else 0}
        if image.replay is not None:
            out["trace"]["replay"] = image.replay.stats()
    return out


def _layer_stats(image: Image, pos: int) -> dict:
    info, layer = image.layers[pos], image.reader.layers[pos]
    s = layer.stats
    fb = image.fallbacks.get(info.desc.digest)
    mode, reason = ("lazy", "") if info.lazy else ("full pull", info.reason)
    if fb is not None and fb.reason:
        mode, reason = "full pull", fb.reason
    s.mode, s.reason = mode, reason
    out = {
        "digest": info.desc.digest, "format": info.format, "mode": mode,
        "reason": reason, "size": info.desc.size,
        "bytes_fetched": s.bytes_fetched + (fb.pulled_bytes if fb else 0),
        "range_bytes": s.bytes_fetched,
        "pulled_bytes": fb.pulled_bytes if fb else 0,
        "pull_reason": fb.pull_reason if fb else "",
        "local": layer.blob.local_path() is not None,
        "prefetch": image.prefetching.get(info.desc.digest, ""),
        "requests": s.requests, "cache_hits": s.hits, "cache_misses": s.misses,
        "shared_fetches": s.shared,
        "verify_failures": s.verify_failures, "retries": s.retries,
        "failed_reads": s.failed_reads, "timeouts": s.timeouts,
        "readahead_pieces": s.readahead_pieces}
    indexing = image.background.layer_state(pos) if image.background is not None else None
    if indexing is not None:
        out["indexing"] = indexing
    return out


def write_stats(path: str | os.PathLike, image: Image) -> None:
    """``image.stats()`` as JSON at ``path``, replaced atomically so a reader
    never sees half a file. Blocking; small."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(image.stats(), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise CacheError(f"cannot write stats to {path}: {e.strerror}") from None

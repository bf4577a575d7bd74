"""The images a long-lived service holds open, and when it lets them go.

An image is opened on first use and held by a task of the service's nursery
(its registry client, reader and background work live as long as that task).
Each image gets a slot: a number that prefixes the inodes of its tree in the
mount's one inode space, and that stays with it after it is closed, so that
inodes the kernel still remembers can reopen it (by digest, from the cache).

A slot with no open file and no request in flight for ``idle`` seconds is
closed and its memory returned. A reference written with a tag is resolved
again once it is ``tag_ttl`` seconds old (a new digest is a new slot); one
written with a digest never is. Failures are remembered for ``stats`` and
logged; nothing here is cached about them, so the next request tries again.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

import trio

from ..errors import LazyfsError, UsageError
from ..image import Image, OpenOptions, open_image_async
from ..read.sources import open_source
from ..reference import Reference, parse_reference
from ..store.blobs import Store

log = logging.getLogger(__name__)

IDLE_SECONDS = 600.0
TAG_TTL_SECONDS = 180.0
SLOT_SHIFT = 32
"""An image's inode ``i`` is ``slot << SLOT_SHIFT | i`` in the mount."""
MAX_FAILURES = 50


@dataclass(eq=False)
class Slot:
    number: int
    pinned: Reference
    """The reference by digest: what reopens the image."""
    views: bool = False
    """Opened with per-layer views (for ``.layers``), apart from the merged
    tree's slot of the same image: building them costs a first read time."""
    names: set[str] = field(default_factory=set)
    image: Image | None = None
    layers: list[str] = field(default_factory=list)
    """Layer digests, bottom first."""
    users: int = 0
    """Open files and requests in flight: while any, the image stays open."""
    last_used: float = 0.0
    opens: int = 0
    last_stats: dict = field(default_factory=dict)
    _scope: trio.CancelScope | None = None
    _lock: trio.Lock = field(default_factory=trio.Lock)

    @property
    def digest(self) -> str:
        return self.pinned.digest or ""

    def stats(self) -> dict:
        if self.image is not None:
            self.last_stats = self.image.stats()
        return {"slot": self.number, "references": sorted(self.names), "digest": self.digest,
                "layer_views": self.views,
                "state": "open" if self.image is not None else "closed", "opens": self.opens,
                "users": self.users,
                "idle_seconds": round(time.monotonic() - self.last_used, 1),
                "layers": list(self.layers), "image": self.last_stats}


@dataclass
class _Name:
    slot: Slot
    resolved_at: float


class ImageSet:
    """Images by reference, opened on demand, shared by the mount, the
    control socket and the snapshotter."""

    def __init__(self, nursery: trio.Nursery, store: Store, options: OpenOptions | None = None,
                 *, idle: float = IDLE_SECONDS, tag_ttl: float = TAG_TTL_SECONDS,
                 client=None):
        self._nursery = nursery
        self.store = store
        self.options = options or OpenOptions()
        self.idle = idle
        self.tag_ttl = tag_ttl
        self._client = client
        self._slots: dict[int, Slot] = {}
        self._by_pinned: dict[str, Slot] = {}
        self._names: dict[str, _Name] = {}
        self._view_names: dict[str, _Name] = {}
        """The same for slots opened with layer views only (the snapshotter's)."""
        self._name_locks: dict[str, trio.Lock] = collections.defaultdict(trio.Lock)
        self.failures: collections.deque = collections.deque(maxlen=MAX_FAILURES)
        self.failure_count = 0
        self.on_open: list[Callable[[Slot], None]] = []
        """Called with each slot whose image was just opened (or reopened)."""
        self.on_close: list[Callable[[Slot], None]] = []
        """Called with each slot whose image was closed: drop what refers to it."""
        self.opened_at = time.time()

    # ---------------------------------------------------------------- lookup

    def slot(self, number: int) -> Slot | None:
        return self._slots.get(number)

    def slots(self) -> list[Slot]:
        return list(self._slots.values())

    def names(self) -> list[str]:
        return list(self._names)

    def fresh(self, name: str) -> float:
        """Seconds the answer for ``name`` stays right (``inf`` for a digest)."""
        known = self._names.get(name)
        if known is None:
            return 0.0
        if parse_reference(name).digest:
            return float("inf")
        return max(0.0, known.resolved_at + self.tag_ttl - time.monotonic())

    async def by_reference(self, text: str | Reference, views: bool = False) -> Slot:
        """The open slot of the image ``text`` names, opening it if needed;
        with ``views``, its slot with per-layer views (which holds the merged
        tree as well), without opening the plain one first."""
        ref = parse_reference(text) if isinstance(text, str) else text
        if ref.transport != "docker":
            raise UsageError(f"{ref}: only registry references are served")
        name = str(ref)
        try:
            async with self._name_locks[name]:
                slot = await self._named(name, ref, views)
            await self.ensure_open(slot)
        except LazyfsError as e:
            self.failed(str(ref), e)
            raise
        return slot

    async def _named(self, name: str, ref: Reference, views: bool = False) -> Slot:
        names = self._view_names if views else self._names
        known = names.get(name)
        now = time.monotonic()
        if known is not None and (ref.digest or now - known.resolved_at < self.tag_ttl):
            return known.slot
        if known is not None:
            try:
                pinned = await self._resolve(ref)
            except LazyfsError as e:
                # The image it named is still good: keep serving it, ask again later.
                self.failed(f"{ref} (resolving again; still serving {known.slot.digest})", e)
                known.resolved_at = now
                return known.slot
            if pinned.digest == known.slot.digest:
                known.resolved_at = now
                return known.slot
            log.info("%s now points at %s (was %s)", ref, pinned.digest, known.slot.digest)
            slot = self._by_pinned.get(_key(pinned, views)) or self._new_slot(pinned, views)
        else:
            slot = await self._open_new(ref, views)
        slot.names.add(name)
        names[name] = _Name(slot, now)
        return slot

    async def _resolve(self, ref: Reference) -> Reference:
        if self._client is None:
            raise UsageError("no registry client to resolve tags with")
        resolved = await open_source(ref, self.store, self._client).resolve(self.options.platform)
        return resolved.pinned

    def export(self) -> list[dict]:
        """The slots as a successor needs them (``restore``)."""
        return [{"number": s.number, "pinned": str(s.pinned), "views": s.views,
                 "names": sorted(s.names), "layers": list(s.layers)} for s in self.slots()]

    def restore(self, slots: list[dict]) -> None:
        """The slots of the process served before, with their numbers, closed:
        the inodes the kernel kept reopen them by digest when asked."""
        stale = time.monotonic() - self.tag_ttl
        for doc in slots:
            slot = Slot(doc["number"], parse_reference(doc["pinned"]), doc["views"],
                        names=set(doc["names"]), layers=list(doc["layers"]),
                        last_used=time.monotonic())
            self._slots[slot.number] = slot
            self._by_pinned[_key(slot.pinned, slot.views)] = slot
            for name in slot.names if not slot.views else ():
                self._names[name] = _Name(slot, stale)

    def _new_slot(self, pinned: Reference, views: bool = False) -> Slot:
        slot = Slot(max(self._slots, default=0) + 1, pinned, views, last_used=time.monotonic())
        self._slots[slot.number] = slot
        self._by_pinned[_key(pinned, views)] = slot
        return slot

    async def views_of(self, slot: Slot) -> Slot:
        """The slot of ``slot``'s image opened with per-layer views, open."""
        views = self._by_pinned.get(_key(slot.pinned, True))
        if views is None:
            views = self._new_slot(slot.pinned, views=True)
            views.names = set(slot.names)
        try:
            await self.ensure_open(views)
        except LazyfsError as e:
            self.failed(f"{slot.pinned} (layer views)", e)
            raise
        return views

    async def _open_new(self, ref: Reference, views: bool = False) -> Slot:
        """Open by the reference as written: one resolution, not two."""
        if ref.digest and (slot := self._by_pinned.get(_key(ref, views))) is not None:
            return slot
        scope = trio.CancelScope()
        image = await self._nursery.start(self._hold, ref, scope, views)
        pinned = image.ref
        slot = self._by_pinned.get(_key(pinned, views))
        if slot is not None and slot.image is not None:
            scope.cancel()  # the same image under a second name
            return slot
        slot = slot or self._new_slot(pinned, views)
        self._adopt(slot, image, scope)
        return slot

    async def ensure_open(self, slot: Slot) -> Image:
        """The slot's image, reopened (by digest) if it was closed."""
        slot.last_used = time.monotonic()
        if slot.image is not None:
            return slot.image
        async with slot._lock:
            if slot.image is None:
                scope = trio.CancelScope()
                image = await self._nursery.start(self._hold, slot.pinned, scope, slot.views)
                self._adopt(slot, image, scope)
        return slot.image

    def _adopt(self, slot: Slot, image: Image, scope: trio.CancelScope) -> None:
        slot.image, slot._scope = image, scope
        slot.layers = [info.desc.digest for info in image.layers]
        slot.opens += 1
        slot.last_used = time.monotonic()
        log.info("opened %s (%s) in %.2f s", image.ref, image.digest, image.opened_in)
        for hook in self.on_open:
            hook(slot)

    async def _hold(self, ref: Reference, scope: trio.CancelScope, views: bool, *,
                    task_status=trio.TASK_STATUS_IGNORED) -> None:
        options = dataclasses.replace(self.options, layer_views=views)
        image = None
        try:
            with scope:
                async with open_image_async(ref, options, self.store,
                                             client=self._client) as image:
                    task_status.started(image)
                    await trio.sleep_forever()
        except Exception as e:
            if image is None:
                raise
            # The image's own background work failed after it was served: it is
            # closed (the next request reopens it), the service goes on.
            self.failed(str(ref), e)
            for slot in self.slots():
                if slot.image is image:
                    self._forget(slot)

    def close(self, slot: Slot) -> None:
        if slot.image is None:
            return
        slot.last_stats = slot.image.stats()
        log.info("closed %s (idle %.0f s)", slot.pinned, time.monotonic() - slot.last_used)
        if slot._scope is not None:
            slot._scope.cancel()
        self._forget(slot)

    def _forget(self, slot: Slot) -> None:
        slot.image = None
        slot._scope = None
        for hook in self.on_close:
            hook(slot)

    async def reap(self, period: float = 1.0) -> None:
        """Close images idle for ``idle`` seconds, forever."""
        while True:
            await trio.sleep(min(period, self.idle / 4) if self.idle > 0 else period)
            now = time.monotonic()
            for slot in self.slots():
                if slot.image is not None and slot.users == 0 and now - slot.last_used >= self.idle:
                    self.close(slot)

    @contextlib.asynccontextmanager
    async def using(self, slot: Slot) -> AsyncIterator[Image]:
        """The slot's image, kept open for the duration."""
        slot.users += 1
        try:
            yield await self.ensure_open(slot)
        finally:
            slot.users -= 1
            slot.last_used = time.monotonic()

    # ---------------------------------------------------------------- failures, stats

    def failed(self, what: str, error: BaseException) -> None:
        self.failure_count += 1
        reason = str(error) or type(error).__name__
        self.failures.append({"what": what, "reason": reason, "time": round(time.time(), 3),
                              "errno": getattr(error, "errno", None)})
        log.warning("%s: %s", what, reason)

    def stats(self) -> dict:
        return {"images": [s.stats() for s in self.slots()], "failures": list(self.failures),
                "failure_count": self.failure_count, "idle_seconds": self.idle,
                "tag_ttl_seconds": self.tag_ttl}


def _key(pinned: Reference, views: bool) -> str:
    """One image, whichever tag led to it."""
    key = f"{pinned.registry}/{pinned.repository}@{pinned.digest}"
    return f"{key} (layers)" if views else key

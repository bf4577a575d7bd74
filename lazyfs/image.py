"""``open_image_async``: a reference in, a browsable and lazily readable tree out.

This is the façade the CLI, the mount and Python users share: it resolves the
reference, builds (or loads) each layer's table and the merged index
(``read.tables``), and wires the reader. Layer tables are cached per layer
digest and merged indexes per manifest digest, so the work is done once per
machine. Gzip layers may instead be indexed after opening
(``read.background``); whole layers may be prefetched (``read.prefetch``).
The synchronous API is ``lazyfs.sync``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator, Callable

import trio

from .formats.entry import EntryType
from .errors import LazyfsError, UsageError
from .formats import FORMATS, LayerTable, format_of
from .index.memory import MemoryIndex
from .index.merged import MergedIndex, Node
from .index.tree import Tree, mode_of
from .manifest import Descriptor, Platform
from .store.chunks import ChunkCache, WholeBlobs
from .read.content import LayerContent, TableContent, reader_layer
from .read.prefetch import Prefetch, prioritized, warm_quietly
from .read.reader import Reader
from .read.replay import Replay, ReplayOptions, find_trace
from .read.stats import EventLog, image_stats
from .read.trace import SAVE_EVERY, Recorder, save_trace
from .read.tables import check_diff_ids, layer_name, layer_tables, merged_index, save_tables
from .reference import Reference, parse_reference
from .read.sources import RegistrySource, open_source
from .store.blobs import Store
from .store.schemes import SchemeFile

if TYPE_CHECKING:
    from .read.background import BackgroundIndex

__all__ = ["Image", "LayerInfo", "OpenOptions", "mode_of", "open_image_async"]

log = logging.getLogger(__name__)

WRITE_BEHIND_DELAY = 0.5
"""Seconds after opening before a new image's tables and index file are
written: the first lookups and reads should not share the CPU with that."""
WRITE_BEHIND_QUIET = 0.3
"""After the delay, the write also waits until no read came for this long: a
container's start reads one file after another for about a second, and the
write (a tenth of a second of CPU, mostly holding the GIL) would slow every
read it overlaps."""
WRITE_BEHIND_MAX = 10.0
"""Seconds after opening when the files are written, reads or not."""


@dataclass
class OpenOptions:
    platform: Platform | None = None
    registry: object | None = None
    """``RegistryOptions`` for the registry client."""
    full_pull: bool = False
    """Download whole layers instead of reading ranges."""
    layer_views: bool = False
    """Also index each layer as its own tree (``mount --layers``); doubles the index build."""
    prefetch: bool = False
    """Download whole layers in the background after opening; reads use ranges until then."""
    use_shared_index: bool = True
    """Before a full pass over a layer, look for its table among the image's referrers."""
    background_index: bool = False
    """Open without waiting for gzip layers that have no table yet: they are
    downloaded and indexed in the background while ``Image.tree`` answers
    what is already certain (``mount``). Ignored with ``layer_views``."""
    early_reads: bool = False
    """With ``background_index``: answer from a layer's bytes before the whole
    layer has been checked against its digest. A mismatch found at the end
    still fails every later request, but bytes already served were unchecked."""
    push_index: bool = False
    """Publish the tables built by a full pass to the registry once they are complete."""
    record_trace: bool = False
    """Record the reads of the first minutes and keep them as the image's trace (mounts)."""
    replay: ReplayOptions | None = None
    """Fetch what a recorded trace (local, of an image sharing layers, or
    published) says the start will read, ahead of the reads."""


@dataclass
class LayerInfo:
    position: int
    desc: Descriptor
    format: str
    lazy: bool
    reason: str

    @property
    def name(self) -> str:
        """The directory name of this layer in a per-layer view."""
        return layer_name(self.position, self.desc)


@dataclass
class Image:
    """An opened image; its reads stay valid while the opening context lives."""

    resolved: object
    tree: Tree
    """Lookups and listings, also while layers are indexed in the background."""
    reader: Reader
    layers: list[LayerInfo]
    contents: list[LayerContent]
    """Per layer, where its entries' content is read from."""
    store: Store
    opened_in: float = 0.0
    fallbacks: dict = field(default_factory=dict)
    shared_tables: list[str] = field(default_factory=list)
    """Layer digests whose table came from an index artifact in the registry."""
    prefetcher: Prefetch | None = None
    background: BackgroundIndex | None = None
    """The layers indexed after opening, if any."""
    published: str = ""
    """The digest of the index artifact pushed after background indexing, if any."""
    mirrors: Callable[[], list[dict]] | None = None
    """What the registry's mirrors have shown so far (skipped, single-range)."""
    recorder: Recorder | None = None
    replay: Replay | None = None
    behind: WriteBehind | None = None
    """The tables and index file built at opening, while they are written behind."""

    @property
    def ref(self) -> Reference:
        return self.resolved.pinned

    @property
    def digest(self) -> str:
        return self.resolved.manifest.digest

    @property
    def index(self) -> MergedIndex | None:
        """The merged index; ``None`` while layers are indexed in the background."""
        return self.tree.index

    @property
    def prefetching(self) -> dict[str, str]:
        """Layer digest -> ``"running"``, ``"done"`` or the error that stopped it."""
        return self.prefetcher.state if self.prefetcher is not None else {}

    async def read(self, node: Node, offset: int, size: int) -> bytes:
        if node.type is not EntryType.FILE:
            raise UsageError(f"inode {node.ino} is not a regular file")
        size = _readable(node, offset, size)
        if size == 0:
            return b""
        if self.recorder is not None:
            self.recorder.note(node.layer, node.data, offset, size)
        return await self.contents[node.layer].read(node.data, offset, size)

    async def warm(self, nodes: list[Node]) -> None:
        """Fetch the content of many (small) files at once, ahead of their
        reads: far fewer round trips than reading them one by one."""
        await self.reader.warm([(n.layer, n.data, 0, n.size) for n in nodes
                                if n.type is EntryType.FILE and n.size])

    def read_local(self, node: Node, offset: int, size: int) -> bytes:
        """Blocking read once ``fetch_all`` has brought every layer local."""
        size = _readable(node, offset, size)
        if size == 0:
            return b""
        return self.reader.read_local(node.layer, node.data, offset, size)

    async def fetch_all(self) -> None:
        """Bring every layer whole into the store: for bulk work (export) one
        stream per layer beats a range request per file."""
        async with trio.open_nursery() as nursery:
            for layer in self.reader.layers:
                nursery.start_soon(layer.blob.path)

    def prefetch(self) -> None:
        """Start pulling every layer whole in the background (two at a time,
        in layer order); reads keep using ranges until a layer has landed.
        Layers still being indexed are downloaded whole anyway."""
        if self.prefetcher is None:
            raise UsageError("prefetch needs an image opened with open_image_async")
        streaming = self.background.streams if self.background is not None else {}
        self.prefetcher.start([layer for i, layer in enumerate(self.reader.layers)
                               if i not in streaming])

    def stats(self) -> dict:
        """Per layer: how it is read and what that cost; JSON-ready."""
        return image_stats(self)

    async def stored(self) -> None:
        """Wait until what opening built is in the store (written now if it
        was still waiting): for whatever reads the tables from there."""
        if self.behind is not None:
            await self.behind.now()


def preload() -> None:
    """Import now what opening an image imports when first needed (httpx's
    connection pool, the layer formats): a long-lived service calls this at
    start, so that the first image it opens does not pay for it."""
    import encodings.idna  # noqa: F401 - host names
    import httpcore  # noqa: F401 - httpx imports it when its first client is made
    for fmt in FORMATS:
        fmt.preload()


def _readable(node: Node, offset: int, size: int) -> int:
    """How much of ``[offset, offset + size)`` lies inside the file."""
    return 0 if offset < 0 else max(0, min(size, node.size - offset))


@contextlib.asynccontextmanager
async def open_image_async(ref: str | Reference, options: OpenOptions | None = None,
                           store: Store | None = None, *, client=None) -> AsyncIterator[Image]:
    """Open ``ref``; the registry connection lives as long as the context.
    A long-lived caller may lend its own ``client`` (connections, tokens and
    endpoint choices kept warm across images)."""
    options = options or OpenOptions()
    ref = parse_reference(ref) if isinstance(ref, str) else ref
    store = store or Store()
    started = time.monotonic()
    lent = contextlib.nullcontext(client) if client is not None and ref.transport == "docker" \
        else _client_for(ref, options, store)
    async with lent as client:
        source = open_source(ref, store, client, options.full_pull)
        defer = options.background_index and not options.layer_views
        early: dict[str, tuple] = {}
        # tables are saved behind, unless they are to be published from the store
        unsaved: list | None = None if options.push_index else []

        async def tables_of(manifest) -> None:
            """The tables, fetched while the config is: a failure here is
            met again, and raised, by the ordinary path below."""
            shared = _shared_index(client, ref, manifest.digest, options)
            with contextlib.suppress(LazyfsError):
                early[manifest.digest] = shared, await layer_tables(
                    list(manifest.layers), source, store, shared, defer, unsaved=unsaved)

        try:
            if isinstance(source, RegistrySource):
                resolved = await source.resolve(options.platform, tables_of)
            else:
                resolved = await source.resolve(options.platform)
            descs = list(resolved.manifest.layers)
            diff_ids = resolved.config.diff_ids
            if resolved.manifest.digest in early:
                shared, tables = early[resolved.manifest.digest]
                check_diff_ids(tables, descs, diff_ids)
            else:
                shared = _shared_index(client, resolved.pinned, resolved.manifest.digest, options)
                tables = await layer_tables(descs, source, store, shared, defer, diff_ids, unsaved)
            index = background = None
            if all(t is not None for t in tables):
                index = await merged_index(resolved.manifest.digest, descs, tables, store,
                                           options.layer_views, behind=True)
            else:
                from .read.background import BackgroundIndex
                background = BackgroundIndex(str(ref), tables, descs, store, started,
                                             options.early_reads, diff_ids)
        except BaseException:
            save_tables(unsaved or [])  # what was built stays built
            raise
        layers = [reader_layer(i, d, t, source, resolved, store)
                  for i, (d, t) in enumerate(zip(descs, tables))]
        cache = ChunkCache(store.root / "chunks",
                           blobs=WholeBlobs(store.root / "blobs", store.kept_blobs, store.no_pull))
        with cache.lease([d.digest for d in descs]):
            async with trio.open_nursery() as nursery:
                reader = Reader(layers, cache, nursery,
                                deadline=_read_deadline(client))
                reader.events = EventLog(started)
                contents = [TableContent(reader, i) for i in range(len(layers))]
                if background is not None:
                    contents = [background.content(i, c) for i, c in enumerate(contents)]
                image = Image(resolved, Tree(index, background and background.progress), reader,
                              [_info(i, d, t) for i, (d, t) in enumerate(zip(descs, tables))],
                              contents, store, time.monotonic() - started,
                              getattr(source, "fallbacks", {}), shared.loaded if shared else [],
                              Prefetch(nursery), background)
                image.mirrors = getattr(client, "mirrors", None)
                if unsaved or isinstance(index, MemoryIndex):
                    image.behind = WriteBehind(image.tree, index, unsaved or [],
                                               reader.events)
                    nursery.start_soon(image.behind.run)
                index = None  # the tree holds it, until it answers from the file
                _start(image, nursery, client, options, tables)
                # Every entry of every layer: what needs them has them (the
                # index, tables still to write, the tasks just started).
                tables = None
                early.clear()
                failed = None
                try:
                    yield image
                except BaseException as e:
                    # Raised again below, so callers see it as it was and not
                    # wrapped in the nursery's exception group.
                    failed = e
                finally:
                    nursery.cancel_scope.cancel()
                    _keep_trace(image)
            if failed is not None:
                raise failed


def _start(image: Image, nursery: trio.Nursery, client, options: OpenOptions,
           tables: list[LayerTable | None]) -> None:
    """The image's background work: indexing, publishing, prefetching."""
    publish = options.push_index and client is not None
    if image.background is not None:
        image.background.events = image.reader.events
        nursery.start_soon(_index_then_publish, image, client if publish else None)
    elif publish:
        from .index.publish import built_here, publish_quietly
        if built_here(tables, [i.desc.digest for i in image.layers], image.shared_tables):
            nursery.start_soon(publish_quietly, client, image)
    if options.prefetch and not options.full_pull:
        image.prefetch()
    if options.record_trace:
        image.recorder = Recorder(image.digest, str(image.ref),
                                  [(i.desc.digest, i.format) for i in image.layers],
                                  image.reader.events.started)
        nursery.start_soon(_record, image)
    background = options.replay is None or options.replay.enabled
    if options.replay is not None and not options.full_pull:
        image.replay = Replay(image.reader, options.replay)
        nursery.start_soon(_replay, image, client, tables)
    if background and not options.full_pull:
        nursery.start_soon(_warm_landmarked, image.reader, tables)


class WriteBehind:
    """The layer tables and the index file, written once the first answers
    are out, and the tree then answered from the file. An image closed before
    that writes them on its way out, so that the next open finds them."""

    def __init__(self, tree: Tree, index, unsaved: list, events: EventLog | None = None):
        self._tree = tree
        self._events = events
        self._index = index
        self._unsaved = unsaved
        self._asked = trio.Event()
        self._done = trio.Event()

    async def run(self) -> None:
        try:
            with trio.move_on_after(WRITE_BEHIND_DELAY):
                await self._asked.wait()
            with trio.move_on_after(WRITE_BEHIND_MAX - WRITE_BEHIND_DELAY):
                while not self._asked.is_set() and (wait := self._reads_lately()) > 0:
                    with trio.move_on_after(wait):
                        await self._asked.wait()
        except trio.Cancelled:
            self._write()
            self._done.set()
            raise
        try:
            written = await trio.to_thread.run_sync(self._write)
            if written is not None:
                self._tree.settle(written)
        finally:
            self._done.set()

    def _reads_lately(self) -> float:
        """How much longer to wait for reads to pause (0: they have)."""
        if self._events is None:
            return 0.0
        return max(0.0, WRITE_BEHIND_QUIET - self._events.idle())

    async def now(self) -> None:
        self._asked.set()
        await self._done.wait()

    def _write(self) -> MergedIndex | None:
        """Write, then let go of what was written (the tree in memory goes
        with the tree's switch to the file)."""
        unsaved, index = self._unsaved, self._index
        self._unsaved, self._index = [], None
        save_tables(unsaved)
        if not isinstance(index, MemoryIndex):
            return None
        try:
            return index.persist()
        except (LazyfsError, ValueError) as e:
            log.warning("the merged index stays in memory: %s", e)
            return None


async def _warm_landmarked(reader: Reader, tables: list[LayerTable | None]) -> None:
    """Files the producer marked (eStargz's landmark), fetched ahead of any
    read: found in the background, as the walk over every entry is not free."""
    landmarked = prioritized(tables)
    del tables
    if landmarked:
        await warm_quietly(reader, landmarked)


async def _replay(image: Image, client, tables: list[LayerTable | None]) -> None:
    """A trace is a hint: whatever goes wrong with it, the image serves on."""
    digests = [i.desc.digest for i in image.layers]
    trace = None
    try:
        if image.replay.options.enabled:
            trace, image.replay.source = await find_trace(image.store, client, image.ref,
                                                          image.digest, digests)
        reads = image.replay.prepare(trace, digests, tables)
        del tables  # a big image's entries: not kept for as long as the replay runs
        await image.replay.run(reads)
    except LazyfsError as e:
        image.replay.state = f"failed: {e}"
        log.warning("trace replay stopped: %s", e)


async def _record(image: Image) -> None:
    """Keep the trace as it grows, so a mount that is killed leaves it too."""
    while True:
        await trio.sleep(SAVE_EVERY)
        if image.recorder.changed:
            await trio.to_thread.run_sync(_save_trace, image.store, image.recorder.trace())


def _keep_trace(image: Image) -> None:
    if image.recorder is not None and image.recorder.changed:
        _save_trace(image.store, image.recorder.trace())


def _save_trace(store: Store, trace) -> None:
    if not trace.entries:
        return
    try:
        save_trace(store, trace)
    except LazyfsError as e:
        log.warning("%s", e)


async def _index_then_publish(image: Image, client) -> None:
    descs = [info.desc for info in image.layers]

    async def merge(tables: list[LayerTable]) -> MergedIndex:
        return await merged_index(image.digest, descs, tables, image.store, False)

    if await image.background.run(image.reader.layers, merge) and client is not None:
        from .index.publish import publish_quietly
        await publish_quietly(client, image)


def _info(position: int, desc: Descriptor, table: LayerTable | None) -> LayerInfo:
    if table is None:
        return LayerInfo(position, desc, format_of(desc.media_type, desc.annotations).name,
                         True, "")
    return LayerInfo(position, desc, table.format, table.lazy, table.reason)


def _client_for(ref: Reference, options: OpenOptions, store: Store):
    if ref.transport != "docker":
        return contextlib.nullcontext()
    from .registry.client import RegistryClient
    from .registry.transport import RegistryOptions
    registry = options.registry or RegistryOptions()
    if registry.schemes is None:
        registry = dataclasses.replace(registry, schemes=SchemeFile(store.root))
    return RegistryClient(registry)


def _read_deadline(client) -> float:
    """The registry's read deadline; local blobs (no client) do not stall."""
    return client.options.read_deadline if client is not None else math.inf


def _shared_index(client, ref: Reference, manifest_digest: str, options: OpenOptions):
    if client is None or not options.use_shared_index:
        return None
    from .index.shared import SharedIndex
    return SharedIndex(client, ref, manifest_digest)

"""``open_image``: a reference in, a browsable and lazily readable tree out.

This is the façade the CLI, the mount and Python users share: it resolves the
reference, builds (or loads) each layer's table and the merged index, and
wires the reader. Layer tables are cached per layer digest and merged
indexes per manifest digest, so the work is done once per machine.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import stat as stat_mod
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Iterator

import trio

from .formats.entry import EntryType
from .errors import (CacheError, LazyfsError, NotFound, UsageError,
                     lazyfs_error_in)
from .formats import LayerTable, format_named, format_of
from .index.merged import MergedIndex, Node
from .index.progressive import ProgressiveIndex
from .read.streaming import LayerStream
from .index.layertable import load_layer_table, save_layer_table, table_path
from .manifest import Descriptor, Platform
from .store.chunks import ChunkCache
from .read.reader import Layer, LayerStats, Reader
from .reference import Reference, parse_reference
from .read.sources import RegistryBlob, open_source
from .store.blobs import Store

INDEX_CONCURRENCY = 2
PREFETCH_CONCURRENCY = 2

log = logging.getLogger(__name__)


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
    downloaded and indexed in the background while ``Image.progress`` answers
    what is already certain (``mount``). Ignored with ``layer_views``."""
    early_reads: bool = False
    """With ``background_index``: answer from a layer's bytes before the whole
    layer has been checked against its digest. A mismatch found at the end
    still fails every later request, but bytes already served were unchecked."""
    push_index: bool = False
    """Publish the tables built by a full pass to the registry once they are complete."""


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
        return f"{self.position}-{self.desc.digest.partition(':')[2][:12]}"


@dataclass
class Image:
    """An opened image; its reads stay valid while the opening context lives."""

    resolved: object
    index: MergedIndex | None
    """``None`` while layers are indexed in the background; see ``progress``."""
    reader: Reader
    layers: list[LayerInfo]
    opened_in: float = 0.0
    fallbacks: dict = field(default_factory=dict)
    nursery: trio.Nursery | None = None
    prefetching: dict = field(default_factory=dict)
    """Layer digest -> ``"running"``, ``"done"`` or the error that stopped it."""
    store: Store | None = None
    shared_tables: list[str] = field(default_factory=list)
    """Layer digests whose table came from an index artifact in the registry."""
    progress: ProgressiveIndex | None = None
    """Early answers while layers are indexed in the background."""
    streams: dict[int, LayerStream] = field(default_factory=dict)
    """Layers (by position) downloaded and indexed in the background."""
    early_reads: bool = False
    indexed_in: float | None = None
    """Seconds from opening until every layer was indexed, for background indexing."""
    published: str = ""
    """The digest of the index artifact pushed after background indexing, if any."""

    @property
    def ref(self) -> Reference:
        return self.resolved.pinned

    @property
    def digest(self) -> str:
        return self.resolved.manifest.digest

    async def read(self, node: Node, offset: int, size: int) -> bytes:
        if node.type is not EntryType.FILE:
            raise UsageError(f"{self.index.path_of(node.ino)} is not a regular file")
        size = max(0, min(size, node.size - offset))
        if size == 0 or offset < 0:
            return b""
        stream = self.streams.get(node.layer)
        if stream is not None and not stream.done:
            if self.early_reads:
                data = await stream.read_early(node.data, offset, size)
                if data is not None:
                    return data
            else:
                await stream.finished()
        return await self.reader.read(node.layer, node.data, offset, size)

    async def warm(self, nodes: list[Node]) -> None:
        """Fetch the content of many (small) files at once, ahead of their
        reads: far fewer round trips than reading them one by one."""
        await self.reader.warm([(n.layer, n.data, 0, n.size) for n in nodes
                                if n.type is EntryType.FILE and n.size])

    async def warm_entries(self, reads: list[tuple[int, bytes, int, int]]) -> None:
        """Background warm-up of ``(layer, locator, offset, size)`` reads; a
        failure only means those files are fetched when read."""
        try:
            await self.reader.warm(reads)
        except LazyfsError as e:
            log.warning("prefetch of prioritized files failed: %s", e)

    def read_local(self, node: Node, offset: int, size: int) -> bytes:
        """Blocking read once ``fetch_all`` has brought every layer local."""
        size = max(0, min(size, node.size - offset))
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
        in layer order); reads keep using ranges until a layer has landed."""
        if self.nursery is None:
            raise UsageError("prefetch needs an image opened with open_image_async")
        todo = [layer for i, layer in enumerate(self.reader.layers)
                if layer.blob.local_path() is None and layer.digest not in self.prefetching
                and i not in self.streams]
        for layer in todo:
            self.prefetching[layer.digest] = "waiting"
        self.nursery.start_soon(self._prefetch, todo)

    async def _prefetch(self, layers: list[Layer]) -> None:
        limit = trio.CapacityLimiter(PREFETCH_CONCURRENCY)

        async def one(layer: Layer) -> None:
            async with limit:
                self.prefetching[layer.digest] = "running"
                try:
                    if isinstance(layer.blob, RegistryBlob):
                        await layer.blob.path("prefetch")
                    else:
                        await layer.blob.path()
                    self.prefetching[layer.digest] = "done"
                except LazyfsError as e:
                    self.prefetching[layer.digest] = f"failed: {e}"
                    log.warning("layer %s: prefetch failed: %s", layer.digest, e)

        async with trio.open_nursery() as nursery:
            for layer in layers:
                nursery.start_soon(one, layer)

    def stats(self) -> dict:
        """Per layer: how it is read and what that cost; JSON-ready."""
        layers = []
        for pos, (info, layer) in enumerate(zip(self.layers, self.reader.layers)):
            s = layer.stats
            fb = self.fallbacks.get(info.desc.digest)
            mode, reason = ("lazy", "") if info.lazy else ("full pull", info.reason)
            if fb is not None and fb.reason:
                mode, reason = "full pull", fb.reason
            s.mode, s.reason = mode, reason
            local = layer.blob.local_path() is not None
            layers.append({
                "digest": info.desc.digest, "format": info.format, "mode": mode,
                "reason": reason, "size": info.desc.size,
                "bytes_fetched": s.bytes_fetched + (fb.pulled_bytes if fb else 0),
                "range_bytes": s.bytes_fetched,
                "pulled_bytes": fb.pulled_bytes if fb else 0,
                "pull_reason": fb.pull_reason if fb else "",
                "local": local, "prefetch": self.prefetching.get(info.desc.digest, ""),
                "requests": s.requests, "cache_hits": s.hits, "cache_misses": s.misses,
                "shared_fetches": s.shared,
                "verify_failures": s.verify_failures, "retries": s.retries,
                "failed_reads": s.failed_reads, "readahead_pieces": s.readahead_pieces})
            if pos in self.streams:
                layers[-1]["indexing"] = self.streams[pos].state()
        out = {"reference": str(self.ref), "digest": self.digest,
               "open_seconds": round(self.opened_in, 3),
               "cache_corrupt": self.reader.cache.corrupt, "layers": layers}
        if self.progress is not None:
            out["index"] = ("ready" if self.progress.final is not None
                            else f"failed: {self.progress.error}" if self.progress.error
                            else "indexing")
            out["index_seconds"] = None if self.indexed_in is None else round(self.indexed_in, 3)
            if self.published:
                out["published_index"] = self.published
        return out

    async def _index_in_background(self, pending: list[int], tables: list, started: float,
                                   client, options: OpenOptions) -> None:
        """Index the ``pending`` layers, top layer first, then merge; every
        failure ends up in ``progress`` so that waiting requests get it."""
        try:
            await self._stream_layers(pending, tables)
            descs = [info.desc for info in self.layers]
            self.index = await _merged_index(self.digest, descs, tables, self.store, False)
            self.indexed_in = time.monotonic() - started
            self.progress.set_final(self.index)
            log.info("image %s indexed in %.2f s", self.ref, self.indexed_in)
        except LazyfsError as e:
            log.error("indexing %s failed: %s", self.ref, e)
            self.progress.fail(e)
            return
        if options.push_index and client is not None:
            await _publish_quietly(client, self)

    async def _stream_layers(self, pending: list[int], tables: list) -> None:
        limit = trio.CapacityLimiter(INDEX_CONCURRENCY)

        async def one(pos: int) -> None:
            try:
                tables[pos] = await self._stream_layer(pos)
            finally:
                limit.release_on_behalf_of(pos)

        try:
            async with trio.open_nursery() as nursery:
                for pos in sorted(pending, reverse=True):
                    await limit.acquire_on_behalf_of(pos)
                    nursery.start_soon(one, pos)
        except BaseExceptionGroup as group:
            error = lazyfs_error_in(group)
            if error is None:
                raise
            raise error from None

    async def _stream_layer(self, pos: int) -> LayerTable:
        stream = self.streams[pos]
        layer = self.reader.layers[pos]
        publish = (lambda entries: self.progress.add(pos, entries)) if self.early_reads else None
        table = await stream.index(layer.blob, publish=publish)
        path = table_path(self.store, table.format, stream.desc.digest)
        await trio.to_thread.run_sync(save_layer_table, path, table)
        layer.content = format_named(table.format).reader(table)
        stream.settle(table)
        if not self.early_reads:
            self.progress.add(pos, table.entries)
        self.progress.complete(pos)
        return table


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


@contextlib.asynccontextmanager
async def open_image_async(ref: str | Reference, options: OpenOptions | None = None,
                           store: Store | None = None) -> AsyncIterator[Image]:
    """Open ``ref``; the registry connection lives as long as the context."""
    options = options or OpenOptions()
    ref = parse_reference(ref) if isinstance(ref, str) else ref
    store = store or Store()
    started = time.monotonic()
    async with _client_for(ref, options) as client:
        source = open_source(ref, store, client, options.full_pull)
        resolved = await source.resolve(options.platform)
        descs = list(resolved.manifest.layers)
        shared = _shared_index(client, resolved, options)
        defer = options.background_index and not options.layer_views
        tables = await _layer_tables(descs, source, store, shared, defer)
        pending = [i for i, t in enumerate(tables) if t is None]
        index = None
        if not pending:
            index = await _merged_index(resolved.manifest.digest, descs, tables, store,
                                        options.layer_views)
        infos = [LayerInfo(i, d, t.format if t else _format(d).name, t.lazy if t else True,
                           t.reason if t else "")
                 for i, (d, t) in enumerate(zip(descs, tables))]
        layers = [_layer(i, d, t, source, resolved, store)
                  for i, (d, t) in enumerate(zip(descs, tables))]
        cache = ChunkCache(store.root / "chunks")
        with cache.lease([d.digest for d in descs]):
            async with trio.open_nursery() as nursery:
                reader = Reader(layers, cache, nursery)
                image = Image(resolved, index, reader, infos, time.monotonic() - started,
                              getattr(source, "fallbacks", {}), nursery, store=store,
                              shared_tables=shared.loaded if shared else [],
                              early_reads=options.early_reads)
                if pending:
                    image.progress = _progress(tables)
                    image.streams = {i: LayerStream(descs[i], store) for i in pending}
                    nursery.start_soon(image._index_in_background, pending, tables, started,
                                       client, options)
                elif options.push_index and client is not None and _built_here(tables, image):
                    nursery.start_soon(_publish_quietly, client, image)
                if options.prefetch and not options.full_pull:
                    image.prefetch()
                landmarked = _prioritized(tables)
                if landmarked and not options.full_pull:
                    nursery.start_soon(image.warm_entries, landmarked)
                failed = None
                try:
                    yield image
                except BaseException as e:
                    # Raised again below, so callers see it as it was and not
                    # wrapped in the nursery's exception group.
                    failed = e
                finally:
                    nursery.cancel_scope.cancel()
            if failed is not None:
                raise failed


def _progress(tables: list[LayerTable | None]) -> ProgressiveIndex:
    progress = ProgressiveIndex(len(tables))
    for i, table in enumerate(tables):
        if table is not None:
            progress.add(i, table.entries)
            progress.complete(i)
    return progress


def _built_here(tables: list[LayerTable], image: Image) -> bool:
    """Whether some layer's table cost a full pass and is not yet in the registry."""
    return any(format_named(t.format).costly and info.desc.digest not in image.shared_tables
               for t, info in zip(tables, image.layers))


async def _publish_quietly(client, image: Image) -> None:
    """A failed push is the registry's refusal, not the image's: say so and serve on."""
    from .index.shared import publish_index
    try:
        image.published = await publish_index(client, image)
        log.info("published the index of %s as %s", image.ref, image.published)
    except LazyfsError as e:
        log.warning("cannot publish the index of %s: %s", image.ref, e)


class _Pending:
    """The content reader of a layer still being indexed: ``Image.read``
    waits for the layer before it reaches the reader."""

    def pieces(self, data: bytes, offset: int, size: int):
        raise LazyfsError("layer is still being indexed")

    def decode(self, piece, raw: bytes) -> bytes:
        raise LazyfsError("layer is still being indexed")


def _layer(i: int, desc: Descriptor, table: LayerTable | None, source, resolved,
           store: Store) -> Layer:
    """How the reader reaches one layer. A layer that cannot be read in part
    (one zstd frame) is served from its decompressed copy, verified against
    its diff_id, rather than inflated from its start for every read."""
    if table is None:
        return Layer(desc.digest, _Pending(), source.blob(desc),
                     LayerStats(format=_format(desc).name, size=desc.size))
    stats = LayerStats(format=table.format, size=desc.size)
    fmt = format_named(table.format)
    if fmt.whole_only(table):
        from .read.decompressed import DecompressedBlob, PlainTarReader
        diff_id = resolved.config.diff_ids[i]
        return Layer(desc.digest, PlainTarReader(), DecompressedBlob(source.blob(desc), diff_id, store),
                     stats)
    return Layer(desc.digest, fmt.reader(table), source.blob(desc), stats)


def _prioritized(tables: list[LayerTable | None]) -> list[tuple[int, bytes, int, int]]:
    """Reads of the files producers marked for prefetch (eStargz's
    ``.prefetch.landmark``), in layer order."""
    return [(i, e.data, 0, e.size) for i, t in enumerate(tables) if t
            for e in format_named(t.format).prefetch(t)]


def _format(desc: Descriptor):
    return format_of(desc.media_type, desc.annotations)


def _client_for(ref: Reference, options: OpenOptions):
    if ref.transport != "docker":
        return contextlib.nullcontext()
    from .registry.client import RegistryClient
    return RegistryClient(options.registry)


def _shared_index(client, resolved, options: OpenOptions):
    if client is None or not options.use_shared_index:
        return None
    from .index.shared import SharedIndex
    return SharedIndex(client, resolved.pinned, resolved.manifest.digest)


async def _layer_tables(descs: list[Descriptor], source, store: Store,
                        shared=None, defer: bool = False) -> list[LayerTable | None]:
    """Each layer's table; with ``defer``, ``None`` for a layer that would
    need a full pass over a blob still in the registry."""
    tables: list[LayerTable | None] = [None] * len(descs)
    limit = trio.CapacityLimiter(INDEX_CONCURRENCY)

    async def one(i: int, desc: Descriptor) -> None:
        async with limit:
            tables[i] = await _layer_table(desc, source.blob(desc), store, shared, defer)

    try:
        async with trio.open_nursery() as nursery:
            for i, desc in enumerate(descs):
                nursery.start_soon(one, i, desc)
    except BaseExceptionGroup as group:
        error = lazyfs_error_in(group)
        if error is None:
            raise
        raise error from None
    return tables  # type: ignore[return-value]


async def _layer_table(desc: Descriptor, blob, store: Store, shared=None,
                       defer: bool = False) -> LayerTable | None:
    fmt = _format(desc)
    store.sized_blob_path(desc.digest, desc.size)
    path = table_path(store, fmt.name, desc.digest)
    if path.exists():
        try:
            return await trio.to_thread.run_sync(load_layer_table, path)
        except CacheError:
            path.unlink(missing_ok=True)
    if shared is not None and (table := await shared.table(desc, fmt.name, path)) is not None:
        return table
    streamable = fmt.streamable and isinstance(blob, RegistryBlob) and blob.local_path() is None
    if streamable and defer:
        return None
    if streamable:
        table = await LayerStream(desc, store).index(blob)
    else:
        table = await fmt.build(desc, blob)
    await trio.to_thread.run_sync(save_layer_table, path, table)
    return table


async def _merged_index(manifest_digest: str, descs: list[Descriptor],
                        tables: list[LayerTable], store: Store,
                        layer_views: bool) -> MergedIndex:
    path = store.index_path("merged-layers" if layer_views else "merged", manifest_digest)
    if path.exists():
        try:
            return await trio.to_thread.run_sync(MergedIndex.open, path)
        except CacheError:
            path.unlink(missing_ok=True)
    names = [LayerInfo(i, d, "", True, "").name for i, d in enumerate(descs)]
    return await trio.to_thread.run_sync(
        lambda: MergedIndex.build(path, [t.entries for t in tables], layer_names=names,
                                  per_layer=layer_views))


# -- the synchronous API for Python users ---------------------------------------------

class SyncImage:
    """``open_image(ref)``: the image for ordinary (non-async) Python code.

    A private trio thread holds the registry connection; every call is sent
    there and waited for, so this object may be used from any one thread."""

    def __init__(self, ref: str | Reference, options: OpenOptions | None = None,
                 store: Store | None = None):
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._image: Image | None = None
        self._token = None
        self._done: trio.Event | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main, ref, options, store),
                                        daemon=True, name="lazyfs-image")
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    async def _main(self, ref, options, store) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._done = trio.Event()
        try:
            async with open_image_async(ref, options, store) as image:
                self._image = image
                self._ready.set()
                await self._done.wait()
        except BaseException as e:  # handed to the caller's thread
            self._error = e
            self._ready.set()

    def close(self) -> None:
        if self._done is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._done.set, trio_token=self._token)
            self._thread.join()

    def __enter__(self) -> SyncImage:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def image(self) -> Image:
        assert self._image is not None
        return self._image

    @property
    def ref(self) -> Reference:
        return self.image.ref

    @property
    def digest(self) -> str:
        return self.image.digest

    def node(self, path: str, follow_symlinks: bool = True) -> Node:
        return self.image.index.resolve(path, follow=follow_symlinks)

    def stat(self, path: str, follow_symlinks: bool = True) -> os.stat_result:
        return stat_result(self.node(path, follow_symlinks))

    def listdir(self, path: str = "/") -> list[str]:
        node = self.node(path)
        if node.type is not EntryType.DIR:
            raise NotFound(f"not a directory: {path}")
        return [name for name, _, _ in self.image.index.readdir(node.ino)]

    def walk(self, top: str = "/") -> Iterator[tuple[str, list[str], list[str]]]:
        """Like ``os.walk`` (top-down, symlinks to directories not followed)."""
        node = self.node(top)
        stack = [(top.rstrip("/") or "/", node)]
        while stack:
            path, node = stack.pop()
            dirs, files, subdirs = [], [], []
            for name, child, _ in self.image.index.readdir(node.ino):
                if child.type is EntryType.DIR:
                    dirs.append(name)
                    subdirs.append((os.path.join(path, name), child))
                else:
                    files.append(name)
            yield path, dirs, files
            stack.extend(reversed(subdirs))

    def readlink(self, path: str) -> str:
        node = self.node(path, follow_symlinks=False)
        if node.type is not EntryType.SYMLINK:
            raise UsageError(f"not a symbolic link: {path}")
        return node.linkname

    def xattrs(self, path: str) -> dict[str, bytes]:
        node = self.node(path, follow_symlinks=False)
        return self.image.index.xattrs(node.ino) if node.has_xattrs else {}

    def read(self, node: Node, offset: int, size: int) -> bytes:
        return trio.from_thread.run(self.image.read, node, offset, size, trio_token=self._token)

    def open(self, path: str) -> io.BufferedReader:
        node = self.node(path)
        if node.type is not EntryType.FILE:
            raise UsageError(f"not a regular file: {path}")
        return io.BufferedReader(LazyFile(self, node), buffer_size=1 << 20)

    def stats(self) -> dict:
        return self.image.stats()


class LazyFile(io.RawIOBase):
    """A seekable, read-only file whose bytes are fetched when read."""

    def __init__(self, image: SyncImage, node: Node):
        self._image, self._node, self._pos = image, node, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._node.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buf) -> int:
        data = self._image.read(self._node, self._pos, len(buf))
        buf[:len(data)] = data
        self._pos += len(data)
        return len(data)


def open_image(ref: str | Reference, *, platform: str | None = None,
               full_pull: bool = False, store: Store | None = None) -> SyncImage:
    """Open an image for browsing and lazy reads from ordinary Python code."""
    options = OpenOptions(Platform.parse(platform) if platform else None, full_pull=full_pull)
    return SyncImage(ref, options, store)


_TYPE_BITS = {
    EntryType.FILE: stat_mod.S_IFREG, EntryType.HARDLINK: stat_mod.S_IFREG,
    EntryType.DIR: stat_mod.S_IFDIR, EntryType.SYMLINK: stat_mod.S_IFLNK,
    EntryType.CHAR: stat_mod.S_IFCHR, EntryType.BLOCK: stat_mod.S_IFBLK,
    EntryType.FIFO: stat_mod.S_IFIFO,
}


def mode_of(node: Node) -> int:
    return _TYPE_BITS[node.type] | node.mode


def stat_result(node: Node) -> os.stat_result:
    t = node.mtime_ns / 1e9
    return os.stat_result((mode_of(node), node.ino, 0, node.nlink, node.uid, node.gid,
                           node.size, t, t, t))

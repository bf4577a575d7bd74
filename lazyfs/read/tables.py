"""Each layer's table and the merged index of an image, built once per machine.

A layer's table is looked for in the store (keyed by layer digest), then
among the image's published indexes, and only then built: by streaming a
gzip layer still in the registry through the indexer, or by the format's own
pass. The merged index is kept per manifest digest.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

import trio

from ..errors import CacheError, single_error
from ..formats import LayerTable, format_of
from ..formats.base import check_diff_id
from ..index.layertable import load_layer_table, save_layer_table, table_path
from ..index.memory import MemoryIndex
from ..index.merged import MergedIndex
from ..manifest import Descriptor
from ..store.blobs import Store
from .sources import RegistryBlob
from .streaming import LayerStream

log = logging.getLogger(__name__)

_UNSAVED: dict[Path, LayerTable] = {}
"""Tables built in this process and not yet saved (``save_tables``): an image
sharing the layer and opened meanwhile takes them from here."""

INDEX_CONCURRENCY = 2
"""Layers indexed by a pass over their bytes at once (TOC formats are not limited)."""


def layer_name(position: int, desc: Descriptor) -> str:
    """The directory name of a layer in a per-layer view."""
    return f"{position}-{desc.digest.partition(':')[2][:12]}"


async def layer_tables(descs: list[Descriptor], source, store: Store,
                       shared=None, defer: bool = False,
                       diff_ids: Sequence[str] = (), unsaved: list | None = None
                       ) -> list[LayerTable | None]:
    """Each layer's table; with ``defer``, ``None`` for a layer that would
    need a full pass over a blob still in the registry. A table whose pass
    hashed the layer's uncompressed bytes is checked against ``diff_ids``.
    With ``unsaved``, tables built here are added to it as ``(path, table)``
    for the caller to save (``save_tables``) rather than saved on the way."""
    tables: list[LayerTable | None] = [None] * len(descs)
    limit = trio.CapacityLimiter(INDEX_CONCURRENCY)

    async def one(i: int, desc: Descriptor) -> None:
        toc = format_of(desc.media_type, desc.annotations).toc
        async with contextlib.nullcontext() if toc else limit:
            tables[i] = await layer_table(desc, source.blob(desc), store, shared, defer,
                                          unsaved)

    with single_error():
        async with trio.open_nursery() as nursery:
            for i, desc in enumerate(descs):
                nursery.start_soon(one, i, desc)
    check_diff_ids(tables, descs, diff_ids)
    return tables


def check_diff_ids(tables: Sequence[LayerTable | None], descs: list[Descriptor],
                   diff_ids: Sequence[str]) -> None:
    """Each table whose pass hashed its layer's uncompressed bytes against
    the config's diff_id (tables may be fetched before the config is)."""
    for i, (table, desc) in enumerate(zip(tables, descs)):
        if table is not None and i < len(diff_ids):
            check_diff_id(table, desc.digest, diff_ids[i])


async def layer_table(desc: Descriptor, blob, store: Store, shared=None,
                      defer: bool = False, unsaved: list | None = None) -> LayerTable | None:
    fmt = format_of(desc.media_type, desc.annotations)
    store.sized_blob_path(desc.digest, desc.size)
    path = table_path(store, fmt.name, desc.digest)
    if (unsaved_table := _UNSAVED.get(path)) is not None:
        return unsaved_table
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
    if unsaved is not None:
        unsaved.append((path, table))
        _UNSAVED[path] = table
    else:
        await trio.to_thread.run_sync(save_layer_table, path, table)
    return table


def save_tables(unsaved: list) -> None:
    """Save the tables ``layer_tables`` left unsaved (blocking); a table that
    cannot be written is only not cached."""
    for path, table in unsaved:
        try:
            save_layer_table(path, table)
        except CacheError as e:
            log.warning("%s", e)
        finally:
            _UNSAVED.pop(path, None)


async def merged_index(manifest_digest: str, descs: list[Descriptor],
                       tables: list[LayerTable], store: Store,
                       layer_views: bool, behind: bool = False) -> MergedIndex | MemoryIndex:
    """The image's merged index from the store, else built; with ``behind``
    a new one is answered from memory and its file left to the caller
    (``MemoryIndex.persist``), which is off the way to the first answer."""
    path = store.index_path("merged-layers" if layer_views else "merged", manifest_digest)
    if path.exists():
        try:
            return await trio.to_thread.run_sync(MergedIndex.open, path)
        except CacheError:
            path.unlink(missing_ok=True)
    names = [layer_name(i, d) for i, d in enumerate(descs)]
    build = MemoryIndex.build if behind else MergedIndex.build
    return await trio.to_thread.run_sync(
        lambda: build(path, [t.entries for t in tables], layer_names=names,
                      per_layer=layer_views))

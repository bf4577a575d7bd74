"""Where the content of one layer's entries is read from.

Every layer answers ``read(locator, offset, size)``. A layer whose table is
known is read through the ``Reader`` (cache, coalesced ranges, readahead). A
gzip layer still downloading and being indexed is one more such source: it
waits until the layer has been checked against its digest, or, when the
caller accepts unchecked bytes (``early``), only until the spans holding the
range are inflated, and then reads the ordinary way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..formats import LayerTable, format_named, format_of
from ..manifest import Descriptor
from ..store.blobs import Store
from .reader import Layer, LayerStats, Reader
from .streaming import LayerStream


class LayerContent(Protocol):
    async def read(self, data: bytes, offset: int, size: int) -> bytes: ...


@dataclass
class TableContent:
    """A layer the reader serves."""

    reader: Reader
    position: int

    async def read(self, data: bytes, offset: int, size: int) -> bytes:
        return await self.reader.read(self.position, data, offset, size)


@dataclass
class StreamingContent:
    """A layer still on its way in; ``then`` serves it once it is indexed."""

    stream: LayerStream
    then: LayerContent
    early: bool = False

    async def read(self, data: bytes, offset: int, size: int) -> bytes:
        if self.early:
            found = await self.stream.read_early(data, offset, size)
            if found is not None:
                return found
        else:
            await self.stream.finished()
        return await self.then.read(data, offset, size)


def reader_layer(position: int, desc: Descriptor, table: LayerTable | None, source, resolved,
                 store: Store) -> Layer:
    """How the reader reaches one layer. A layer that cannot be read in part
    (one zstd frame) is served from its decompressed copy, verified against
    its diff_id, rather than inflated from its start for every read. A layer
    without a table yet gets its content reader with it (``LayerStream``);
    until then only its ``StreamingContent`` is read."""
    blob = source.blob(desc)
    if table is None:
        fmt = format_of(desc.media_type, desc.annotations)
        return Layer(desc.digest, None, blob, LayerStats(format=fmt.name, size=desc.size))
    stats = LayerStats(format=table.format, size=desc.size)
    fmt = format_named(table.format)
    if fmt.whole_only(table):
        from .decompressed import DecompressedBlob, PlainTarReader
        diff_id = resolved.config.diff_ids[position]
        return Layer(desc.digest, PlainTarReader(), DecompressedBlob(blob, diff_id, store), stats)
    return Layer(desc.digest, fmt.reader(table), blob, stats)

"""Layer formats: one ``LayerFormat`` object per format, the only way the
rest of lazyfs learns what a format can do.

Each format module provides ``build(desc, blob) -> LayerTable`` (read as
little of the blob as the format allows) and ``reader(table) ->
ContentReader`` (plan and decode reads later, from the persisted table
alone); shareable ones also ``build_from_file``, ``check_table`` and
``state_differences``, to check a table that came from elsewhere. The object
adds what callers branch on, as flags, so that no code outside this package
compares format names or imports a format module. What the formats share is
in modules named for the idea: ``spans.py`` (checkpointed spans, gzip and
zstd), ``deflate.py`` (resuming deflate), ``toc.py`` (eStargz and
zstd:chunked TOCs).

``StreamIndexer`` and ``GzipReader`` index and read the one streamable format
while it downloads.
"""

from __future__ import annotations

import importlib
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..blob import BlobSource
from ..errors import LayerFormatError, UnsupportedMediaType
from .base import ContentReader, LayerTable, Piece, entry_differences, read_content, slice_piece
from .entry import Entry

__all__ = ["ContentReader", "GzipReader", "LayerFormat", "LayerTable", "Piece", "FORMATS",
           "StreamIndexer", "build_table", "detect_format", "format_named", "format_of",
           "open_reader", "read_content", "slice_piece"]

ESTARGZ_TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
ZSTD_CHUNKED_MANIFEST_POSITION = "io.github.containers.zstd-chunked.manifest-position"
ZSTD_CHUNKED_MANIFEST_CHECKSUM = "io.github.containers.zstd-chunked.manifest-checksum"
ZSTD_CHUNKED_LEGACY_CHECKSUM = "io.containers.zstd-chunked.manifest-checksum"
"""The key stargz-snapshotter (ctr-remote) and containers/storage before 2022-11 write."""

_TAR = ("application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.docker.image.rootfs.diff.tar")
_GZIP = ("application/vnd.oci.image.layer.v1.tar+gzip",
         "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
         "application/vnd.docker.image.rootfs.diff.tar.gzip",
         "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")
_ZSTD = ("application/vnd.oci.image.layer.v1.tar+zstd",
         "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd")


@dataclass(frozen=True)
class LayerFormat:
    name: str
    """As shown to users and kept in tables: ``tar``, ``gzip``, ``estargz``, ``zstd``, ``zstd:chunked``."""
    media_types: tuple[str, ...]
    annotations: tuple[str, ...] = ()
    """Descriptor annotations that mark this format among those of its media types."""
    streamable: bool = False
    """Its table is built in one pass over the whole blob, which can run on the
    bytes as they arrive: a first mount streams the layer and indexes it on the way."""
    shareable: bool = False
    """Its table can be published to the registry (``lazyfs index push``) and
    checked against the layer by ``index verify``."""
    costly: bool = False
    """Building its table needs the whole blob: worth publishing once built."""
    marks_prefetch: bool = False
    """Producers may mark files to fetch before any read (``prefetch``)."""
    toc: bool = False
    """Its table is read from a TOC in the blob, a request or two, never a
    pass over the layer: worth fetching for every layer at once."""
    _module: str = ""

    def _impl(self):
        return importlib.import_module(f".{self._module}", __name__)

    def preload(self) -> None:
        """Import the format's module now rather than at its first layer."""
        self._impl()

    async def build(self, desc, blob: BlobSource) -> LayerTable:
        """Entries of ``desc`` (anything with ``media_type``, ``annotations``,
        ``digest``, ``size``) read through ``blob``."""
        return await self._impl().build(desc, blob)

    def build_from_file(self, path, layer: str) -> LayerTable:
        """The table of a verified local blob, blocking (formats that are shareable)."""
        return self._impl().build_from_file(path, layer)

    def reader(self, table: LayerTable) -> ContentReader:
        return self._impl().reader(table)

    def whole_only(self, table: LayerTable) -> bool:
        """Whether reads of this layer are served from its decompressed copy
        (a zstd layer of one frame): ranges of the blob cannot answer them."""
        return not table.lazy

    def check_table(self, table: LayerTable, desc) -> None:
        """What can be checked of a table from elsewhere (a shared index)
        without the blob: it is of this format and for the layer ``desc``, and
        every locator points inside what the table and the layer hold.
        ``LayerFormatError`` otherwise (formats that are shareable)."""
        if table.format != self.name:
            raise LayerFormatError(f"format {table.format!r}, the layer is {self.name!r}")
        try:
            self._impl().check_table(table, desc)
        except (ValueError, IndexError, TypeError, UnicodeDecodeError, zlib.error) as e:
            raise LayerFormatError(f"malformed state ({e})") from None
        if not all(isinstance(e.name, str) for e in table.entries):
            raise LayerFormatError("malformed entry names")

    def table_differences(self, table: LayerTable, desc, blob: Path) -> list[str]:
        """What is wrong with a table from elsewhere for the verified local
        ``blob`` (empty: it reads exactly like a table built here). As costly
        as building, and blocking: run it in a worker thread."""
        built = self.build_from_file(blob, desc.digest)
        return (entry_differences(table.entries, built.entries)
                + self._impl().state_differences(table, built, blob))

    def prefetch(self, table: LayerTable) -> Sequence[Entry]:
        """Files the producer marked to be fetched before any read (eStargz's
        ``.prefetch.landmark``), in blob order."""
        return self._impl().prioritized(table) if self.marks_prefetch else ()


TAR = LayerFormat("tar", _TAR, shareable=True, _module="tar")
GZIP = LayerFormat("gzip", _GZIP, streamable=True, shareable=True, costly=True, _module="gzip")
ESTARGZ = LayerFormat("estargz", _GZIP, (ESTARGZ_TOC_DIGEST,), marks_prefetch=True, toc=True,
                      _module="estargz")
ZSTD = LayerFormat("zstd", _ZSTD, shareable=True, _module="zstd")
ZSTD_CHUNKED = LayerFormat("zstd:chunked", _ZSTD,
                           (ZSTD_CHUNKED_MANIFEST_CHECKSUM, ZSTD_CHUNKED_LEGACY_CHECKSUM),
                           toc=True, _module="zstdchunked")
FORMATS = (ESTARGZ, ZSTD_CHUNKED, TAR, GZIP, ZSTD)
"""Marked formats first: the first whose media type matches and whose
annotations (if it has any) are present wins."""


def __getattr__(name: str):
    """``GzipReader`` and ``StreamIndexer``, imported when first asked for:
    an image without a gzip layer to index never loads them."""
    if name in ("GzipReader", "StreamIndexer"):
        from . import gzip
        return getattr(gzip, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def format_of(media_type: str, annotations: dict[str, str] | None = None) -> LayerFormat:
    """The format of a layer descriptor, from its media type and annotations."""
    annotations = annotations or {}
    for fmt in FORMATS:
        if media_type in fmt.media_types and (
                not fmt.annotations or any(k in annotations for k in fmt.annotations)):
            return fmt
    raise UnsupportedMediaType(f"unsupported layer media type {media_type!r}")


def format_named(name: str) -> LayerFormat:
    for fmt in FORMATS:
        if fmt.name == name:
            return fmt
    raise UnsupportedMediaType(f"unknown layer format {name!r}")


def detect_format(media_type: str, annotations: dict[str, str] | None) -> str:
    """The format name for a layer descriptor."""
    return format_of(media_type, annotations).name


async def build_table(desc, blob: BlobSource) -> LayerTable:
    return await format_of(desc.media_type, desc.annotations).build(desc, blob)


def open_reader(table: LayerTable) -> ContentReader:
    return format_named(table.format).reader(table)

"""Layer formats: one ``LayerFormat`` object per format, the only way the
rest of lazyfs learns what a format can do.

Each format module provides ``build(desc, blob) -> LayerTable`` (read as
little of the blob as the format allows) and ``reader(table) ->
ContentReader`` (plan and decode reads later, from the persisted table
alone); the object adds what callers branch on, as flags, so that no code
outside this package compares format names.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Sequence

from ..blob import BlobSource
from ..errors import UnsupportedMediaType
from .base import ContentReader, LayerTable, Piece, read_content, slice_piece
from .entry import Entry

__all__ = ["ContentReader", "LayerFormat", "LayerTable", "Piece", "FORMATS", "build_table",
           "detect_format", "format_named", "format_of", "open_reader", "read_content",
           "slice_piece"]

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
    _module: str = ""

    def _impl(self):
        return importlib.import_module(f".{self._module}", __name__)

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

    def prefetch(self, table: LayerTable) -> Sequence[Entry]:
        """Files the producer marked to be fetched before any read (eStargz's
        ``.prefetch.landmark``), in blob order."""
        return self._impl().prioritized(table) if self.marks_prefetch else ()


TAR = LayerFormat("tar", _TAR, shareable=True, _module="tar")
GZIP = LayerFormat("gzip", _GZIP, streamable=True, shareable=True, costly=True, _module="gzip")
ESTARGZ = LayerFormat("estargz", _GZIP, (ESTARGZ_TOC_DIGEST,), marks_prefetch=True,
                      _module="estargz")
ZSTD = LayerFormat("zstd", _ZSTD, shareable=True, _module="zstd")
ZSTD_CHUNKED = LayerFormat("zstd:chunked", _ZSTD,
                           (ZSTD_CHUNKED_MANIFEST_CHECKSUM, ZSTD_CHUNKED_LEGACY_CHECKSUM),
                           _module="zstdchunked")
FORMATS = (ESTARGZ, ZSTD_CHUNKED, TAR, GZIP, ZSTD)
"""Marked formats first: the first whose media type matches and whose
annotations (if it has any) are present wins."""


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

"""Layer formats: one module per format, each with the same two functions.

``build(desc, blob) -> LayerTable`` reads as little of the blob as the format
allows and returns its entries; ``reader(table) -> ContentReader`` plans and
decodes reads of any entry later, from the persisted table alone.
"""

from __future__ import annotations

import importlib

from ..blob import BlobSource
from ..errors import UnsupportedMediaType
from .base import ContentReader, LayerTable, Piece, read_content, slice_piece

__all__ = ["ContentReader", "LayerTable", "Piece", "build_table", "detect_format",
           "open_reader", "read_content", "slice_piece"]

ESTARGZ_TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
ZSTD_CHUNKED_MANIFEST_POSITION = "io.github.containers.zstd-chunked.manifest-position"
ZSTD_CHUNKED_MANIFEST_CHECKSUM = "io.github.containers.zstd-chunked.manifest-checksum"
ZSTD_CHUNKED_LEGACY_CHECKSUM = "io.containers.zstd-chunked.manifest-checksum"
"""The key stargz-snapshotter (ctr-remote) and containers/storage before 2022-11 write."""

_MODULES = {
    "tar": "tar",
    "gzip": "gzip",
    "estargz": "estargz",
    "zstd": "zstd",
    "zstd:chunked": "zstdchunked",
}

_TAR = ("application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.docker.image.rootfs.diff.tar")
_GZIP = ("application/vnd.oci.image.layer.v1.tar+gzip",
         "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
         "application/vnd.docker.image.rootfs.diff.tar.gzip",
         "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")
_ZSTD = ("application/vnd.oci.image.layer.v1.tar+zstd",
         "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd")


def detect_format(media_type: str, annotations: dict[str, str] | None) -> str:
    """The format name for a layer descriptor, from its media type and annotations."""
    annotations = annotations or {}
    if media_type in _TAR:
        return "tar"
    if media_type in _GZIP:
        return "estargz" if ESTARGZ_TOC_DIGEST in annotations else "gzip"
    if media_type in _ZSTD:
        if ZSTD_CHUNKED_MANIFEST_CHECKSUM in annotations \
                or ZSTD_CHUNKED_LEGACY_CHECKSUM in annotations:
            return "zstd:chunked"
        return "zstd"
    raise UnsupportedMediaType(f"unsupported layer media type {media_type!r}")


def _module(fmt: str):
    return importlib.import_module(f".{_MODULES[fmt]}", __name__)


async def build_table(desc, blob: BlobSource) -> LayerTable:
    """Entries of the layer ``desc`` (anything with ``media_type``,
    ``annotations``, ``digest``, ``size``) read through ``blob``."""
    return await _module(detect_format(desc.media_type, desc.annotations)).build(desc, blob)


def open_reader(table: LayerTable) -> ContentReader:
    return _module(table.format).reader(table)

"""Helpers for testing code that uses lazyfs, and lazyfs itself; never imported by lazyfs.

As ``trio.testing`` is for trio: an OCI registry in memory, plugged into the
registry client's transport seam, and builders for layers and images in
every format lazyfs reads::

    from lazyfs.registry import RegistryClient
    from lazyfs.testing import MemoryRegistry, build_layer

    registry = MemoryRegistry()
    pushed = registry.push_image("library/demo", "v1",
                                 [build_layer("estargz", {"etc/hostname": "demo\\n"})])
    async with RegistryClient(registry.options()) as client:
        ...

The modules that start real processes (a distribution registry, a fault
proxy, containerd, image pushes over HTTP) are imported by name and are not
re-exported here.
"""

from .faults import KINDS, Fault, Recorded
from .layers import (OPAQUE, WHITEOUT, Device, Dir, Entries, File, Hardlink, Layer, Symlink,
                     gzip_layer, make_tar, tar_layer, uncompressed, zstd_layer)
from .manifests import BuiltImage, PushedImage, config, image, index
from .memory import MemoryRegistry
from .toc import estargz_layer, zstd_chunked_layer

_BUILDERS = {"tar": tar_layer, "gzip": gzip_layer, "estargz": estargz_layer,
             "zstd": zstd_layer, "zstd:chunked": zstd_chunked_layer}
FORMATS = tuple(_BUILDERS)
"""The layer formats lazyfs reads, by the names ``LayerTable.format`` uses."""


def build_layer(fmt: str, entries: Entries, **kw) -> Layer:
    """The layer of ``entries`` in ``fmt``, one of ``FORMATS``; keywords go to
    that format's builder (``chunk_size``, ``frame_size``, ``prefetch``, ...)."""
    if fmt not in _BUILDERS:
        raise ValueError(f"unknown layer format {fmt!r}; expected one of {FORMATS}")
    return _BUILDERS[fmt](entries, **kw)


__all__ = [
    "FORMATS", "KINDS", "OPAQUE", "WHITEOUT", "BuiltImage", "Device", "Dir", "Entries", "Fault",
    "File", "Hardlink", "Layer", "MemoryRegistry", "PushedImage", "Recorded", "Symlink",
    "build_layer", "config", "estargz_layer", "gzip_layer", "image", "index", "make_tar",
    "tar_layer", "uncompressed", "zstd_chunked_layer", "zstd_layer",
]

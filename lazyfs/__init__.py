"""lazyfs: mount and inspect container images straight from a registry,
fetching only the bytes that are read.

The public surface is small: ``open_image`` for browsing and lazy reads from
Python, ``parse_reference`` for docker-style references, and the
``LazyfsError`` family (``lazyfs.errors``). Everything else is internal.
"""

__version__ = "0.1.0"  # before the imports: modules read it while loading

from .errors import (CacheError, DigestMismatch, InvalidReference, LayerFormatError,
                     LazyfsError, MountError, NoMatchingPlatform, NotFound, RegistryError,
                     RegistryUnreachable, Unauthorized, UnsafeEntry, UnsupportedMediaType,
                     UsageError)
from .image import open_image
from .reference import Reference, parse_reference

__all__ = [
    "CacheError", "DigestMismatch", "InvalidReference", "LayerFormatError", "LazyfsError",
    "MountError", "NoMatchingPlatform", "NotFound", "Reference", "RegistryError",
    "RegistryUnreachable", "Unauthorized", "UnsafeEntry", "UnsupportedMediaType", "UsageError",
    "open_image", "parse_reference",
]

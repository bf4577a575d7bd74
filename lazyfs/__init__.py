"""lazyfs: mount and inspect container images straight from a registry,
fetching only the bytes that are read.

The public surface is small: ``open_image`` for browsing and lazy reads from
Python, ``parse_reference`` for docker-style references, and the
``LazyfsError`` family (``lazyfs.errors``). Everything else is internal.
"""

from ._version import __version__
from .errors import (CacheError, CorruptData, CredentialsError, DigestMismatch, InvalidManifest,
                     InvalidReference, IsADirectory, LayerFormatError,
                     LazyfsError, MountError, NoMatchingPlatform, NotADirectory, NotASymlink,
                     NotFound, PathLoop, PathNotFound, RegistryError,
                     RegistryUnreachable, Unauthorized, UnsafeEntry, UnsupportedMediaType,
                     UsageError)
from .reference import Reference, parse_reference


def __getattr__(name: str):
    # open_image pulls in trio, httpx and the whole read path: loaded on first
    # use so that light commands (and ``import lazyfs``) stay quick.
    if name == "open_image":
        from .sync import open_image
        return open_image
    raise AttributeError(f"module 'lazyfs' has no attribute {name!r}")

__all__ = [
    "CacheError", "CorruptData", "CredentialsError", "DigestMismatch", "InvalidManifest", "InvalidReference", "IsADirectory", "LayerFormatError", "LazyfsError",
    "MountError", "NoMatchingPlatform", "NotADirectory", "NotASymlink", "NotFound", "PathLoop",
    "PathNotFound", "Reference", "RegistryError",
    "RegistryUnreachable", "Unauthorized", "UnsafeEntry", "UnsupportedMediaType", "UsageError",
    "__version__", "open_image", "parse_reference",
]

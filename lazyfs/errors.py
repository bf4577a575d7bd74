"""The one exception family of lazyfs.

Every error a user can meet is a ``LazyfsError``. Each class carries the
process exit code the CLI uses for it and the errno the FUSE layer answers
with, so neither the CLI nor the mount needs its own translation table::

    LazyfsError                      exit 1   EIO
    ├── UsageError                   exit 2   EINVAL
    │   ├── IsADirectory             exit 2   EISDIR   (also IsADirectoryError)
    │   └── NotASymlink              exit 2   EINVAL   (also OSError)
    ├── InvalidReference             exit 2   EINVAL
    ├── NotFound                     exit 3   ENOENT
    │   ├── SymlinkLoop              exit 3   ELOOP
    │   │   └── PathLoop             exit 3   ELOOP    (also OSError)
    │   ├── PathNotFound             exit 3   ENOENT   (also FileNotFoundError)
    │   └── NotADirectory            exit 3   ENOTDIR  (also NotADirectoryError)
    ├── Unauthorized                 exit 4   EACCES
    ├── NoMatchingPlatform           exit 5   ENOENT
    ├── DigestMismatch               exit 6   EIO
    ├── RegistryUnreachable          exit 7   EIO
    ├── RegistryError                exit 8   EIO
    │   ├── RangeNotSupported        exit 8   EIO
    │   └── RegistryInterrupted      exit 8   EIO
    ├── UnsupportedMediaType         exit 9   EIO
    ├── LayerFormatError             exit 9   EIO
    │   ├── CorruptData              exit 9   EIO
    │   ├── InvalidManifest          exit 9   EIO
    │   └── UnsafeEntry              exit 9   EIO
    ├── MountError                   exit 10  EIO
    ├── CacheError                   exit 11  EIO
    └── CredentialsError             exit 12  EACCES

The classes marked "also" are for the Python API (``lazyfs.sync``), whose
methods are documented as working like ``os.stat``, ``os.listdir``, ``open``:
they are the ``LazyfsError`` kind they always were *and* the ``OSError``
subclass Python code catches, with ``errno`` and ``filename`` set
(``path_error``).
"""

from __future__ import annotations

import contextlib
import errno as _errno
import logging
import os
import sys
from typing import Iterator, TypeVar

WARNINGS = logging.getLogger("lazyfs.warning")
"""What the user should hear about although the command goes on (a broken
credential file skipped, a cache size clamped): ``warn`` logs it here, and
the CLI prints each one as a ``lazyfs: warning:`` line (``show_warnings``)."""


class LazyfsError(Exception):
    """Base of every error lazyfs raises on purpose."""

    exit_code = 1
    errno = _errno.EIO


class UsageError(LazyfsError):
    """A command was called with arguments that cannot work together."""

    exit_code = 2
    errno = _errno.EINVAL


class InvalidReference(LazyfsError):
    """A reference does not follow the distribution/reference grammar."""

    exit_code = 2
    errno = _errno.EINVAL


class NotFound(LazyfsError):
    """The registry (or the image) has no such manifest, blob, tag or path."""

    exit_code = 3
    errno = _errno.ENOENT


class SymlinkLoop(NotFound):
    """Resolving a path inside the image met too many symbolic links."""

    errno = _errno.ELOOP


class PathLoop(SymlinkLoop, OSError):
    """Too many symbolic links, from the Python API (also an ``OSError``, ELOOP)."""


class PathNotFound(NotFound, FileNotFoundError):
    """No such path in the image, from the Python API (also a ``FileNotFoundError``)."""


class NotADirectory(NotFound, NotADirectoryError):
    """Listing what is not a directory (also a ``NotADirectoryError``)."""

    errno = _errno.ENOTDIR


class IsADirectory(UsageError, IsADirectoryError):
    """Opening a directory as a file (also an ``IsADirectoryError``)."""

    errno = _errno.EISDIR


class NotASymlink(UsageError, OSError):
    """Reading the target of what is not a symbolic link (also an ``OSError``, EINVAL)."""


PathErrorT = TypeVar("PathErrorT", PathLoop, PathNotFound, NotADirectory, IsADirectory,
                     NotASymlink)


def path_error(cls: type[PathErrorT], path: str) -> PathErrorT:
    """``cls`` for ``path`` with errno, strerror and filename set, so that
    ``str()`` reads as Python's own: ``[Errno 2] No such file or directory: '/x'``."""
    return cls(cls.errno, os.strerror(cls.errno), path)


class Unauthorized(LazyfsError):
    """The registry refused the credentials we had (or our lack of them)."""

    exit_code = 4
    errno = _errno.EACCES


class NoMatchingPlatform(LazyfsError):
    """An index lists no manifest for the requested platform."""

    exit_code = 5
    errno = _errno.ENOENT


class DigestMismatch(LazyfsError):
    """Bytes did not hash to the digest the registry published for them."""

    exit_code = 6
    errno = _errno.EIO


class RegistryUnreachable(LazyfsError):
    """No connection could be made, or TLS failed."""

    exit_code = 7
    errno = _errno.EIO


class RegistryError(LazyfsError):
    """The registry answered, but not in a way we can use."""

    exit_code = 8
    errno = _errno.EIO


class RangeNotSupported(RegistryError):
    """The registry answered a Range request with the whole blob; callers fall back to a full pull."""


class RegistryInterrupted(RegistryError):
    """The registry broke off an answer or was briefly unable to give one
    (a body cut short, HTTP 5xx, 408 or 429): asking again later may succeed."""

    retry_after: float | None = None
    """Seconds the registry asked us to wait (``Retry-After``), if it said."""


class UnsupportedMediaType(LazyfsError):
    """A manifest or layer of a kind lazyfs does not read (e.g. schema1)."""

    exit_code = 9
    errno = _errno.EIO


class LayerFormatError(LazyfsError):
    """A layer blob is not what its media type or TOC claims."""

    exit_code = 9
    errno = _errno.EIO


class CorruptData(LayerFormatError):
    """Compressed bytes do not decode (a broken stream, not a digest that
    differs): the blob is damaged, or the index that located them is wrong."""


class InvalidManifest(LayerFormatError):
    """A manifest, index or image config is not valid JSON of its media type,
    wherever it came from (a registry, a layout, an archive, the store)."""


class UnsafeEntry(LayerFormatError):
    """A tar entry would escape the image tree or cannot be represented."""


class MountError(LazyfsError):
    """The FUSE mount could not be set up or torn down."""

    exit_code = 10
    errno = _errno.EIO


class CacheError(LazyfsError):
    """The local store is unusable (permissions, space, corruption)."""

    exit_code = 11
    errno = _errno.EIO


class CredentialsError(LazyfsError):
    """A credential file or helper is unusable (bad JSON, bad base64, a helper
    that fails): the user's configuration, not the command line, is wrong."""

    exit_code = 12
    errno = _errno.EACCES


def naming(subject: str, error: object, mark: str = "") -> str:
    """``error``'s message led by ``subject`` (``layer sha256:…``), unless it
    already holds ``mark`` (by default ``subject``): a message that names its
    layer or blob is not prefixed with it again."""
    text = str(error)
    return text if (mark or subject) in text else f"{subject}: {text}"


@contextlib.contextmanager
def single_error() -> Iterator[None]:
    """Around a trio nursery: when every task that failed failed with a
    ``LazyfsError``, raise the first of them alone, as a caller that did not
    start tasks expects. A group of a single exception of any kind (one task
    failed, the others were cancelled) is that exception, so it is raised
    alone too; any other failure (a bug among several) is raised whole."""
    try:
        yield
    except BaseExceptionGroup as group:
        error: BaseException | None = lazyfs_error_in(group)
        if error is None and len(group.exceptions) == 1 and \
                not isinstance(group.exceptions[0], BaseExceptionGroup):
            error = group.exceptions[0]
        if error is None:
            raise
        raise error from None


def lazyfs_error_in(group: BaseExceptionGroup) -> LazyfsError | None:
    """The error to report for a task group that failed: its first
    ``LazyfsError`` if every leaf is one (concurrent layers failing for
    reasons of their own), else None, so a bug elsewhere still shows whole."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        e = stack.pop(0)
        if isinstance(e, BaseExceptionGroup):
            stack.extend(e.exceptions)
        else:
            leaves.append(e)
    if leaves and all(isinstance(e, LazyfsError) for e in leaves):
        return leaves[0]  # type: ignore[return-value]
    return None


def warn(message: str) -> None:
    """Tell the user, in one line, about something done in their stead."""
    WARNINGS.warning(message)


def show_warnings() -> None:
    """Print ``warn``'s messages on stderr (whatever ``sys.stderr`` is when
    one comes), once however often called."""
    if not any(isinstance(h, _ToStderr) for h in WARNINGS.handlers):
        handler = _ToStderr()
        handler.setFormatter(logging.Formatter("lazyfs: warning: %(message)s"))
        WARNINGS.addHandler(handler)


class _ToStderr(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)

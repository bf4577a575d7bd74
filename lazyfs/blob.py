"""The seam between layer formats and fetching.

A format never talks to a registry or the cache: it is handed a
``BlobSource`` and asks it for byte ranges or for the whole verified blob.
Who answers (the registry directly, the chunk cache, a local file) is the
reader's business, which keeps every format testable on a plain file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol

import trio

from .errors import DigestMismatch, LayerFormatError


class BlobSource(Protocol):
    digest: str
    size: int

    async def read_range(self, start: int, end: int) -> bytes:
        """Exactly bytes ``[start, end)`` of the blob, or an error."""

    async def path(self) -> Path:
        """A local file holding the whole blob, verified against ``digest``."""

    def local_path(self) -> Path | None:
        """The verified local file, if ``path()`` has already made one."""


class FileBlob:
    """A blob that already lies in a local file (store, OCI layout, tests)."""

    def __init__(self, path: Path | str, digest: str, size: int | None = None):
        self._path = Path(path)
        self.digest = digest
        self.size = os.path.getsize(self._path) if size is None else size
        self._verified = False

    def local_path(self) -> Path | None:
        return self._path if self._verified else None

    async def read_range(self, start: int, end: int) -> bytes:
        check_range(self, start, end)
        return await trio.to_thread.run_sync(_pread, self._path, start, end - start)

    async def path(self) -> Path:
        if not self._verified:
            got = await trio.to_thread.run_sync(file_digest, self._path)
            if got != self.digest:
                raise DigestMismatch(f"blob {self.digest}: content hashes to {got}")
            self._verified = True
        return self._path


def check_range(blob: BlobSource, start: int, end: int) -> None:
    if start < 0 or end > blob.size or start > end:
        raise LayerFormatError(
            f"layer {blob.digest}: range {start}-{end} outside blob of {blob.size} bytes")


def _pread(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        data = os.pread(f.fileno(), length, offset)
    if len(data) != length:
        raise LayerFormatError(f"{path.name}: short read at {offset}")
    return data


def file_digest(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()

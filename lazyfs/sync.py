"""``open_image``: the image for ordinary (non-async) Python code.

``open_image_async`` needs a trio loop; this module runs one in a private
thread and sends each call there, so browsing and lazy reads work from any
plain Python program.
"""

from __future__ import annotations

import io
import os
import threading
from typing import Iterator

import trio

from .errors import (IsADirectory, NotADirectory, NotASymlink, NotFound, PathLoop, PathNotFound,
                     SymlinkLoop, UsageError, path_error)
from .formats.entry import EntryType
from .image import Image, OpenOptions, open_image_async
from .index.merged import Node
from .index.tree import mode_of
from .manifest import Platform
from .reference import Reference
from .store.blobs import Store

__all__ = ["LazyFile", "SyncImage", "mode_of", "open_image", "stat_result"]


class SyncImage:
    """``open_image(ref)``: the image for ordinary (non-async) Python code.

    A private trio thread holds the registry connection; every call is sent
    there and waited for, so this object may be used from any one thread."""

    def __init__(self, ref: str | Reference, options: OpenOptions | None = None,
                 store: Store | None = None):
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._image: Image | None = None
        self._token = None
        self._done: trio.Event | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main, ref, options, store),
                                        daemon=True, name="lazyfs-image")
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    async def _main(self, ref, options, store) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._done = trio.Event()
        try:
            async with open_image_async(ref, options, store) as image:
                self._image = image
                self._ready.set()
                await self._done.wait()
        except BaseException as e:  # handed to the caller's thread
            self._error = e
            self._ready.set()

    def close(self) -> None:
        if self._done is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._done.set, trio_token=self._token)
            self._thread.join()

    def __enter__(self) -> SyncImage:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def image(self) -> Image:
        assert self._image is not None
        return self._image

    @property
    def ref(self) -> Reference:
        return self.image.ref

    @property
    def digest(self) -> str:
        return self.image.digest

    def node(self, path: str, follow_symlinks: bool = True) -> Node:
        """The node at ``path``; a path that is not there raises what
        ``os.stat`` would (``PathNotFound``, ``PathLoop``)."""
        try:
            return self.image.index.resolve(path, follow=follow_symlinks)
        except SymlinkLoop:
            raise path_error(PathLoop, path) from None
        except NotFound:
            raise path_error(PathNotFound, path) from None

    def stat(self, path: str, follow_symlinks: bool = True) -> os.stat_result:
        return stat_result(self.node(path, follow_symlinks))

    def listdir(self, path: str = "/") -> list[str]:
        node = self.node(path)
        if node.type is not EntryType.DIR:
            raise path_error(NotADirectory, path)
        return [name for name, _, _ in self.image.index.readdir(node.ino)]

    def walk(self, top: str = "/") -> Iterator[tuple[str, list[str], list[str]]]:
        """Like ``os.walk`` (top-down, symlinks to directories not followed)."""
        node = self.node(top)
        stack = [(top.rstrip("/") or "/", node)]
        while stack:
            path, node = stack.pop()
            dirs, files, subdirs = [], [], []
            for name, child, _ in self.image.index.readdir(node.ino):
                if child.type is EntryType.DIR:
                    dirs.append(name)
                    subdirs.append((os.path.join(path, name), child))
                else:
                    files.append(name)
            yield path, dirs, files
            stack.extend(reversed(subdirs))

    def readlink(self, path: str) -> str:
        node = self.node(path, follow_symlinks=False)
        if node.type is not EntryType.SYMLINK:
            raise path_error(NotASymlink, path)
        return node.linkname

    def xattrs(self, path: str) -> dict[str, bytes]:
        node = self.node(path, follow_symlinks=False)
        return self.image.index.xattrs(node.ino) if node.has_xattrs else {}

    def read(self, node: Node, offset: int, size: int) -> bytes:
        return trio.from_thread.run(self.image.read, node, offset, size, trio_token=self._token)

    def open(self, path: str) -> io.BufferedReader:
        node = self.node(path)
        if node.type is EntryType.DIR:
            raise path_error(IsADirectory, path)
        if node.type is not EntryType.FILE:
            raise UsageError(f"not a regular file: {path}")
        return io.BufferedReader(LazyFile(self, node), buffer_size=1 << 20)

    def stats(self) -> dict:
        return self.image.stats()


class LazyFile(io.RawIOBase):
    """A seekable, read-only file whose bytes are fetched when read."""

    def __init__(self, image: SyncImage, node: Node):
        self._image, self._node, self._pos = image, node, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._node.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buf) -> int:
        data = self._image.read(self._node, self._pos, len(buf))
        buf[:len(data)] = data
        self._pos += len(data)
        return len(data)


def open_image(ref: str | Reference, *, platform: str | None = None,
               full_pull: bool = False, store: Store | None = None) -> SyncImage:
    """Open an image for browsing and lazy reads from ordinary Python code."""
    options = OpenOptions(Platform.parse(platform) if platform else None, full_pull=full_pull)
    return SyncImage(ref, options, store)


def stat_result(node: Node) -> os.stat_result:
    t = node.mtime_ns / 1e9
    return os.stat_result((mode_of(node), node.ino, 0, node.nlink, node.uid, node.gid,
                           node.size, t, t, t))

"""The image's tree as a filesystem asks about it, whether or not it is indexed yet.

A mount of an image still being indexed must answer from what is already
certain (``ProgressiveIndex``) and, once the merged index exists, from that
alone, with the provisional inodes it gave out translated to final ones.
``Tree`` is that hand-over in one object, so the filesystem above it asks
the same questions in both cases.
"""

from __future__ import annotations

import os
import stat
from typing import Iterator

import trio

from ..formats.entry import EntryType
from .merged import ROOT_INO, MergedIndex, Node, mode_of
from .progressive import FINAL, ProgressiveIndex

__all__ = ["Tree", "mode_of"]


class Tree:
    """Lookups, attributes, listings and parents of an image's tree."""

    def __init__(self, index: MergedIndex | None = None,
                 progress: ProgressiveIndex | None = None):
        if index is None and progress is None:
            raise ValueError("a tree needs a merged index or a progressive one")
        self._index = index
        self._progress = progress
        self._parents: dict[int, int] = {ino: ROOT_INO for _, ino in
                                         (index.layer_roots if index is not None else [])}
        self._totals: tuple[int, int] | None = None
        self._totals_lock = trio.Lock()
        self._xattr_inos: frozenset[int] | None = None
        self._xattr_names: frozenset[str] | None = None

    @property
    def index(self) -> MergedIndex | None:
        """The merged index, once it exists."""
        if self._index is None:
            self._index = self._progress.final
        return self._index

    @property
    def lasting(self) -> bool:
        """Whether answers are final, so that the kernel may cache them:
        false while the image is still being indexed."""
        return self._progress is None or self._progress.settled

    def settle(self, index: MergedIndex) -> None:
        """Answer from ``index`` from now on: the file of the index this tree
        answered from memory, with the same inodes, order and offsets."""
        self._index = index

    async def merged(self) -> MergedIndex:
        """The merged index, waiting for it; the indexing error if it failed."""
        if self.index is None:
            self._index = await self._progress.wait_final()
        return self._index

    async def lookup(self, parent: int, name: str) -> Node | None:
        if self.index is None:
            found = await self._progress.lookup(parent, name)
            if found is not FINAL:
                return found
        index = await self.merged()
        parent = self._final(parent)
        node = index.lookup(parent, name)
        if node is not None and node.type is EntryType.DIR:
            self._parents[node.ino] = parent
        return node

    async def getattr(self, ino: int) -> Node:
        if self.index is None:
            return await self._progress.getattr(ino)
        return self.index.getattr(self._final(ino))

    async def xattrs(self, ino: int) -> dict[str, bytes]:
        if self.index is None and (early := self._progress.xattrs(ino)) is not None:
            return early
        return (await self.merged()).xattrs(self._final(ino))

    def without_xattrs(self, ino: int) -> bool:
        """Whether ``ino`` certainly has no xattrs, known without a query
        once the merged index exists (``ls -l`` asks twice per entry)."""
        index = self.index
        if index is None:
            return False
        if self._xattr_inos is None:
            self._xattr_inos = index.xattr_inodes()
        return self._final(ino) not in self._xattr_inos

    def nowhere(self, name: str) -> bool:
        """Whether no entry of the image has the xattr ``name``: known only
        once the merged index exists (false until then)."""
        index = self.index
        if index is None:
            return False
        if self._xattr_names is None:
            self._xattr_names = index.xattr_names()
        return name not in self._xattr_names

    async def readdir(self, ino: int, start: int = 0) -> Iterator[tuple[str, Node, int]]:
        """``(name, node, next offset)`` of the children of ``ino`` from
        ``start``; waits for the merged index."""
        index = await self.merged()
        return self._listing(index, self._final(ino), start)

    async def stat_listing(self, ino: int, limit: int, offset: int = 0) -> list[tuple]:
        """Up to ``limit`` children of ``ino`` from ``offset`` as ``stat``
        rows (``MergedIndex.stat_listing``); waits for the merged index."""
        index = await self.merged()
        ino = self._final(ino)
        rows = index.stat_listing(ino, limit, offset)
        parents, is_dir = self._parents, stat.S_ISDIR
        for row in rows:
            if is_dir(row[2]):
                parents[row[1]] = ino
        return rows

    def _listing(self, index: MergedIndex, ino: int, start: int):
        for name, node, offset in index.readdir(ino, start):
            if node.type is EntryType.DIR:
                self._parents[node.ino] = ino
            yield name, node, offset

    async def parent(self, ino: int) -> int:
        """The inode of the directory holding ``ino`` (``..``)."""
        if self.index is None and (early := self._progress.parent_of(ino)) is not None:
            return early
        index = await self.merged()
        ino = self._final(ino)
        known = self._parents.get(ino)
        if known is not None or ino == ROOT_INO:
            return known or ROOT_INO
        path = index.path_of(ino)
        root = ROOT_INO
        if not path.startswith("/"):
            layer, _, path = path.partition(":/")
            root, path = dict(index.layer_roots)[layer], "/" + path
        parent = index.resolve(os.path.dirname(path), follow=False, root=root).ino
        self._parents[ino] = parent
        return parent

    async def totals(self) -> tuple[int, int]:
        """Bytes of content (each inode once) and entries: zeros while the
        image is still being indexed (``df`` may ask meanwhile)."""
        if not self.lasting:
            return 0, 0
        index = await self.merged()
        async with self._totals_lock:
            if self._totals is None:
                self._totals = (await trio.to_thread.run_sync(index.content_bytes),
                                index.entry_count)
        return self._totals

    def _final(self, ino: int) -> int:
        return self._progress.translate(ino) if self._progress is not None else ino

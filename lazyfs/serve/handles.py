"""File handles a successor can read: each names the inode it was opened on.

The kernel keeps the handles (``fh``) of files and directories opened
before a restart of ``lazyfs serve`` and goes on using them with the next
process. So a handle is not a counter but ``serial << 48 | inode``: the
store-mode inode (slot and image inode) in its low 48 bits, and a serial
that tells apart two opens of one inode. A handle this process never gave
out is served by reopening its inode: the file's bytes, or the directory's
listing from the offset asked.
"""

from __future__ import annotations

import errno
import itertools

import pyfuse3

from ..errors import NotFound
from ..fs.operations import LazyOperations
from ..fs.operations import _Cursor as Cursor
from ..image import Image

INODE_BITS = 48
_INODE = (1 << INODE_BITS) - 1
_SERIALS = (1 << 15) - 1
LOCAL_BITS = 32
"""An image's inode ``i`` is ``slot << LOCAL_BITS | i`` in the mount."""
_LOCAL = (1 << LOCAL_BITS) - 1


class Handles:
    """Makes handles; one per mount, shared by every image in it."""

    def __init__(self) -> None:
        self._serial = itertools.count(1)

    def make(self, inode: int) -> int:
        if inode > _INODE:
            raise ValueError(f"inode {inode:#x} does not fit a handle")
        return (next(self._serial) % _SERIALS + 1) << INODE_BITS | inode


def inode_of(fh: int) -> int:
    return fh & _INODE


def slot_of(fh: int) -> int:
    return inode_of(fh) >> LOCAL_BITS


class ImageOps(LazyOperations):
    """One image's tree, its inode numbers shifted into its slot, its
    handles derived from them."""

    def __init__(self, image: Image, base: int, handles: Handles):
        super().__init__(image.tree, image.read, stats=image.stats,
                         events=lambda: image.reader.events.packed(image))
        self.image = image
        self._base = base
        self._made = handles

    def _listed(self, rows: list[tuple]) -> list:
        listing = super()._listed(rows)
        for _, a in listing:
            a.st_ino += self._base
        return listing

    async def open(self, inode, flags, ctx):
        info = await super().open(inode, flags, ctx)
        fh = self._made.make(self._base | inode)
        self._handles[fh] = self._handles.pop(info.fh)
        self._openers[fh] = self._openers.pop(info.fh, 0)
        info.fh = fh
        return info

    async def opendir(self, inode, ctx):
        given = await super().opendir(inode, ctx)
        fh = self._made.make(self._base | inode)
        self._dirs[fh] = self._dirs.pop(given)
        return fh

    async def adopt(self, fh: int, directory: bool) -> None:
        """Serve a handle opened by an earlier process as if opened here."""
        local = inode_of(fh) & _LOCAL
        try:
            node = await self._node(local)
        except NotFound:
            raise pyfuse3.FUSEError(errno.ESTALE) from None
        if directory:
            if fh not in self._dirs:
                self._dirs[fh] = Cursor(local)
        elif fh not in self._handles:
            self._handles[fh] = node
            self._openers[fh] = 0

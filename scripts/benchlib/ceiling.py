"""The FUSE ceiling of this machine: a trivial pyfuse3 filesystem serving one
file from memory, mounted the way lazyfs mounts (read-only, readahead raised).

``python -m benchlib.ceiling MOUNTPOINT SIZE`` serves ``/big.bin`` of SIZE
bytes in the foreground until unmounted; it prints ``ready`` once the mount
answers. No read ever waits for anything but memory, so what ``dd`` gets
from it is the most any FUSE filesystem in Python gets here.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

import pyfuse3
import trio

from lazyfs.fs.tuning import raise_readahead

NAME = b"big.bin"
FILE_INO = pyfuse3.ROOT_INODE + 1
TIMEOUT = 300


class Ceiling(pyfuse3.Operations):
    def __init__(self, data: bytes):
        super().__init__()
        self.data = data

    def _attrs(self, ino: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        if ino == pyfuse3.ROOT_INODE:
            a.st_mode, a.st_nlink = stat.S_IFDIR | 0o755, 2
        else:
            a.st_mode, a.st_nlink, a.st_size = stat.S_IFREG | 0o444, 1, len(self.data)
        a.st_blksize, a.st_blocks = 4096, (a.st_size + 511) // 512
        a.entry_timeout = a.attr_timeout = TIMEOUT
        return a

    async def getattr(self, inode, ctx=None):
        if inode not in (pyfuse3.ROOT_INODE, FILE_INO):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(inode)

    async def lookup(self, parent_inode, name, ctx=None):
        if parent_inode != pyfuse3.ROOT_INODE or name != NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(FILE_INO)

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start_id, token):
        if start_id == 0:
            pyfuse3.readdir_reply(token, NAME, self._attrs(FILE_INO), 1)

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=inode, keep_cache=False)

    async def read(self, fh, off, size):
        return self.data[off:off + size]


def _raise_readahead(mountpoint: str) -> None:
    """As a lazyfs mount raises its own, so that both are measured alike."""
    dev = os.stat(mountpoint).st_dev
    raise_readahead(f"{os.major(dev)}:{os.minor(dev)}")


async def serve(mountpoint: str, size: int) -> None:
    data = os.urandom(size)
    pyfuse3.init(Ceiling(data), mountpoint, {"ro", "fsname=ceiling", "subtype=ceiling"})
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pyfuse3.main)
            await trio.to_thread.run_sync(_raise_readahead, mountpoint)
            print("ready", flush=True)
    finally:
        pyfuse3.close(unmount=True)


def main(argv: list[str]) -> int:
    trio.run(serve, argv[1], int(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

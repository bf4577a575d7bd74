"""``lazyfs export REF -`` and ``--tar FILE``: the merged tree as one tar
stream, as ``crane export`` writes it.

Whiteouts are already applied in the merged index, so the stream is the tree
a container sees: one member per path, hardlinks as links to the first path
of their inode, owners and modes as in the image, and what ustar cannot hold
(long names, sub-second times, xattrs) in pax records.
"""

from __future__ import annotations

import os
import sys
import tarfile
from decimal import Decimal
from pathlib import Path
from typing import BinaryIO

import trio

from ..errors import LazyfsError
from ..formats.entry import EntryType
from ..image import Image
from ..index.merged import Node
from ..store.blobs import check_free_space
from .browse import count_tree
from .progress import Tally, checkpoint

READ_CHUNK = 4 << 20
_TYPES = {EntryType.FILE: tarfile.REGTYPE, EntryType.DIR: tarfile.DIRTYPE,
          EntryType.SYMLINK: tarfile.SYMTYPE, EntryType.CHAR: tarfile.CHRTYPE,
          EntryType.BLOCK: tarfile.BLKTYPE, EntryType.FIFO: tarfile.FIFOTYPE}


async def export_tar(image: Image, dest: str | None, tally: Tally | None = None) -> int:
    """Write the tree to the file ``dest``, or to stdout when None; returns
    the number of members. Layers are fetched whole first, as for a
    directory export; members are counted into ``tally``."""
    tally = tally if tally is not None else Tally()
    count_tree(image, tally)
    if dest is not None:
        check_free_space(Path(dest).resolve().parent, tally.total_bytes, f"the export of {image.ref}")
    await image.fetch_all()
    return await trio.to_thread.run_sync(_write_to, image, dest, tally)


def _write_to(image: Image, dest: str | None, tally: Tally) -> int:
    if dest is None:
        count = write_tar(image, sys.stdout.buffer, tally)
        sys.stdout.buffer.flush()
        return count
    try:
        out = open(dest, "wb")
    except OSError as e:
        raise LazyfsError(f"export: cannot write {dest}: {e.strerror or e}") from None
    try:
        with out:
            return write_tar(image, out, tally)
    except BaseException as e:
        os.unlink(dest)  # no half-written archive left behind
        if isinstance(e, OSError):
            raise LazyfsError(f"export: cannot write {dest}: {e.strerror or e}") from None
        raise


def write_tar(image: Image, out: BinaryIO, tally: Tally | None = None) -> int:
    tally = tally if tally is not None else Tally()
    first_path: dict[int, str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape", copybufsize=READ_CHUNK) as tar:
        for path, node in image.index.walk():
            if path == "/":
                continue
            checkpoint()
            info = member(image, path.lstrip("/"), node, first_path)
            tar.addfile(info, _Content(image, node, info.name, tally) if info.isreg() else None)
            tally.done += 1
    return tally.done


def member(image: Image, name: str, node: Node, first_path: dict[int, str]) -> tarfile.TarInfo:
    """The tar header of one node; a later path of an inode already written
    becomes a hardlink to the first."""
    info = tarfile.TarInfo(name)
    info.mode, info.uid, info.gid = node.mode, node.uid, node.gid
    info.uname = info.gname = ""
    info.mtime = node.mtime_ns // 10**9
    if node.mtime_ns % 10**9:
        info.pax_headers["mtime"] = str(Decimal(node.mtime_ns).scaleb(-9).normalize())
    if node.type is not EntryType.DIR and node.nlink > 1:
        if node.ino in first_path:
            info.type, info.linkname = tarfile.LNKTYPE, first_path[node.ino]
            return info
        first_path[node.ino] = name
    info.type = _TYPES[node.type]
    if node.type is EntryType.FILE:
        info.size = node.size
    elif node.type is EntryType.SYMLINK:
        info.linkname = node.linkname
    elif node.type in (EntryType.CHAR, EntryType.BLOCK):
        info.devmajor, info.devminor = os.major(node.rdev), os.minor(node.rdev)
    if node.has_xattrs:
        for key, value in image.index.xattrs(node.ino).items():
            info.pax_headers["SCHILY.xattr." + key] = value.decode("utf-8", "surrogateescape")
    return info


class _Content:
    """A file's bytes for ``tarfile``, which asks for exact lengths."""

    def __init__(self, image: Image, node: Node, name: str, tally: Tally):
        self._image, self._node, self._name, self._pos = image, node, name, 0
        self._tally = tally

    def read(self, size: int) -> bytes:
        parts = []
        while size > 0:
            checkpoint()
            data = self._image.read_local(self._node, self._pos, min(size, READ_CHUNK))
            if not data:
                raise LazyfsError(f"export: {self._name} came out {self._pos} bytes, "
                                  f"not {self._node.size}")
            parts.append(data)
            self._pos += len(data)
            self._tally.done_bytes += len(data)
            size -= len(data)
        return b"".join(parts)

"""A read-only ``pyfuse3.Operations`` over an image's tree and a read callable.

The image never changes while mounted, so the kernel is told to cache
everything for long (entries, attributes, negative lookups, page cache):
after the first ``find`` or ``cat`` nearly nothing reaches this process.

This is the one place lazyfs errors become errnos. Each handler is wrapped so
that a ``LazyfsError`` answers with its own errno and anything unexpected is
logged with its traceback and answers ``EIO``: a bad read must never take the
daemon (and with it every open file of the mount) down.

Tree queries run on the trio loop: each is one indexed SQLite lookup in an
immutable, memory-mapped file (microseconds), far cheaper than the hop to a
worker thread. Only ``statfs`` walks the tree, and it does so in a thread.
While the image is still being indexed the tree's answers may be
provisional; then nothing is cached by the kernel (``Tree.lasting``).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import json
import logging
import math
import os
import stat
import dataclasses
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable

import pyfuse3

from ..formats.entry import EntryType
from ..errors import LazyfsError, NotFound, UsageError
from ..image import OpenOptions, open_image_async
from ..read.memory import Lru
from ..index.merged import ROOT_INO, MergedIndex, Node, stat_row
from ..index.tree import Tree
from .killed import KilledReaders

log = logging.getLogger(__name__)

TIMEOUT = 86400.0
"""Seconds the kernel may cache entries and attributes: the image is immutable."""
BLKSIZE = 128 * 1024
"""Preferred I/O size reported in ``st_blksize``: big reads cost fewer FUSE round trips."""
NAME_MAX = 255
STATS_XATTR = "user.lazyfs.stats"
EVENTS_XATTR = "user.lazyfs.events"
"""The mount's fetch log, zlib-compressed JSON, for ``stats --timeline``."""
"""Asked of the mount's root, answers the daemon's statistics as JSON; it is
not listed, so copies and comparisons of the tree never see it."""

LISTED_ENTRIES = 16384
"""Entries of directory listings kept ready to answer, names encoded and
attributes built: a second walk of the tree asks the index nothing."""
LISTING_MAX = 4096
"""A directory with more entries is paged from the index each time instead."""
PAGE = 1024
"""Entries of a directory not kept read from the index at once: a few of the
kernel's calls."""

ReadFn = Callable[[Node, int, int], Awaitable[bytes]]

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT


@dataclass(frozen=True, slots=True)
class _Virtual:
    """A file or directory that exists only in the mount, not in the image."""

    ino: int
    name: str
    content: bytes = b""
    is_dir: bool = False


@dataclass(slots=True)
class Counters:
    reads: int = 0
    bytes_read: int = 0
    errors: int = 0
    """Requests answered with an error other than ENOENT."""


@dataclass(slots=True)
class _Cursor:
    """Where a listing of an open directory stands: the whole directory when
    it is kept (``_listings``), else the page of it answered last. The kernel
    asks for the next entries at the offset its last answer ended; a page
    read ahead answers several of its calls, and the next page seeks by name."""

    ino: int
    listing: list | None = None
    page: list | None = None
    base: int = 0
    """The offset of the page's first entry."""


def _answers(fn):
    """Turn whatever a handler raises into the errno the caller sees."""

    @functools.wraps(fn)
    async def handler(self, *args):
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except NotFound as e:
            log.debug("%s: %s", fn.__name__, e)
            raise pyfuse3.FUSEError(e.errno) from None
        except LazyfsError as e:
            self.counters.errors += 1
            log.warning("%s: %s", fn.__name__, e)
            raise pyfuse3.FUSEError(e.errno) from None
        except Exception:
            self.counters.errors += 1
            log.exception("%s%r failed unexpectedly", fn.__name__, args[:-1] if args else ())
            raise pyfuse3.FUSEError(errno.EIO) from None

    return handler


_WRITES = ("setattr", "mknod", "mkdir", "unlink", "rmdir", "symlink", "rename", "link",
           "create", "write", "setxattr", "removexattr")


def read_only(cls):
    """Class decorator: every operation that would change the tree is EROFS,
    the kernel's answer for a read-only mount, not ENOSYS."""
    for name in _WRITES:
        setattr(cls, name, _refused(getattr(pyfuse3.Operations, name)))
    return cls


def _refused(fn):
    @functools.wraps(fn)
    async def handler(self, *args):
        raise pyfuse3.FUSEError(errno.EROFS)

    return handler


def lowerdir(index: MergedIndex, mountpoint: str | os.PathLike) -> str:
    """The ``lowerdir=`` value that stacks a ``layers=True`` mount's layer
    directories with overlayfs: top layer first, absolute paths."""
    top = os.path.abspath(mountpoint)
    return ":".join(os.path.join(top, name) for name, _ in reversed(index.layer_roots))


def image_operations(ref: str, mountpoint: str | os.PathLike, *, layers: bool = False,
                     open_options=None, store=None):
    """A factory for ``mount.mount``: opens the image inside the daemon (its
    registry client must be born in the daemon's own trio loop) and serves it."""

    if layers:
        open_options = dataclasses.replace(open_options or OpenOptions(), layer_views=True)

    @contextlib.asynccontextmanager
    async def open_ops() -> AsyncIterator[LazyOperations]:
        async with open_image_async(ref, open_options, store) as image:
            extra = {".lowerdir": lowerdir(image.index, mountpoint).encode()} if layers else None
            ops = LazyOperations(image.tree, image.read, layers=layers, extra_files=extra,
                                 stats=image.stats, unlabelled=True,
                                 events=lambda: image.reader.events.packed(image))
            ops.digest = image.digest
            yield ops

    return open_ops


_LABELS = frozenset({b"security.selinux", b"system.posix_acl_access",
                     b"system.posix_acl_default"})
"""Names ``ls -l``, ``cp -a`` and ``getfacl`` ask of every file. Answered
EOPNOTSUPP where the image holds none of them (a file system without labels
or ACLs), they stop asking per file; ENODATA would cost a round trip each."""


@read_only
class LazyOperations(pyfuse3.Operations):
    """The image as a read-only filesystem.

    With ``layers`` the root holds one directory per layer (each layer's own
    tree, in the form overlayfs takes as a lower directory) instead of the
    merged tree. ``extra_files`` are virtual files at the root, e.g. the
    ``.lowerdir`` of a layers view. Both need the merged index at once.
    ``unlabelled`` (a mount of one image, not one image among many under a
    service's root) answers the ``_LABELS`` names the image holds nowhere as
    unsupported.
    """

    supports_dot_lookup = True
    enable_writeback_cache = False
    digest = ""
    """The manifest digest served, for the daemon's state file."""

    def __init__(self, tree: Tree | MergedIndex, read: ReadFn, *, layers: bool = False,
                 extra_files: dict[str, bytes] | None = None,
                 stats: Callable[[], dict] | None = None,
                 events: Callable[[], bytes] | None = None,
                 unlabelled: bool = False):
        self._tree = tree if isinstance(tree, Tree) else Tree(tree)
        self._unlabelled = unlabelled
        self._stats = stats
        self._events = events
        self.counters = Counters()
        self._read = read
        self._layers = layers
        self._handles: dict[int, Node | _Virtual] = {}
        self._openers: dict[int, int] = {}
        self.killed = KilledReaders()
        self._dirs: dict[int, _Cursor] = {}
        self._listings = Lru(LISTED_ENTRIES, weight=len)
        """Directory listings ready to answer, bounded by their entries."""
        self._unlisted: set[int] = set()
        """Directories too big to keep (``LISTING_MAX``): paged every time."""
        self._next_fh = itertools.count(1)
        self._virtual: dict[int, _Virtual] = {}
        self._root_names: dict[str, int] = {}
        self._root_list: list[str] = []
        index = self._tree.index
        first = _max_ino(index) + 1 if extra_files or layers else 0
        if layers:
            for name, ino in index.layer_roots:
                self._add_root_name(name, ino)
        for i, (name, content) in enumerate(sorted((extra_files or {}).items())):
            v = _Virtual(first + i, name, bytes(content))
            self._virtual[v.ino] = v
            self._add_root_name(name, v.ino)

    def _add_root_name(self, name: str, ino: int) -> None:
        if name in self._root_names or "/" in name or name in ("", ".", ".."):
            raise UsageError(f"cannot add {name!r} to the root of the mount")
        self._root_names[name] = ino
        self._root_list.append(name)

    # ------------------------------------------------------------ metadata

    async def _node(self, ino: int) -> Node | _Virtual:
        v = self._virtual.get(ino)
        return v if v is not None else await self._tree.getattr(ino)

    def _attrs(self, item: Node | _Virtual) -> pyfuse3.EntryAttributes:
        return self._listed([self._row(b"", item)])[0][1]

    def _row(self, name: bytes, item: Node | _Virtual) -> tuple:
        """``item`` as a ``stat_row``: what ``getattr`` answers for it, and
        ``readdir`` under ``name``."""
        if isinstance(item, _Virtual):
            root = self._tree.index.getattr(ROOT_INO)
            return (name, item.ino, stat.S_IFREG | 0o444, 1, root.uid, root.gid, 0,
                    len(item.content), root.mtime_ns)
        row = stat_row(name, item)
        if item.ino == ROOT_INO and self._layers:
            row = row[:3] + (2 + len(self._tree.index.layer_roots),) + row[4:]
        return row

    def _timeout(self) -> float:
        return TIMEOUT if self._tree.lasting else 0

    def _root_row(self, name: str) -> tuple:
        """A name added to the root as a ``stat_row``."""
        ino = self._root_names[name]
        v = self._virtual.get(ino)
        return self._row(os.fsencode(name), v if v is not None else self._tree.index.getattr(ino))

    async def _child(self, parent: int, name: str) -> Node | _Virtual | None:
        if parent == ROOT_INO and name in self._root_names:
            return await self._node(self._root_names[name])
        if parent == ROOT_INO and self._layers:
            return None
        return await self._tree.lookup(parent, name)

    @_answers
    async def lookup(self, parent_inode, name, ctx=None):
        text = os.fsdecode(name)
        if text == ".":
            return self._attrs(await self._node(parent_inode))
        if text == "..":
            return self._attrs(await self._node(await self._tree.parent(parent_inode)))
        item = await self._child(parent_inode, text)
        if item is None:
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0
            negative.entry_timeout = self._timeout()
            return negative
        return self._attrs(item)

    @_answers
    async def getattr(self, inode, ctx=None):
        return self._attrs(await self._node(inode))

    @_answers
    async def readlink(self, inode, ctx):
        node = await self._node(inode)
        if isinstance(node, _Virtual) or node.type is not EntryType.SYMLINK:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(node.linkname)

    @_answers
    async def getxattr(self, inode, name, ctx):
        if inode == ROOT_INO and name == STATS_XATTR.encode():
            return json.dumps(self.stats()).encode()
        if inode == ROOT_INO and name == EVENTS_XATTR.encode() and self._events is not None:
            return self._events()
        if self._unlabelled and name in _LABELS and self._tree.nowhere(name.decode()):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        if self._tree.without_xattrs(inode):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        node = await self._node(inode)
        if isinstance(node, _Virtual) or not node.has_xattrs:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        value = (await self._tree.xattrs(inode)).get(os.fsdecode(name))
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    def stats(self) -> dict:
        """The image's statistics (if given) plus this mount's own counters."""
        out = dict(self._stats()) if self._stats is not None else {}
        out["fuse"] = {"reads": self.counters.reads, "bytes_read": self.counters.bytes_read,
                       "errors": self.counters.errors, "open_files": len(self._handles)}
        return out

    @_answers
    async def listxattr(self, inode, ctx):
        if self._tree.without_xattrs(inode):
            return []
        node = await self._node(inode)
        if isinstance(node, _Virtual) or not node.has_xattrs:
            return []
        return [os.fsencode(name) for name in sorted(await self._tree.xattrs(inode))]

    @_answers
    async def access(self, inode, mode, ctx):
        await self._node(inode)
        if mode & os.W_OK:
            raise pyfuse3.FUSEError(errno.EROFS)
        return True

    @_answers
    async def statfs(self, ctx):
        size, files = await self._tree.totals()
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = math.ceil(size / 4096)
        s.f_bfree = s.f_bavail = 0
        s.f_files = files
        s.f_ffree = s.f_favail = 0
        s.f_namemax = NAME_MAX
        return s

    # ------------------------------------------------------------ directories

    @_answers
    async def opendir(self, inode, ctx):
        # The kernel opens only what it was told is a directory: no query
        # here (``find`` opens every directory, again on every walk).
        if inode in self._virtual:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = next(self._next_fh)
        self._dirs[fh] = _Cursor(inode)
        return fh

    @_answers
    async def readdir(self, fh, start_id, token):
        cur = self._dirs.get(fh)
        if cur is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if cur.listing is None and start_id == 0:
            cur.listing = self._listings.get(cur.ino) or await self._listing(cur.ino)
        reply = pyfuse3.readdir_reply
        if cur.listing:
            # Offsets are positions: the entry at i resumes at i + 1.
            listing = cur.listing
            for i in range(start_id, len(listing)):
                name, attrs = listing[i]
                if not reply(token, name, attrs, i + 1):
                    return
            return
        while True:
            page, base = cur.page, cur.base
            if page is None or not base <= start_id < base + len(page):
                page = cur.page = self._listed(await self._rows(cur.ino, start_id, PAGE))
                base = cur.base = start_id
            for i in range(start_id - base, len(page)):
                name, attrs = page[i]
                if not reply(token, name, attrs, base + i + 1):
                    return
            if len(page) < PAGE:
                return
            start_id = base + len(page)

    async def _listing(self, ino: int) -> list:
        """The whole directory as ``(name, attributes)``, kept for the next
        walk; empty (page from the index) while answers are provisional or
        for a very big directory."""
        if not self._tree.lasting or ino in self._unlisted:
            return []
        rows = await self._rows(ino, 0, LISTING_MAX + 1)
        if len(rows) > LISTING_MAX:
            self._unlisted.add(ino)
            return []
        listing = self._listed(rows)
        if listing:
            self._listings.put(ino, listing)
        return listing

    def _listed(self, rows: list[tuple]) -> list:
        """``stat_row``s as ``(name, attributes)``, built in one loop (a walk
        of the tree builds every entry's): the one place attributes are made,
        for ``getattr`` and ``lookup`` as for ``readdir``."""
        new, timeout, out = pyfuse3.EntryAttributes, self._timeout(), []
        for name, ino, mode, nlink, uid, gid, rdev, size, mtime in rows:
            a = new()
            a.st_ino, a.st_mode, a.st_nlink, a.st_uid, a.st_gid = ino, mode, nlink, uid, gid
            a.st_rdev, a.st_size, a.st_blocks, a.st_blksize = rdev, size, -(-size // 512), BLKSIZE
            a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = mtime
            a.entry_timeout = a.attr_timeout = timeout
            out.append((name, a))
        return out

    async def _rows(self, ino: int, start: int, limit: int) -> list[tuple]:
        """Up to ``limit`` children from offset ``start`` as ``stat_row``s:
        the root's added names first, then the tree's children (whose own
        offsets are shifted past them)."""
        rows = []
        if ino == ROOT_INO:
            extra = self._root_list
            rows = [self._root_row(name) for name in extra[start:start + limit]]
            if self._layers:
                return rows
            start = max(start - len(extra), 0)
        if len(rows) < limit:
            rows += await self._tree.stat_listing(ino, limit - len(rows), start)
        return rows

    @_answers
    async def releasedir(self, fh):
        self._dirs.pop(fh, None)

    # ------------------------------------------------------------ files

    @_answers
    async def open(self, inode, flags, ctx):
        if flags & _WRITE_FLAGS:
            raise pyfuse3.FUSEError(errno.EROFS)
        node = await self._node(inode)
        if isinstance(node, Node) and node.type is EntryType.DIR:
            raise pyfuse3.FUSEError(errno.EISDIR)
        fh = next(self._next_fh)
        self._handles[fh] = node
        self._openers[fh] = getattr(ctx, "pid", 0)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @_answers
    async def read(self, fh, off, size):
        node = self._handles.get(fh)
        if node is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if isinstance(node, _Virtual):
            return node.content[off:off + size]
        if node.type is not EntryType.FILE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        with self.killed.watch(self._openers.get(fh)) as scope:
            data = await self._read(node, off, size)
        if scope.cancelled_caught:
            raise pyfuse3.FUSEError(errno.EINTR)
        self.counters.reads += 1
        self.counters.bytes_read += len(data)
        return data

    @_answers
    async def release(self, fh):
        self._handles.pop(fh, None)
        self._openers.pop(fh, None)



def _max_ino(index: MergedIndex) -> int:
    """The highest inode of the index, found by probing: inodes are numbered
    densely from the root, so a doubling search then a bisection suffices."""

    def exists(ino: int) -> bool:
        try:
            index.getattr(ino)
        except NotFound:
            return False
        return True

    lo, hi = ROOT_INO, ROOT_INO * 2
    while exists(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if exists(mid) else (lo, mid)
    return lo

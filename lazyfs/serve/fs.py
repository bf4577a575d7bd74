"""Store mode: one FUSE mount, many images, one inode space.

pyfuse3 serves one session per process, so the service is a single
``pyfuse3.Operations``. Inodes are split by their high bits: slot 0 is the
mount's own directories (the root, the prefixes of references being
written, ``.layers``), slot ``n`` is the ``n``-th image opened, whose own
inode ``i`` is ``n << 32 | i``. Everything inside an image is answered by the
same ``LazyOperations`` a single-image mount uses, handed the image's own
inode; only the inode numbers it gives back are shifted.

``.layers/sha256-<hex>`` is a layer's own tree in overlayfs lowerdir form
(the per-layer view of the first open image that has it, built when first
asked for: an image opened only for its merged tree does not pay for it), and
``.layers/sha256:<hex>`` a symlink to it: a ``:`` cannot appear in a
``lowerdir=`` list, a digest is how callers know the layer.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import time
from dataclasses import dataclass
from typing import Callable

import pyfuse3

from ..errors import InvalidReference, LazyfsError, NotFound
from ..fs.operations import BLKSIZE, STATS_XATTR, TIMEOUT, Counters, _answers, read_only
from ..index.merged import ROOT_INO
from ..read.tables import layer_name
from .handles import Handles, ImageOps, inode_of, slot_of
from .images import SLOT_SHIFT, ImageSet, Slot
from .inodes import InodeBook
from .paths import LAYERS_DIR, step

log = logging.getLogger(__name__)

LAYERS_INO = 2
_LOCAL = (1 << SLOT_SHIFT) - 1


@dataclass
class _Virtual:
    """A directory or symlink of the mount itself (slot 0)."""

    ino: int
    parent: int
    parts: tuple[str, ...] = ()
    target: str = ""
    """For a symlink: where it points."""


def layer_dir_name(digest: str) -> str:
    return digest.replace(":", "-", 1)


@read_only
class StoreOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    digest = ""

    def __init__(self, images: ImageSet):
        self.images = images
        self.counters = Counters()
        self._made = Handles()
        self._handles: dict[int, Slot] = {}
        self._listings: dict[int, list[tuple[str, pyfuse3.EntryAttributes]]] = {}
        self._ops: dict[int, ImageOps] = {}
        self._virtual: dict[int, _Virtual] = {ROOT_INO: _Virtual(ROOT_INO, ROOT_INO),
                                              LAYERS_INO: _Virtual(LAYERS_INO, ROOT_INO)}
        self._prefixes: dict[tuple[str, ...], int] = {(): ROOT_INO}
        self._written: set[tuple[str, ...]] = set()
        """References as written (path components) that opened an image."""
        self._slot_of_written: dict[tuple[str, ...], int] = {}
        self._layers: dict[str, tuple[int, int]] = {}
        """Layer digest -> (slot, the layer view's root inode in that image)."""
        self._pending: dict[str, int] = {}
        """Layer digest -> the slot of an open image that has it, views not built yet."""
        self._started = time.time_ns()
        self.extra_stats: dict[str, Callable[[], dict]] = {}
        """More sections of the service's statistics (control socket, snapshotter)."""
        self.book = InodeBook(None)
        """Where the inodes given out are recorded for a successor."""
        self._booked: set[int] = set()
        images.on_open.append(self._register_layers)
        images.on_open.append(lambda slot: slot.number in self._booked or self._save())
        images.on_close.append(lambda slot: self._ops.pop(slot.number, None))

    # ------------------------------------------------------------ handover

    def restore(self, doc: dict) -> None:
        """Take over the inodes the process served before gave out."""
        self.images.restore(doc.get("slots", []))
        for ino, parent, parts, target in doc.get("virtual", []):
            v = self._virtual[ino] = _Virtual(ino, parent, tuple(parts), target)
            if ino > LAYERS_INO:
                self._prefixes[v.parts] = ino
        for parts, number in doc.get("written", []):
            self._written.add(tuple(parts))
            self._slot_of_written[tuple(parts)] = number
        for slot in sorted(self.images.slots(), key=lambda s: not s.views):
            for digest in slot.layers:
                self._pending.setdefault(digest, slot.number)
        self._booked = {slot.number for slot in self.images.slots()}

    def _save(self) -> None:
        self._booked = {slot.number for slot in self.images.slots()}
        self.book.save(self.images.export(),
                       [[v.ino, v.parent, list(v.parts), v.target]
                        for v in self._virtual.values() if v.ino > LAYERS_INO],
                       [[list(p), n] for p, n in self._slot_of_written.items()])

    # ------------------------------------------------------------ inodes

    def _register_layers(self, slot: Slot) -> None:
        image = slot.image
        if not slot.views:
            for info in image.layers:
                self._pending.setdefault(info.desc.digest, slot.number)
            return
        roots = dict(image.index.layer_roots) if image.index is not None else {}
        for info in image.layers:
            ino = roots.get(layer_name(info.position, info.desc))
            if ino is not None:
                self._layers.setdefault(info.desc.digest, (slot.number, ino))

    async def layer_view(self, digest: str) -> tuple[int, int] | None:
        """(slot, inode) of ``digest``'s directory under ``.layers``, its
        image's per-layer views built if they were not yet; ``None`` when no
        open image has that layer."""
        if digest not in self._layers and digest in self._pending:
            await self.images.views_of(self.images.slot(self._pending[digest]))
        return self._layers.get(digest)

    async def _image(self, inode: int) -> tuple[ImageOps, int, Slot]:
        """The operations of the image holding ``inode``, and its own inode."""
        slot = self.images.slot(inode >> SLOT_SHIFT)
        if slot is None:
            # an inode of an earlier process this one cannot place
            raise pyfuse3.FUSEError(errno.ESTALE)
        image = await self.images.ensure_open(slot)
        ops = self._ops.get(slot.number)
        if ops is None or ops.image is not image:
            ops = self._ops[slot.number] = ImageOps(image, slot.number << SLOT_SHIFT, self._made)
        return ops, inode & _LOCAL, slot

    def _dir_attrs(self, ino: int, timeout: float = TIMEOUT, link: str = "") -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.st_mode = (stat.S_IFLNK | 0o777) if link else (stat.S_IFDIR | 0o555)
        a.st_nlink = 1 if link else 2
        a.st_size = len(link)
        a.st_uid, a.st_gid = os.getuid(), os.getgid()
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self._started
        a.st_blksize = BLKSIZE
        a.entry_timeout = a.attr_timeout = timeout
        return a

    def _virtual_attrs(self, v: _Virtual) -> pyfuse3.EntryAttributes:
        # A prefix lists what has been opened below it: not cached by the kernel.
        timeout = TIMEOUT if v.target or v.ino == LAYERS_INO else 0
        return self._dir_attrs(v.ino, timeout, v.target)

    def _new_virtual(self, parent: int, parts: tuple[str, ...] = (), target: str = "") -> _Virtual:
        v = _Virtual(len(self._virtual) + 1, parent, parts, target)
        self._virtual[v.ino] = v
        self._save()
        return v

    # ------------------------------------------------------------ lookups

    @_answers
    async def lookup(self, parent_inode, name, ctx=None):
        text = os.fsdecode(name)
        if parent_inode >> SLOT_SHIFT:
            ops, local, slot = await self._image(parent_inode)
            if text == ".." and (local == ROOT_INO or self._is_layer_root(slot, local)):
                return self._virtual_attrs(self._virtual[ROOT_INO if local == ROOT_INO
                                                         else LAYERS_INO])
            return await ops.lookup(local, name, ctx)
        v = self._virtual.get(parent_inode)
        if v is None:
            raise pyfuse3.FUSEError(errno.ESTALE)
        if text == ".":
            return self._virtual_attrs(v)
        if text == "..":
            return self._virtual_attrs(self._virtual[v.parent])
        if parent_inode == LAYERS_INO:
            return await self._layer_entry(text)
        if parent_inode == ROOT_INO and text == LAYERS_DIR:
            return self._virtual_attrs(self._virtual[LAYERS_INO])
        return await self._reference_entry(v, text)

    def _is_layer_root(self, slot: Slot, local: int) -> bool:
        return any(s == slot.number and ino == local for s, ino in self._layers.values())

    async def _layer_entry(self, text: str) -> pyfuse3.EntryAttributes:
        digest = text.replace("-", ":", 1) if ":" not in text else text
        if digest not in self._layers and digest not in self._pending:
            return _absent()
        if ":" in text:
            ino = self._symlink_for(text)
            return self._virtual_attrs(self._virtual[ino])
        view = await self.layer_view(digest)
        if view is None:
            return _absent()
        number, local = view
        ops, _, _ = await self._image(number << SLOT_SHIFT | local)
        return await ops.getattr(local)

    def _symlink_for(self, digest: str) -> int:
        key = (LAYERS_DIR, digest)
        if key not in self._prefixes:
            self._prefixes[key] = self._new_virtual(LAYERS_INO, key, layer_dir_name(digest)).ino
        return self._prefixes[key]

    async def _reference_entry(self, v: _Virtual, text: str) -> pyfuse3.EntryAttributes:
        try:
            where = step(v.parts, text)
        except InvalidReference as e:
            self.images.failed("/".join((*v.parts, text)), e)
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        if where.reference is None:
            ino = self._prefixes.get(where.parts)
            if ino is None:
                ino = self._prefixes[where.parts] = self._new_virtual(v.ino, where.parts).ino
            return self._virtual_attrs(self._virtual[ino])
        try:
            slot = await self.images.by_reference(where.reference)
        except NotFound:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        except LazyfsError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        if self._slot_of_written.get(where.parts) != slot.number:
            self._written.add(where.parts)
            self._slot_of_written[where.parts] = slot.number
            self._save()
        ops, local, _ = await self._image(slot.number << SLOT_SHIFT | ROOT_INO)
        attrs = await ops.getattr(local)
        attrs.entry_timeout = min(TIMEOUT, self.images.fresh(str(where.reference)))
        return attrs

    @_answers
    async def getattr(self, inode, ctx=None):
        if inode >> SLOT_SHIFT:
            ops, local, _ = await self._image(inode)
            return await ops.getattr(local, ctx)
        v = self._virtual.get(inode)
        if v is None:
            raise pyfuse3.FUSEError(errno.ESTALE)
        return self._virtual_attrs(v)

    @_answers
    async def readlink(self, inode, ctx):
        if inode >> SLOT_SHIFT:
            ops, local, _ = await self._image(inode)
            return await ops.readlink(local, ctx)
        v = self._virtual.get(inode)
        if v is None or not v.target:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(v.target)

    @_answers
    async def getxattr(self, inode, name, ctx):
        if inode >> SLOT_SHIFT:
            ops, local, _ = await self._image(inode)
            return await ops.getxattr(local, name, ctx)
        if inode == ROOT_INO and name == STATS_XATTR.encode():
            return json.dumps(self.stats()).encode()
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    @_answers
    async def listxattr(self, inode, ctx):
        if inode >> SLOT_SHIFT:
            ops, local, _ = await self._image(inode)
            return await ops.listxattr(local, ctx)
        return []

    @_answers
    async def access(self, inode, mode, ctx):
        if mode & os.W_OK:
            raise pyfuse3.FUSEError(errno.EROFS)
        return True

    @_answers
    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_namemax = 255
        return s

    def open_files(self) -> int:
        """Files and directories the kernel has open here (their users keep
        the mount through a restart)."""
        return len(self._handles) + len(self._listings)

    def stats(self) -> dict:
        out = self.images.stats()
        out["mode"] = "store"
        out["fuse"] = {"reads": self.counters.reads, "bytes_read": self.counters.bytes_read,
                       "errors": self.counters.errors, "open_files": len(self._handles)}
        out["written"] = {"/".join(p): self._slot_of_written[p] for p in sorted(self._written)}
        out["layer_views"] = {d: layer_dir_name(d) for d in sorted({*self._layers, *self._pending})}
        for name, more in self.extra_stats.items():
            out[name] = more()
        return out

    # ------------------------------------------------------------ directories

    @_answers
    async def opendir(self, inode, ctx):
        if inode >> SLOT_SHIFT:
            return await self._open_in_image(inode, lambda ops, local: ops.opendir(local, ctx))
        v = self._virtual.get(inode)
        if v is None or v.target:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = self._made.make(v.ino)
        self._listings[fh] = self._listing(v)
        return fh

    def _listing(self, v: _Virtual) -> list[tuple[str, pyfuse3.EntryAttributes]]:
        """A prefix lists the next component of each reference opened below
        it; the root also lists ``.layers``, which lists the layer views."""
        if v.ino == LAYERS_INO:
            out = []
            for digest in sorted({*self._layers, *self._pending}):
                number, local = self._layers.get(digest, (0, self._symlink_for(digest)))
                # a view not built yet is listed without opening anything: its
                # real inode comes with the lookup
                out.append((layer_dir_name(digest),
                            self._dir_attrs(number << SLOT_SHIFT | local)))
                out.append((digest, self._virtual_attrs(self._virtual[self._symlink_for(digest)])))
            return out
        out = [(LAYERS_DIR, self._virtual_attrs(self._virtual[LAYERS_INO]))] \
            if v.ino == ROOT_INO else []
        depth = len(v.parts)
        below = sorted({w[:depth + 1] for w in self._written
                        if len(w) > depth and w[:depth] == v.parts})
        for parts in below:
            if parts in self._written:
                ino = self._slot_of_written[parts] << SLOT_SHIFT | ROOT_INO
            else:
                ino = self._prefixes.get(parts) or self._new_virtual(v.ino, parts).ino
                self._prefixes[parts] = ino
            out.append((parts[-1], self._dir_attrs(ino, 0)))
        return out

    @_answers
    async def readdir(self, fh, start_id, token):
        listing = self._listings.get(fh)
        if listing is None and fh not in self._handles:
            if slot_of(fh) == 0:
                v = self._virtual.get(inode_of(fh))
                if v is None or v.target:
                    raise pyfuse3.FUSEError(errno.ESTALE)
                listing = self._listings[fh] = self._listing(v)
            else:
                await self._adopt(fh, directory=True)
        if listing is None:
            slot = self._handles[fh]
            ops, _, _ = await self._image(slot.number << SLOT_SHIFT)
            return await ops.readdir(fh, start_id, token)
        for pos in range(start_id, len(listing)):
            name, attrs = listing[pos]
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attrs, pos + 1):
                return

    @_answers
    async def releasedir(self, fh):
        if self._listings.pop(fh, None) is None:
            await self._release(fh, lambda ops: ops.releasedir(fh))

    # ------------------------------------------------------------ files

    async def _open_in_image(self, inode: int, how) -> int:
        ops, local, slot = await self._image(inode)
        slot.users += 1
        try:
            result = await how(ops, local)
        except BaseException:
            slot.users -= 1
            raise
        fh = result.fh if isinstance(result, pyfuse3.FileInfo) else result
        self._handles[fh] = slot
        return result

    async def _adopt(self, fh: int, directory: bool) -> Slot:
        """A handle an earlier process gave out: served from the inode it names."""
        ops, _, slot = await self._image(inode_of(fh))
        await ops.adopt(fh, directory)
        if fh not in self._handles:
            self._handles[fh] = slot
            slot.users += 1
        return slot

    async def _release(self, fh: int, how) -> None:
        slot = self._handles.pop(fh, None)
        if slot is None:
            return
        slot.users -= 1
        ops = self._ops.get(slot.number)
        if ops is not None:
            await how(ops)

    @_answers
    async def open(self, inode, flags, ctx):
        if not inode >> SLOT_SHIFT:
            raise pyfuse3.FUSEError(errno.EISDIR)
        return await self._open_in_image(inode, lambda ops, local: ops.open(local, flags, ctx))

    @_answers
    async def read(self, fh, off, size):
        slot = self._handles.get(fh) or await self._adopt(fh, directory=False)
        ops, _, _ = await self._image(slot.number << SLOT_SHIFT)
        slot.last_used = time.monotonic()
        data = await ops.read(fh, off, size)
        self.counters.reads += 1
        self.counters.bytes_read += len(data)
        return data

    @_answers
    async def release(self, fh):
        await self._release(fh, lambda ops: ops.release(fh))


def _absent() -> pyfuse3.EntryAttributes:
    negative = pyfuse3.EntryAttributes()
    negative.st_ino = 0
    negative.entry_timeout = 0
    return negative

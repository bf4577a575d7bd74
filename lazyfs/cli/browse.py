"""Looking inside an image without mounting it: ls, cat, stat, find, diff, export.

Everything here works on an opened ``Image`` (the index plus lazy reads), so
listing a tree fetches nothing and reading a file fetches only that file.
"""

from __future__ import annotations

import base64
import errno
import fnmatch
import hashlib
import os
import stat as stat_mod
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import trio

from ..formats.entry import EntryType
from ..errors import LazyfsError, UnsafeEntry, UsageError
from ..image import Image, mode_of
from ..index.merged import ROOT_INO, Node
from ..store.blobs import check_free_space
from .progress import Tally, checkpoint

READ_CHUNK = 4 << 20
_TYPE_LETTERS = {"f": EntryType.FILE, "d": EntryType.DIR, "l": EntryType.SYMLINK,
                 "c": EntryType.CHAR, "b": EntryType.BLOCK, "p": EntryType.FIFO}


def node_at(image: Image, path: str, follow: bool = True) -> Node:
    return image.index.resolve(path, follow=follow)


def children(image: Image, node: Node) -> list[tuple[str, Node]]:
    return [(name, child) for name, child, _ in image.index.readdir(node.ino)]


# -- ls ----------------------------------------------------------------------

@dataclass
class Names:
    """uid/gid to names as the image itself defines them (its /etc/passwd)."""

    users: dict[int, str]
    groups: dict[int, str]

    def user(self, uid: int) -> str:
        return self.users.get(uid, str(uid))

    def group(self, gid: int) -> str:
        return self.groups.get(gid, str(gid))


async def image_names(image: Image) -> Names:
    return Names(await _id_file(image, "/etc/passwd"), await _id_file(image, "/etc/group"))


async def _id_file(image: Image, path: str) -> dict[int, str]:
    try:
        node = node_at(image, path)
        if node.type is not EntryType.FILE or node.size > 4 << 20:
            return {}
        text = (await image.read(node, 0, node.size)).decode("utf-8", "replace")
    except LazyfsError:
        return {}
    out = {}
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit():
            out.setdefault(int(parts[2]), parts[0])
    return out


def long_line(name: str, node: Node, names: Names, now: float | None = None) -> str:
    now = time.time() if now is None else now
    mtime = node.mtime_ns / 1e9
    recent = now - 182 * 86400 < mtime <= now + 3600
    when = time.strftime("%b %e %H:%M" if recent else "%b %e  %Y", time.gmtime(mtime))
    if node.type in (EntryType.CHAR, EntryType.BLOCK):
        size = f"{os.major(node.rdev)}, {os.minor(node.rdev)}"
    else:
        size = str(node.size)
    line = (f"{stat_mod.filemode(mode_of(node))} {node.nlink:>2} {names.user(node.uid):<8} "
            f"{names.group(node.gid):<8} {size:>9} {when} {name}")
    if node.type is EntryType.SYMLINK:
        line += f" -> {node.linkname}"
    return line


async def ls(image: Image, path: str, *, long: bool, recursive: bool,
             write: Callable[[str], None], itself: bool = False) -> None:
    names = await image_names(image) if long else None
    # GNU ls: a symlink named on the command line is followed unless -l or
    # -d, and always when written with a trailing slash
    node = node_at(image, path, follow=not (long or itself) or path.endswith("/"))
    if node.type is not EntryType.DIR or itself:
        write(long_line(path, node, names) if long else path)
        return
    todo = [(path, node)]
    first = True
    while todo:
        dpath, dnode = todo.pop(0)
        kids = children(image, dnode)
        if recursive:
            write(("" if first else "\n") + f"{dpath}:")
        first = False
        if long:
            write(f"total {sum(-(-k.size // 1024) for _, k in kids if k.type is EntryType.FILE)}")
        for name, kid in kids:
            write(long_line(name, kid, names) if long else name)
        if recursive:
            todo[:0] = [(f"{dpath.rstrip('/')}/{n}", k) for n, k in kids if k.type is EntryType.DIR]


# -- cat, stat, find ------------------------------------------------------------

async def cat(image: Image, path: str, write: Callable[[bytes], None]) -> None:
    node = node_at(image, path, follow=True)
    if node.type is EntryType.DIR:
        raise UsageError(f"{path}: is a directory")
    if node.type is not EntryType.FILE:
        raise UsageError(f"{path}: not a regular file")
    for off in range(0, node.size, READ_CHUNK):
        write(await image.read(node, off, READ_CHUNK))


def stat_json(image: Image, path: str, node: Node) -> dict:
    out = {
        "path": path, "type": node.type.value, "mode": f"{node.mode:04o}",
        "filemode": stat_mod.filemode(mode_of(node)), "uid": node.uid, "gid": node.gid,
        "size": node.size, "mtime": _iso(node.mtime_ns), "mtime_ns": node.mtime_ns,
        "nlink": node.nlink, "inode": node.ino,
    }
    if node.type is EntryType.SYMLINK:
        out["target"] = node.linkname
    if node.type in (EntryType.CHAR, EntryType.BLOCK):
        out["device"] = {"major": os.major(node.rdev), "minor": os.minor(node.rdev)}
    if node.layer >= 0:
        out["layer"] = image.layers[node.layer].desc.digest
    if node.has_xattrs:
        out["xattrs"] = {k: _xattr_text(v) for k, v in image.index.xattrs(node.ino).items()}
    return out


def _xattr_text(value: bytes) -> str:
    try:
        text = value.decode()
        if text.isprintable():
            return text
    except UnicodeDecodeError:
        pass
    return "base64:" + base64.b64encode(value).decode()


def _iso(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + (
        f".{ns % 10**9:09d}".rstrip("0").rstrip(".") if ns % 10**9 else "") + "Z"


def find(image: Image, path: str, name: str | None, type_letter: str | None,
         min_depth: int = 0, max_depth: int | None = None) -> Iterator[str]:
    want = None
    if type_letter is not None:
        if type_letter not in _TYPE_LETTERS:
            raise UsageError(f"find: unknown type {type_letter!r} (use one of f, d, l, c, b, p)")
        want = _TYPE_LETTERS[type_letter]
    top = node_at(image, path, follow=True)
    base = "/" + path.strip("/") if path.strip("/") else "/"
    for sub, node, depth in _walk(image, base, top, max_depth):
        if depth < min_depth or (want is not None and node.type is not want):
            continue
        leaf = sub.rsplit("/", 1)[-1] or "/"
        if name is not None and not fnmatch.fnmatchcase(leaf, name):
            continue
        yield sub


def _walk(image: Image, path: str, node: Node,
          max_depth: int | None = None) -> Iterator[tuple[str, Node, int]]:
    stack = [(path, node, 0)]
    while stack:
        p, n, depth = stack.pop()
        yield p, n, depth
        if n.type is EntryType.DIR and (max_depth is None or depth < max_depth):
            kids = children(image, n)
            stack.extend((f"{p.rstrip('/')}/{k}", c, depth + 1) for k, c in reversed(kids))


# -- diff -------------------------------------------------------------------------

async def diff(a: Image, b: Image) -> list[dict]:
    """Paths added, removed or changed from ``a`` to ``b``, with what changed.

    Content is compared without reading when both sides come from the same
    layer entry (same blob, same locator) or differ in size; otherwise both
    files are read and hashed."""
    left = dict(a.index.walk())
    right = dict(b.index.walk())
    out = []
    for path in sorted(left.keys() | right.keys()):
        x, y = left.get(path), right.get(path)
        if x is None:
            out.append({"path": path, "change": "added", "type": y.type.value})
        elif y is None:
            out.append({"path": path, "change": "removed", "type": x.type.value})
        else:
            what = await _changes(a, x, b, y)
            if what:
                out.append({"path": path, "change": "changed", "what": what})
    return out


async def _changes(a: Image, x: Node, b: Image, y: Node) -> dict:
    what = {}
    if x.type is not y.type:
        return {"type": [x.type.value, y.type.value]}
    if x.mode != y.mode:
        what["mode"] = [f"{x.mode:04o}", f"{y.mode:04o}"]
    if (x.uid, x.gid) != (y.uid, y.gid):
        what["owner"] = [f"{x.uid}:{x.gid}", f"{y.uid}:{y.gid}"]
    if x.type is EntryType.SYMLINK and x.linkname != y.linkname:
        what["target"] = [x.linkname, y.linkname]
    if x.type in (EntryType.CHAR, EntryType.BLOCK) and x.rdev != y.rdev:
        what["device"] = [x.rdev, y.rdev]
    if x.type is EntryType.FILE:
        if x.size != y.size:
            what["size"] = [x.size, y.size]
            what["content"] = [await content_digest(a, x), await content_digest(b, y)]
        elif not _same_entry(a, x, b, y):
            da, db = await content_digest(a, x), await content_digest(b, y)
            if da != db:
                what["content"] = [da, db]
    if x.has_xattrs or y.has_xattrs:
        xa = a.index.xattrs(x.ino) if x.has_xattrs else {}
        xb = b.index.xattrs(y.ino) if y.has_xattrs else {}
        if xa != xb:
            what["xattrs"] = [sorted(xa), sorted(xb)]
    return what


def _same_entry(a: Image, x: Node, b: Image, y: Node) -> bool:
    return (x.layer >= 0 and y.layer >= 0 and x.data == y.data
            and a.layers[x.layer].desc.digest == b.layers[y.layer].desc.digest)


async def content_digest(image: Image, node: Node) -> str:
    h = hashlib.sha256()
    for off in range(0, node.size, READ_CHUNK):
        h.update(await image.read(node, off, READ_CHUNK))
    return "sha256:" + h.hexdigest()


# -- export -------------------------------------------------------------------------

async def export(image: Image, dest: str, tally: Tally | None = None) -> int:
    """Write the merged tree to ``dest`` (absent or empty); returns entries written.

    Layers are fetched whole first (one stream each beats a request per file),
    then the tree is written in one worker thread, counted into ``tally``, and
    stopped between two entries by Ctrl-C. Every name is created relative to
    its parent's descriptor with ``O_NOFOLLOW``/``O_EXCL``, so nothing is ever
    written through a symlink, whatever the image holds."""
    try:
        os.makedirs(dest, exist_ok=True)
        if os.listdir(dest):
            raise UsageError(f"export: {dest} is not empty")
    except OSError as e:
        raise LazyfsError(f"export: cannot create {dest}: {e.strerror or e}") from None
    tally = tally if tally is not None else Tally()
    count_tree(image, tally)
    check_free_space(Path(dest), tally.total_bytes, f"the export of {image.ref}")
    await image.fetch_all()
    try:
        return await trio.to_thread.run_sync(_export_tree, image, dest, tally)
    except OSError as e:
        where = f"{e.filename!r} in {dest}" if e.filename else dest
        if e.errno == errno.ENAMETOOLONG:
            raise UnsafeEntry(f"export: name too long for this file system: {where}") from None
        raise LazyfsError(f"export: cannot write {where}: {e.strerror or e}") from None


def count_tree(image: Image, tally: Tally) -> None:
    """What an export will write: entries below the root, bytes of files."""
    for path, node in image.index.walk():
        tally.total += path != "/"
        if node.type is EntryType.FILE:
            tally.total_bytes += node.size


def _export_tree(image: Image, dest: str, tally: Tally) -> int:
    root = image.index.getattr(ROOT_INO)
    root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    dirs: list[tuple[int, Node]] = [(root_fd, root)]
    try:
        _export_dir(image, root, root_fd, {}, dirs, tally)
    finally:
        for fd, node in reversed(dirs):
            _apply_meta(fd, None, node, image)
            os.close(fd)
    return tally.done


def _export_dir(image: Image, dnode: Node, dfd: int, links: dict, dirs: list, tally: Tally) -> None:
    for name, node in children(image, dnode):
        checkpoint()
        if node.type is EntryType.DIR:
            os.mkdir(name, 0o700, dir_fd=dfd)
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
            dirs.append((fd, node))
            tally.done += 1
            _export_dir(image, node, fd, links, dirs, tally)
            continue
        if node.ino in links:
            src_fd, src_name = links[node.ino]
            os.link(src_name, name, src_dir_fd=src_fd, dst_dir_fd=dfd, follow_symlinks=False)
        else:
            _export_leaf(image, node, dfd, name, tally)
            if node.nlink > 1:
                links[node.ino] = (dfd, name)
        tally.done += 1


def _export_leaf(image: Image, node: Node, dfd: int, name: str, tally: Tally) -> None:
    if node.type is EntryType.SYMLINK:
        os.symlink(node.linkname, name, dir_fd=dfd)
    elif node.type is EntryType.FILE:
        _write_file(image, node, dfd, name, tally)
        return
    else:
        kind = {EntryType.CHAR: stat_mod.S_IFCHR, EntryType.BLOCK: stat_mod.S_IFBLK,
                EntryType.FIFO: stat_mod.S_IFIFO}[node.type]
        os.mknod(name, kind | 0o600, node.rdev, dir_fd=dfd)
    _apply_meta(dfd, name, node, image)


def _write_file(image: Image, node: Node, dfd: int, name: str, tally: Tally) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dfd)
    try:
        for off in range(0, node.size, READ_CHUNK):
            checkpoint()
            view = memoryview(image.read_local(node, off, READ_CHUNK))
            tally.done_bytes += len(view)
            while view:
                view = view[os.write(fd, view):]
        if os.fstat(fd).st_size != node.size:
            raise LazyfsError(f"export: {name} came out {os.fstat(fd).st_size} bytes, "
                              f"not {node.size}")
        _apply_meta(fd, None, node, image)
    finally:
        os.close(fd)


def _apply_meta(fd: int, name: str | None, node: Node, image: Image) -> None:
    """Owner, mode, xattrs and times, on ``fd`` itself or on ``name`` relative
    to it (symlinks and device nodes, never followed)."""
    try:
        if name is None:
            os.fchown(fd, node.uid, node.gid)
        else:
            os.chown(name, node.uid, node.gid, dir_fd=fd, follow_symlinks=False)
    except PermissionError:
        pass
    if node.type is not EntryType.SYMLINK:
        if name is None:
            os.fchmod(fd, node.mode)
        else:
            os.chmod(name, node.mode, dir_fd=fd)
    if node.has_xattrs and node.type is not EntryType.SYMLINK:
        target = fd if name is None else f"/proc/self/fd/{fd}/{name}"
        for key, value in image.index.xattrs(node.ino).items():
            try:
                os.setxattr(target, key, value)
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
    ns = (node.mtime_ns, node.mtime_ns)
    if name is None:
        os.utime(fd, ns=ns)
    else:
        os.utime(name, ns=ns, dir_fd=fd, follow_symlinks=False)

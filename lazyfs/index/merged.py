"""The merged overlay tree of an image, persisted in SQLite.

Layers are applied the way ``umoci unpack`` and containerd apply them to a
real directory, but to an in-memory tree, which is then written once as an
immutable SQLite file whose row ids are the inode numbers. Reads never load
the tree back: every FUSE call is one indexed query, so opening a 100k-entry
image costs nothing and memory stays flat.

Rules, per layer (bottom to top):

* names are cleaned lexically (``./``, leading ``/``, ``//``, ``.``, inner
  ``..``); a name that is empty, holds NUL or climbs above the root is an
  ``UnsafeEntry``. A directory entry for the root updates the root.
* parent directories are resolved through symlinks already in the tree,
  inside the image root (like chroot); missing ones are created with mode
  0755, owner 0:0 and mtime 0 (deterministic, unlike umoci's "now").
* a later entry replaces an earlier one of any type at the same path, except
  that a directory over a directory keeps the children and takes the new
  attributes; within a layer the last duplicate wins.
* hardlinks point at a non-directory already in the tree (an earlier entry of
  the same layer, or a lower one) and share its inode; replacing one name
  later leaves the others intact. A link to a missing path, to a directory or
  to itself, and an entry below a non-directory, are ``UnsafeEntry`` (umoci
  and containerd fail on them too).
* whiteouts (``.wh.NAME``) and opaque markers (``.wh..wh..opq``) remove only
  what lower layers made: whatever this layer itself created, or created
  something beneath, survives whether it comes before or after the marker in
  the tar (umoci's "upper paths"). Other ``.wh..wh.`` entries are ignored.
  The one thing order decides is the attributes of a directory that a layer
  both whites out and implies by a child: before the whiteout it keeps the
  lower directory's, after it becomes a fresh implied one, as in umoci.

Per-layer views hold each layer's own tree with whiteouts as 0/0 character
devices and opaque directories marked with ``trusted.overlay.opaque=y``, which
is what overlayfs expects of a lower directory. A directory the layer
recreates after whiting out or replacing it is marked opaque, one it only
implies carries the attributes of the directory below, and whiteouts appear
only where they hide something, so overlayfs shows what the merged tree shows
(except below symlinked directories, which a view cannot express: there the
view keeps the path as written in the tar).
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import threading
from collections import deque
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ..formats.entry import Entry, EntryType, gc_paused
from ..errors import CacheError, NotFound, SymlinkLoop, UnsafeEntry, UsageError

ROOT_INO = 1
SCHEMA_VERSION = 1
MAX_SYMLINKS = 40
_TYPES = tuple(EntryType)
_TYPE_CODE = {t: i for i, t in enumerate(_TYPES)}
_WH = ".wh."
_WH_META = ".wh..wh."
_WH_OPAQUE = ".wh..wh..opq"
_OPAQUE_XATTR = "trusted.overlay.opaque"
_READDIR_FIRST = 64
"""FUSE takes a page of a few dozen entries per call; fetch little at first."""
_READDIR_BATCH = 1024


@dataclass(frozen=True, slots=True)
class Node:
    """One inode as FUSE needs it; ``mode`` is permission bits only (the file
    type is ``type``) and ``data`` the locator of the layer format."""

    ino: int
    type: EntryType
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    nlink: int
    rdev: int
    linkname: str
    layer: int
    """The layer whose entry made this node (or implied it); -1 for a root no
    layer has an entry for."""
    data: bytes
    has_xattrs: bool


class MergedIndex:
    """Read side of a built index: cheap to open, safe to share between threads."""

    def __init__(self, path: Path, uri: str, meta: dict, layer_roots: list[tuple[str, int]]):
        self.path = path
        self._uri = uri
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self.entry_count: int = meta["entry_count"]
        self.layer_roots = layer_roots
        self._layer_of_root = {ino: name for name, ino in layer_roots}
        self._cursors: dict[int, tuple[int, bytes]] = {}

    @classmethod
    def build(cls, path: Path, layers: Sequence[Sequence[Entry]], *,
              layer_names: Sequence[str] = (), per_layer: bool = True) -> "MergedIndex":
        """Apply ``layers`` (bottom to top) and write the index to ``path``."""
        path = Path(path)
        names = list(layer_names) or [str(i) for i in range(len(layers))]
        if len(names) != len(layers):
            raise UsageError(f"{len(layers)} layers but {len(names)} layer names")
        with gc_paused():
            merged = _Tree()
            views = []
            for i, entries in enumerate(layers):
                if per_layer:
                    view = _Tree()
                    view.apply(entries, i, merged_below=merged)
                    views.append((names[i], view.root))
                merged.apply(entries, i)
            _write(path, merged.root, views)
        return cls.open(path)

    @classmethod
    def open(cls, path: Path) -> "MergedIndex":
        path = Path(path).absolute()
        if not path.is_file():
            raise CacheError(f"index {path} does not exist")
        uri = path.as_uri() + "?mode=ro&immutable=1"
        try:
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
            try:
                meta = dict(conn.execute("SELECT key, value FROM meta"))
                roots = conn.execute("SELECT name, ino FROM layer_roots ORDER BY pos").fetchall()
                (pages,) = conn.execute("PRAGMA page_count").fetchone()
                (page_size,) = conn.execute("PRAGMA page_size").fetchone()
            finally:
                conn.close()
        except (sqlite3.DatabaseError, UnicodeDecodeError, ValueError) as e:
            raise CacheError(f"index {path} is unreadable ({e})") from None
        if meta.get("schema") != SCHEMA_VERSION or "entry_count" not in meta:
            raise CacheError(f"index {path} is not a lazyfs index of schema {SCHEMA_VERSION}")
        if path.stat().st_size != pages * page_size:
            raise CacheError(f"index {path} is truncated")
        return cls(path, uri, meta, [(n, i) for n, i in roots])

    def close(self) -> None:
        with self._lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
            self._local = threading.local()

    def __enter__(self) -> "MergedIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def getattr(self, ino: int) -> Node:
        row = self._one(f"SELECT {_COLS} FROM inodes i WHERE i.ino = ?", (ino,))
        if row is None:
            raise NotFound(f"no inode {ino} in image index")
        return _node(row)

    def lookup(self, parent: int, name: str) -> Node | None:
        row = self._one(f"SELECT {_COLS} FROM dirents d JOIN inodes i ON i.ino = d.ino "
                        "WHERE d.parent = ? AND d.name = ?", (parent, _b(name)))
        return None if row is None else _node(row)

    def readdir(self, ino: int, offset: int = 0) -> Iterator[tuple[str, Node, int]]:
        """Children after ``offset`` in a fixed order; each comes with the
        offset to resume after it, so FUSE can page through big directories.
        Resuming where the last call stopped seeks by name rather than
        skipping ``offset`` rows, so paging stays linear in directory size."""
        cursor = self._cursors.get(ino)
        after = cursor[1] if cursor is not None and cursor[0] == offset else None
        batch = _READDIR_FIRST
        while True:
            if after is None:
                rows = self._all(f"SELECT d.name, {_COLS} FROM dirents d "
                                 "JOIN inodes i ON i.ino = d.ino WHERE d.parent = ? "
                                 "ORDER BY d.name LIMIT ? OFFSET ?", (ino, batch, offset))
            else:
                rows = self._all(f"SELECT d.name, {_COLS} FROM dirents d "
                                 "JOIN inodes i ON i.ino = d.ino WHERE d.parent = ? "
                                 "AND d.name > ? ORDER BY d.name LIMIT ?", (ino, after, batch))
            for row in rows:
                offset += 1
                self._cursors[ino] = (offset, row[0])
                yield _s(row[0]), _node(row[1:]), offset
            if len(rows) < batch:
                return
            after = rows[-1][0]
            batch = min(batch * 4, _READDIR_BATCH)

    def listdir(self, ino: int) -> list[str]:
        rows = self._all("SELECT name FROM dirents WHERE parent = ? ORDER BY name", (ino,))
        return [_s(name) for (name,) in rows]

    def xattrs(self, ino: int) -> dict[str, bytes]:
        rows = self._all("SELECT name, value FROM xattrs WHERE ino = ?", (ino,))
        return {_s(name): value for name, value in rows}

    def resolve(self, path: str, *, follow: bool = True, root: int = ROOT_INO) -> Node:
        """The node at ``path``, following symlinks inside the tree at ``root``
        as chroot would: absolute targets start at ``root`` and ``..`` stops there."""
        stack = [self.getattr(root)]
        pending = deque(_parts(path))
        hops = 0
        while pending:
            part = pending.popleft()
            if part == "..":
                if len(stack) > 1:
                    stack.pop()
                continue
            here = stack[-1]
            if here.type is not EntryType.DIR:
                raise NotFound(f"not a directory: {self.path_of(here.ino)} (resolving {path})")
            node = self.lookup(here.ino, part)
            if node is None:
                raise NotFound(f"no such file or directory in image: {path}")
            if node.type is EntryType.SYMLINK and (pending or follow):
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise SymlinkLoop(f"too many levels of symbolic links: {path}")
                if node.linkname.startswith("/"):
                    del stack[1:]
                pending.extendleft(reversed(_parts(node.linkname)))
                continue
            stack.append(node)
        return stack[-1]

    def path_of(self, ino: int) -> str:
        """One path of ``ino`` (hardlinks have several), for messages; nodes of
        a per-layer view are prefixed with the layer's name."""
        parts = []
        while ino != ROOT_INO and ino not in self._layer_of_root:
            row = self._one("SELECT parent, name FROM dirents WHERE ino = ? LIMIT 1", (ino,))
            if row is None:
                raise NotFound(f"no inode {ino} in image index")
            ino = row[0]
            parts.append(_s(row[1]))
        path = "/" + "/".join(reversed(parts))
        return path if ino == ROOT_INO else f"{self._layer_of_root[ino]}:{path}"

    def walk(self, ino: int = ROOT_INO) -> Iterator[tuple[str, Node]]:
        """The node ``ino`` and everything below it, depth first in name order."""
        top = self.path_of(ino)
        stack = [(top, self.getattr(ino))]
        while stack:
            path, node = stack.pop()
            yield path, node
            if node.type is EntryType.DIR:
                prefix = path.rstrip("/") + "/"
                children = [(prefix + name, child) for name, child, _ in self.readdir(node.ino)]
                stack.extend(reversed(children))

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self._uri, uri=True, check_same_thread=False)
                conn.execute("PRAGMA mmap_size = 268435456")
            except sqlite3.DatabaseError as e:
                raise CacheError(f"index {self.path} is unreadable ({e})") from None
            with self._lock:
                self._conns.append(conn)
            self._local.conn = conn
        return conn

    def _one(self, sql: str, args: tuple):
        try:
            return self._conn().execute(sql, args).fetchone()
        except sqlite3.DatabaseError as e:
            raise CacheError(f"index {self.path} is corrupt ({e})") from None

    def _all(self, sql: str, args: tuple) -> list:
        try:
            return self._conn().execute(sql, args).fetchall()
        except sqlite3.DatabaseError as e:
            raise CacheError(f"index {self.path} is corrupt ({e})") from None


_COLS = ("i.ino, i.type, i.mode, i.uid, i.gid, i.size, i.mtime_ns, i.nlink, i.rdev, "
         "i.linkname, i.layer, i.data, i.has_xattrs")


def _node(row) -> Node:
    ino, kind, mode, uid, gid, size, mtime, nlink, rdev, link, layer, data, has_x = row
    return Node(ino, _TYPES[kind], mode, uid, gid, size, mtime, nlink, rdev,
                _s(link), layer, data, bool(has_x))


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _s(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


# ---------------------------------------------------------------- building


class _Node:
    """A node of the tree being built; ``children`` is set for directories."""

    __slots__ = ("type", "mode", "uid", "gid", "size", "mtime_ns", "linkname", "rdev",
                 "layer", "data", "xattrs", "children")

    def __init__(self, type: EntryType, mode: int = 0o755, uid: int = 0, gid: int = 0,
                 size: int = 0, mtime_ns: int = 0, linkname: str = "", rdev: int = 0,
                 layer: int = -1, data: bytes = b"", xattrs: dict | None = None):
        self.type = type
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.mtime_ns = mtime_ns
        self.linkname = linkname
        self.rdev = rdev
        self.layer = layer
        self.data = data
        self.xattrs = xattrs or {}
        self.children: dict[str, _Node] | None = {} if type is EntryType.DIR else None

    @classmethod
    def of(cls, e: Entry, layer: int) -> "_Node":
        size, rdev = 0, 0
        if e.type is EntryType.FILE:
            size = e.size
        elif e.type is EntryType.SYMLINK:
            size = len(_b(e.linkname))
        elif e.type in (EntryType.CHAR, EntryType.BLOCK):
            rdev = os.makedev(e.devmajor, e.devminor)
        return cls(e.type, e.mode & 0o7777, e.uid, e.gid, size, e.mtime_ns,
                   e.linkname if e.type is EntryType.SYMLINK else "", rdev, layer,
                   e.data if e.type is EntryType.FILE else b"", dict(e.xattrs))

    def take_attrs(self, other: "_Node") -> None:
        for name in ("mode", "uid", "gid", "mtime_ns", "layer", "xattrs"):
            setattr(self, name, getattr(other, name))


def _implied_dir(layer: int) -> _Node:
    return _Node(EntryType.DIR, 0o755, layer=layer)


def _copy_lower_dir(implied: _Node, lower: _Node | None) -> None:
    """A directory a layer implies is the lower one left as it was; in a view
    it must say so, or overlayfs would show the view's defaults instead."""
    if lower is not None and lower.children is not None:
        implied.mode, implied.uid, implied.gid = lower.mode, lower.uid, lower.gid
        implied.mtime_ns = lower.mtime_ns
        implied.xattrs = {k: v for k, v in lower.xattrs.items() if k != _OPAQUE_XATTR}


def _is_whiteout_of(node: _Node, layer: int) -> bool:
    return node.type is EntryType.CHAR and node.rdev == 0 and node.layer == layer


def _whiteout_device(layer: int) -> _Node:
    return _Node(EntryType.CHAR, 0o666, rdev=os.makedev(0, 0), layer=layer)


class _Tree:
    def __init__(self):
        self.root = _Node(EntryType.DIR)
        self._view = False
        self._below: _Tree | None = None
        self._parents: dict[tuple[str, ...], tuple[tuple[str, ...], _Node]] = {}
        """Resolved parent directories of this layer's entries; a parent stays
        valid until some existing name is replaced."""

    def apply(self, entries: Iterable[Entry], layer: int, *,
              merged_below: "_Tree | None" = None) -> None:
        """Apply one layer. With ``merged_below`` this tree is that layer's own
        view: whiteouts become markers, and hardlinks to lower files copy them."""
        upper: set[tuple[str, ...]] = {()}
        self._parents = {}
        self._view = merged_below is not None
        self._below = merged_below
        for e in entries:
            parts = _clean(e.name, layer)
            if not parts:
                if e.type is not EntryType.DIR:
                    raise UnsafeEntry(f"layer {layer}: entry {e.name!r} would replace the root "
                                      f"directory with a {e.type.value}")
                self.root.take_attrs(_Node.of(e, layer))
                continue
            base = parts[-1]
            if base.startswith(_WH):
                self._parents.clear()
                if base == _WH_OPAQUE:
                    target = None
                elif base.startswith(_WH_META):
                    continue
                else:
                    target = base[len(_WH):]
                    if target in ("", ".", ".."):
                        raise UnsafeEntry(f"layer {layer}: whiteout {e.name!r} names no file")
                if merged_below is None:
                    self._whiteout(parts[:-1], target, upper, layer, e.name)
                else:
                    self._mark_whiteout(parts[:-1], target, upper, layer, e.name)
                continue
            dir_parts = parts[:-1]
            known = self._parents.get(dir_parts)
            if known is None:
                known = self._parents[dir_parts] = self._make_parents(dir_parts, layer, e.name)
            dir_path, parent = known
            path = dir_path + (base,)
            self._place(parent, path, e, layer, merged_below)
            while path not in upper:
                upper.add(path)
                path = path[:-1]
        self._parents = {}

    def _place(self, parent: _Node, path: tuple[str, ...], e: Entry, layer: int,
               merged_below: "_Tree | None") -> None:
        base = path[-1]
        old = parent.children.get(base)
        if e.type is EntryType.HARDLINK:
            node = self._link_target(e, layer, merged_below, path)
            if node is old:
                return
        else:
            node = _Node.of(e, layer)
            if e.type is EntryType.DIR and old is not None and old.type is EntryType.DIR:
                # in a view, an opaque marker met earlier in this layer stays
                opaque = old.xattrs.get(_OPAQUE_XATTR) if self._view else None
                old.take_attrs(node)
                if opaque is not None:
                    old.xattrs[_OPAQUE_XATTR] = opaque
                return
        if old is not None:
            self._parents.clear()
            if self._view and node.children is not None and old.children is None:
                # whatever this layer put here first already removed the lower directory
                node.xattrs[_OPAQUE_XATTR] = b"y"
        parent.children[base] = node

    def _link_target(self, e: Entry, layer: int, merged_below: "_Tree | None",
                     path: tuple[str, ...]) -> _Node:
        """The node a hardlink entry at ``path`` shares; like link(2), the
        target's last component is not followed."""
        parts = _clean(e.linkname, layer)
        if parts and self._resolve(parts[:-1], layer, e.name) + parts[-1:] == path:
            raise UnsafeEntry(f"layer {layer}: hardlink {e.name!r} points to itself")
        node = self._find(parts, layer, e.name) if parts else None
        if node is None and merged_below is not None and parts:
            below = merged_below._find(parts, layer, e.name)
            if below is not None and below.type is not EntryType.DIR:
                node = _Node(below.type, below.mode, below.uid, below.gid, below.size,
                             below.mtime_ns, below.linkname, below.rdev, below.layer,
                             below.data, dict(below.xattrs))
        if node is None:
            raise UnsafeEntry(f"layer {layer}: hardlink {e.name!r} points to "
                              f"{e.linkname!r}, which is not in the image")
        if node.type is EntryType.DIR:
            raise UnsafeEntry(f"layer {layer}: hardlink {e.name!r} points to "
                              f"directory {e.linkname!r}")
        return node

    def _find(self, parts: tuple[str, ...], layer: int, raw: str) -> _Node | None:
        """The node at ``parts``, following symlinks in the parent path only."""
        dir_path = self._resolve(parts[:-1], layer, raw)
        parent = self._walk(dir_path)
        if parent is None or parent.children is None:
            return None
        return parent.children.get(parts[-1])

    def _resolve(self, parts: Sequence[str], layer: int, raw: str) -> tuple[str, ...]:
        """Expand symlinks in ``parts`` inside the root (chroot-like); parts
        that do not exist are kept as they are, as filepath-securejoin does."""
        pending = deque(parts)
        done: list[str] = []
        nodes = [self.root]
        hops = 0
        while pending:
            part = pending.popleft()
            if part == "..":
                if done:
                    done.pop()
                    nodes.pop()
                continue
            here = nodes[-1]
            node = None
            if here is not None and here.children is not None:
                node = here.children.get(part)
            if node is not None and node.type is EntryType.SYMLINK:
                hops += 1
                if hops > 255:
                    raise UnsafeEntry(f"layer {layer}: entry {raw!r}: too many levels of "
                                      "symbolic links in its path")
                if node.linkname.startswith("/"):
                    done.clear()
                    del nodes[1:]
                pending.extendleft(reversed(_parts(node.linkname)))
                continue
            done.append(part)
            nodes.append(node)
        return tuple(done)

    def _walk(self, path: tuple[str, ...]) -> _Node | None:
        node = self.root
        for part in path:
            if node.children is None:
                return None
            node = node.children.get(part)
            if node is None:
                return None
        return node

    def _make_parents(self, parts: tuple[str, ...], layer: int,
                      raw: str) -> tuple[tuple[str, ...], _Node]:
        path = self._resolve(parts, layer, raw)
        node = self.root
        for i, part in enumerate(path):
            child = node.children.get(part)
            if child is None:
                child = node.children[part] = _implied_dir(layer)
                if self._view:
                    _copy_lower_dir(child, self._visible_below(path[:i + 1]))
            elif self._view and _is_whiteout_of(child, layer):
                child = node.children[part] = _implied_dir(layer)
                child.xattrs[_OPAQUE_XATTR] = b"y"
            elif child.children is None:
                raise UnsafeEntry(f"layer {layer}: entry {raw!r}: parent "
                                  f"/{'/'.join(path[:i + 1])} is not a directory")
            node = child
        return path, node

    def _whiteout(self, dir_parts, target: str | None, upper: set, layer: int,
                  raw: str) -> None:
        dir_path = self._resolve(dir_parts, layer, raw)
        parent = self._walk(dir_path)
        if parent is None or parent.children is None:
            return
        names = list(parent.children) if target is None else [target]
        for name in names:
            if name in parent.children:
                _prune(parent, name, dir_path + (name,), upper)

    def _visible_below(self, path: tuple[str, ...], dirs_only: bool = True) -> _Node | None:
        """The lower node (by default: directory) at ``path`` if nothing in
        this view hides it (an opaque directory, a whiteout or a file on the way)."""
        node = self.root
        for part in path:
            if _OPAQUE_XATTR in node.xattrs:
                return None
            child = node.children.get(part)
            if child is None:
                break
            if child.children is None:
                return None
            node = child
        lower = self._below._walk(path)
        if lower is None or (dirs_only and lower.children is None):
            return None
        return lower

    def _mark_whiteout(self, dir_parts, target: str | None, upper: set, layer: int,
                       raw: str) -> None:
        """Write a whiteout into the view only where it hides something below:
        overlayfs lists whiteouts in directories that have no lower
        counterpart, and the view must not grow directories for them."""
        dir_path = self._resolve(dir_parts, layer, raw)
        here = self._walk(dir_path)
        if here is None:
            if self._visible_below(dir_path) is None:
                return
        elif here.children is None:
            return
        dir_path, parent = self._make_parents(dir_parts, layer, raw)
        if target is None:
            parent.xattrs[_OPAQUE_XATTR] = b"y"
            return
        old = parent.children.get(target)
        if dir_path + (target,) in upper:
            if old is not None and old.type is EntryType.DIR:
                old.xattrs[_OPAQUE_XATTR] = b"y"
        elif self._visible_below(dir_path + (target,), dirs_only=False) is not None:
            parent.children[target] = _whiteout_device(layer)


def _prune(parent: _Node, name: str, path: tuple[str, ...], upper: set) -> None:
    """Remove ``parent/name`` unless this layer made it; inside what it made,
    remove what it did not."""
    if path not in upper:
        del parent.children[name]
        return
    node = parent.children[name]
    if node.children is not None:
        for child in list(node.children):
            _prune(node, child, path + (child,), upper)


def _clean(raw: str, layer: int) -> tuple[str, ...]:
    if not raw or "\0" in raw:
        raise UnsafeEntry(f"layer {layer}: entry {raw!r} has an empty name or a NUL byte")
    quick = (raw[2:] if raw.startswith("./") else raw).strip("/").split("/")
    if "" not in quick and "." not in quick and ".." not in quick:
        return tuple(quick)
    parts: list[str] = []
    for part in raw.split("/"):
        if part == "..":
            if not parts:
                raise UnsafeEntry(f"layer {layer}: entry {raw!r} escapes the image root")
            parts.pop()
        elif part and part != ".":
            parts.append(part)
    return tuple(parts)


# ---------------------------------------------------------------- writing


def _write(path: Path, root: _Node, views: list[tuple[str, _Node]]) -> None:
    """Number the inodes breadth first (merged tree first, so the root is 1)
    and stream the rows into the file; numbering parents in the order they are
    written makes the dirents arrive already sorted by (parent, name)."""
    inos: dict[int, int] = {}
    nodes: list[_Node] = []
    extra_links: dict[int, int] = {}
    entry_count = _number(root, inos, nodes, extra_links)
    roots = []
    for name, top in views:
        _number(top, inos, nodes, extra_links)
        roots.append((name, inos[id(top)]))
    xattr_rows = [(ino, _b(k), v) for ino, node in enumerate(nodes, 1)
                  for k, v in node.xattrs.items()]
    _write_db(path, _inode_rows(nodes, extra_links), _dirent_rows(nodes, inos), xattr_rows,
              roots, entry_count)


def _number(top: _Node, inos: dict[int, int], nodes: list[_Node],
            extra_links: dict[int, int]) -> int:
    """Give every node under ``top`` an inode; return how many names it holds."""
    inos[id(top)] = len(nodes) + 1
    nodes.append(top)
    queue = deque([top])
    names = 0
    while queue:
        node = queue.popleft()
        names += len(node.children)
        for child in node.children.values():
            ino = inos.get(id(child))
            if ino is not None:
                extra_links[ino] = extra_links.get(ino, 0) + 1
                continue
            inos[id(child)] = len(nodes) + 1
            nodes.append(child)
            if child.children is not None:
                queue.append(child)
    return names


def _inode_rows(nodes: list[_Node], extra_links: dict[int, int]) -> Iterator[tuple]:
    for ino, node in enumerate(nodes, 1):
        if node.children is not None:
            nlink = 2 + sum(1 for c in node.children.values() if c.children is not None)
        else:
            nlink = 1 + extra_links.get(ino, 0)
        yield (ino, _TYPE_CODE[node.type], node.mode, node.uid, node.gid, node.size,
               node.mtime_ns, nlink, node.rdev, _b(node.linkname) if node.linkname else b"",
               node.layer, node.data, 1 if node.xattrs else 0)


def _dirent_rows(nodes: list[_Node], inos: dict[int, int]) -> Iterator[tuple[int, bytes, int]]:
    for ino, node in enumerate(nodes, 1):
        if node.children:
            for raw, child in sorted((_b(n), c) for n, c in node.children.items()):
                yield ino, raw, inos[id(child)]


def _write_db(path: Path, rows, dirents, xattr_rows, roots, entry_count: int) -> None:
    sql = resources.files("lazyfs.index").joinpath("index.sql").read_text()
    schema, _, indexes = sql.partition("-- @indexes\n")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".sqlite", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise CacheError(f"cannot write index {path}: {e.strerror or e}") from None
    try:
        conn = sqlite3.connect(tmp)
        try:
            for pragma in ("journal_mode = OFF", "synchronous = OFF", "locking_mode = EXCLUSIVE",
                           "cache_size = -65536"):
                conn.execute(f"PRAGMA {pragma}")
            conn.executescript(schema)
            with conn:
                conn.executemany("INSERT INTO inodes VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
                conn.executemany("INSERT INTO dirents VALUES (?,?,?)", dirents)
                conn.executemany("INSERT INTO xattrs VALUES (?,?,?)", xattr_rows)
                conn.executemany("INSERT INTO layer_roots VALUES (?,?,?)",
                                 [(i, name, ino) for i, (name, ino) in enumerate(roots)])
                conn.executemany("INSERT INTO meta VALUES (?,?)",
                                 [("schema", SCHEMA_VERSION), ("entry_count", entry_count)])
            conn.executescript(indexes)
        finally:
            conn.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        os.unlink(tmp)
        if isinstance(e, (OSError, sqlite3.Error)):
            raise CacheError(f"cannot write index {path}: {e}") from None
        raise

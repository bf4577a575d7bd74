"""The merged overlay tree of an image, persisted in SQLite.

The tree ``overlay.py`` builds from the layers is written once as an
immutable SQLite file whose row ids are the inode numbers. Reads never load
the tree back: every FUSE call is one indexed query, so opening a 100k-entry
image costs nothing and memory stays flat.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import tempfile
import threading
from collections import deque
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import CacheError, NotFound, SymlinkLoop
from ..formats.entry import Entry, EntryType, gc_paused
from .overlay import TreeNode, encode_name, merge, path_parts

ROOT_INO = 1
SCHEMA_VERSION = 2
"""2: per-layer views below lower symlinks and in directories made opaque
changed; an index of an older schema is built again."""
MAX_SYMLINKS = 40
_TYPES = tuple(EntryType)
_TYPE_CODE = {t: i for i, t in enumerate(_TYPES)}
_READDIR_FIRST = 64
"""FUSE takes a page of a few dozen entries per call; fetch little at first."""
_READDIR_BATCH = 1024
_TYPE_BITS = {
    EntryType.FILE: stat.S_IFREG, EntryType.HARDLINK: stat.S_IFREG,
    EntryType.DIR: stat.S_IFDIR, EntryType.SYMLINK: stat.S_IFLNK,
    EntryType.CHAR: stat.S_IFCHR, EntryType.BLOCK: stat.S_IFBLK,
    EntryType.FIFO: stat.S_IFIFO,
}


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


def mode_of(node: Node) -> int:
    """``st_mode``: the type bits and the permission bits."""
    return _TYPE_BITS[node.type] | node.mode


def stat_row(name: bytes, node: Node) -> tuple:
    """``(name, ino, st_mode, nlink, uid, gid, rdev, size, mtime_ns)``: a
    directory entry as ``stat_listing`` gives it."""
    return (name, node.ino, mode_of(node), node.nlink, node.uid, node.gid, node.rdev,
            node.size, node.mtime_ns)


class TreeQueries:
    """What an index answers from its four primitives (``getattr``,
    ``lookup``, ``readdir``, ``path_of``), on disk or in memory alike."""

    path: Path

    def stat_listing(self, ino: int, limit: int, offset: int = 0) -> list[tuple]:
        """Up to ``limit`` children of ``ino`` from ``offset`` in ``readdir``
        order as ``stat_row``s: all a directory listing answers, without a
        ``Node`` each."""
        out = []
        for name, node, _ in self.readdir(ino, offset):
            if len(out) >= limit:
                break
            out.append(stat_row(encode_name(name), node))
        return out

    def resolve(self, path: str, *, follow: bool = True, root: int = ROOT_INO) -> Node:
        """The node at ``path``, following symlinks inside the tree at ``root``
        as chroot would: absolute targets start at ``root`` and ``..`` stops there."""
        stack = [self.getattr(root)]
        pending = deque(path_parts(path))
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
                pending.extendleft(reversed(path_parts(node.linkname)))
                continue
            stack.append(node)
        return stack[-1]

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


class MergedIndex(TreeQueries):
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
        with gc_paused():
            write_numbered(path, number(*merge(layers, names, per_layer)))
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
                        "WHERE d.parent = ? AND d.name = ?", (parent, encode_name(name)))
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

    def stat_listing(self, ino: int, limit: int, offset: int = 0) -> list[tuple]:
        """As ``TreeQueries.stat_listing``, in one query per call (a walk of
        the tree lists every directory, and rows cost less than nodes);
        resuming where the last call ended seeks by name, as ``readdir`` does."""
        cursor = self._cursors.get(ino)
        if cursor is not None and cursor[0] == offset:
            rows = self._all(f"{_STAT_SQL} AND d.name > ? ORDER BY d.name LIMIT ?",
                             (ino, cursor[1], limit))
        else:
            rows = self._all(f"{_STAT_SQL} ORDER BY d.name LIMIT ? OFFSET ?",
                             (ino, limit, offset))
        if len(rows) == limit:
            # Only a page that may have a next one is worth a cursor: a walk
            # reads most directories whole, and cursors are never dropped.
            self._cursors[ino] = (offset + len(rows), rows[-1][0])
        return rows

    def listdir(self, ino: int) -> list[str]:
        rows = self._all("SELECT name FROM dirents WHERE parent = ? ORDER BY name", (ino,))
        return [_s(name) for (name,) in rows]

    def xattrs(self, ino: int) -> dict[str, bytes]:
        rows = self._all("SELECT name, value FROM xattrs WHERE ino = ?", (ino,))
        return {_s(name): value for name, value in rows}

    def xattr_inodes(self) -> frozenset[int]:
        """Every inode that has xattrs: few in any image, so the filesystem
        can answer "none" for all the others without a query."""
        return frozenset(ino for (ino,) in self._all("SELECT DISTINCT ino FROM xattrs", ()))

    def xattr_names(self) -> frozenset[str]:
        return frozenset(_s(name) for (name,) in self._all("SELECT DISTINCT name FROM xattrs", ()))

    def content_bytes(self) -> int:
        """Bytes of content in the merged tree, each inode once (``df``)."""
        (total,) = self._one("SELECT coalesce(sum(size), 0) FROM inodes WHERE ino < ?",
                             (merged_inodes(self.layer_roots) + 1,))
        return total

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

_MODE_SQL = ("(CASE i.type " + " ".join(f"WHEN {code} THEN {_TYPE_BITS[t]}"
                                        for t, code in _TYPE_CODE.items()) + " END | i.mode)")
_STAT_SQL = (f"SELECT d.name, i.ino, {_MODE_SQL}, i.nlink, i.uid, i.gid, i.rdev, i.size, "
             "i.mtime_ns FROM dirents d JOIN inodes i ON i.ino = d.ino WHERE d.parent = ?")


def _node(row) -> Node:
    ino, kind, mode, uid, gid, size, mtime, nlink, rdev, link, layer, data, has_x = row
    return Node(ino, _TYPES[kind], mode, uid, gid, size, mtime, nlink, rdev,
                _s(link), layer, data, bool(has_x))


def _s(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


# ---------------------------------------------------------------- writing


@dataclass
class Numbered:
    """A merged tree with its inode numbers: what the index file holds, and
    what an index in memory answers from until the file is written."""

    nodes: list[TreeNode]
    """Inode ``i`` is ``nodes[i - 1]``."""
    inos: dict[int, int]
    """``id(node)`` -> inode."""
    extra_links: dict[int, int]
    """Inode -> names beyond its first (hardlinks)."""
    entry_count: int
    roots: list[tuple[str, int]]
    """Per-layer views: name and root inode, bottom layer first."""

    def row(self, ino: int) -> tuple:
        """Inode ``ino`` as a row of the ``inodes`` table."""
        node = self.nodes[ino - 1]
        if node.children is not None:
            nlink = 2 + sum(1 for c in node.children.values() if c.children is not None)
        else:
            nlink = 1 + self.extra_links.get(ino, 0)
        return (ino, _TYPE_CODE[node.type], node.mode, node.uid, node.gid, node.size,
                node.mtime_ns, nlink, node.rdev,
                encode_name(node.linkname) if node.linkname else b"",
                node.layer, node.data, 1 if node.xattrs else 0)


def merged_inodes(layer_roots: Sequence[tuple[str, int]]) -> int:
    """How many inodes the merged tree has: it is numbered first, from 1, and
    the per-layer views after it."""
    return min((ino for _, ino in layer_roots), default=2**62) - 1


def number(root: TreeNode, views: list[tuple[str, TreeNode]]) -> Numbered:
    """Number the inodes breadth first (merged tree first, so the root is 1);
    numbering parents in the order they are written makes the dirents arrive
    already sorted by (parent, name)."""
    inos: dict[int, int] = {}
    nodes: list[TreeNode] = []
    extra_links: dict[int, int] = {}
    entry_count = _number(root, inos, nodes, extra_links)
    roots = []
    for name, top in views:
        _number(top, inos, nodes, extra_links)
        roots.append((name, inos[id(top)]))
    return Numbered(nodes, inos, extra_links, entry_count, roots)


def write_numbered(path: Path, tree: Numbered) -> None:
    """Write the index file of ``tree`` to ``path`` (temp file, fsync, rename)."""
    xattr_rows = [(ino, encode_name(k), v) for ino, node in enumerate(tree.nodes, 1)
                  for k, v in node.xattrs.items()]
    rows = map(tree.row, range(1, len(tree.nodes) + 1))
    _write_db(path, rows, _dirent_rows(tree.nodes, tree.inos), xattr_rows, tree.roots,
              tree.entry_count)


def _number(top: TreeNode, inos: dict[int, int], nodes: list[TreeNode],
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


def _dirent_rows(nodes: list[TreeNode], inos: dict[int, int]) -> Iterator[tuple[int, bytes, int]]:
    for ino, node in enumerate(nodes, 1):
        if node.children:
            for raw, child in sorted((encode_name(n), c) for n, c in node.children.items()):
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

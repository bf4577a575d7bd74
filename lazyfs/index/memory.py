"""The merged tree answered from memory, before its index file exists.

Writing the SQLite index costs about twice what merging the layers does, and
nothing on the way to a first answer needs the file. ``MemoryIndex`` answers
from the numbered tree the file is written from, with the same inode numbers,
the same readdir order and offsets and the same nodes, so a caller may switch
to the file (``persist``) at any moment, even in the middle of a listing.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import NotFound
from ..formats.entry import Entry, gc_paused
from .merged import ROOT_INO, MergedIndex, Node, Numbered, TreeQueries, _node, merged_inodes, \
    number, write_numbered
from .overlay import encode_name, merge


class MemoryIndex(TreeQueries):
    """The read side of ``MergedIndex`` over a tree in memory; ``path`` is
    where ``persist`` writes the file."""

    def __init__(self, path: Path, tree: Numbered):
        self.path = Path(path)
        self._tree = tree
        self.entry_count = tree.entry_count
        self.layer_roots = list(tree.roots)
        self._layer_of_root = {ino: name for name, ino in tree.roots}
        self._sorted: dict[int, list[tuple[str, int]]] = {}
        self._parents: dict[int, tuple[int, str]] | None = None
        self._lock = threading.Lock()

    @classmethod
    def build(cls, path: Path, layers: Sequence[Sequence[Entry]], *,
              layer_names: Sequence[str] = (), per_layer: bool = True) -> "MemoryIndex":
        """Apply ``layers`` (bottom to top), as ``MergedIndex.build`` does,
        without writing anything."""
        names = list(layer_names) or [str(i) for i in range(len(layers))]
        with gc_paused():
            return cls(path, number(*merge(layers, names, per_layer)))

    def persist(self) -> MergedIndex:
        """Write the index file and open it (blocking: a worker thread's job)."""
        with gc_paused():
            write_numbered(self.path, self._tree)
        return MergedIndex.open(self.path)

    def close(self) -> None:
        pass

    def __enter__(self) -> "MemoryIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def getattr(self, ino: int) -> Node:
        if not 0 < ino <= len(self._tree.nodes):
            raise NotFound(f"no inode {ino} in image index")
        return _node(self._tree.row(ino))

    def lookup(self, parent: int, name: str) -> Node | None:
        children = self._children(parent)
        child = children.get(name) if children is not None else None
        return None if child is None else self.getattr(self._tree.inos[id(child)])

    def readdir(self, ino: int, offset: int = 0) -> Iterator[tuple[str, Node, int]]:
        """Children after ``offset``, in the file's order (names as bytes)."""
        listing = self._listing(ino)
        for i in range(max(0, offset), len(listing)):
            name, child = listing[i]
            yield name, self.getattr(child), i + 1

    def listdir(self, ino: int) -> list[str]:
        return [name for name, _ in self._listing(ino)]

    def xattrs(self, ino: int) -> dict[str, bytes]:
        if not 0 < ino <= len(self._tree.nodes):
            return {}
        return dict(self._tree.nodes[ino - 1].xattrs)

    def xattr_inodes(self) -> frozenset[int]:
        return frozenset(ino for ino, node in enumerate(self._tree.nodes, 1) if node.xattrs)

    def xattr_names(self) -> frozenset[str]:
        return frozenset(name for node in self._tree.nodes for name in node.xattrs)

    def content_bytes(self) -> int:
        nodes = self._tree.nodes
        return sum(node.size for node in nodes[:merged_inodes(self.layer_roots)])

    def path_of(self, ino: int) -> str:
        """As ``MergedIndex.path_of``: of several names, the one with the
        lowest (parent, name)."""
        if not 0 < ino <= len(self._tree.nodes):
            raise NotFound(f"no inode {ino} in image index")
        parents = self._parent_map()
        parts = []
        while ino != ROOT_INO and ino not in self._layer_of_root:
            up = parents.get(ino)
            if up is None:
                raise NotFound(f"no inode {ino} in image index")
            ino, name = up
            parts.append(name)
        path = "/" + "/".join(reversed(parts))
        return path if ino == ROOT_INO else f"{self._layer_of_root[ino]}:{path}"

    def _children(self, ino: int) -> dict | None:
        if not 0 < ino <= len(self._tree.nodes):
            return None
        return self._tree.nodes[ino - 1].children

    def _listing(self, ino: int) -> list[tuple[str, int]]:
        listing = self._sorted.get(ino)
        if listing is None:
            children = self._children(ino) or {}
            inos = self._tree.inos
            listing = [(name, inos[id(child)]) for name, child in
                       sorted(children.items(), key=lambda kv: encode_name(kv[0]))]
            self._sorted[ino] = listing
        return listing

    def _parent_map(self) -> dict[int, tuple[int, str]]:
        with self._lock:
            if self._parents is None:
                parents: dict[int, tuple[int, str]] = {}
                for ino in range(1, len(self._tree.nodes) + 1):
                    if self._tree.nodes[ino - 1].children:
                        for name, child in self._listing(ino):
                            parents.setdefault(child, (ino, name))
                self._parents = parents
        return self._parents

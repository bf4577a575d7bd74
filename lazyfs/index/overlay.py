"""The overlay merge: layers applied, bottom to top, to an in-memory tree.

Layers are applied the way ``umoci unpack`` and containerd apply them to a
real directory, but to a tree in memory, which ``merged.py`` then writes
once as the image's index.

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
only where they hide something, so overlayfs shows what the merged tree shows.
Parent paths in a view are resolved through the symlinks of the layers below
as well as its own, so an entry written below a lower symlink lands in the
view where it lands in the merged tree.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Iterable, Sequence

from ..errors import UnsafeEntry, UsageError
from ..formats.entry import Entry, EntryType

_WH = ".wh."
_WH_META = ".wh..wh."
_WH_OPAQUE = ".wh..wh..opq"
_OPAQUE_XATTR = "trusted.overlay.opaque"
_ODD_BASES = frozenset({"", ".", ".."})
_RESOLVING = frozenset({EntryType.DIR, EntryType.SYMLINK})
"""Entries that change how the names after them resolve."""


def merge(layers: Sequence[Sequence[Entry]], names: Sequence[str], per_layer: bool = True
          ) -> tuple["TreeNode", list[tuple[str, "TreeNode"]]]:
    """The merged tree of ``layers`` (bottom to top) and, with ``per_layer``,
    each layer's own view, named by ``names``."""
    if len(names) != len(layers):
        raise UsageError(f"{len(layers)} layers but {len(names)} layer names")
    merged = Tree()
    views = []
    for i, entries in enumerate(layers):
        if per_layer:
            view = Tree()
            view.apply(entries, i, merged_below=merged)
            views.append((names[i], view.root))
        merged.apply(entries, i)
    return merged.root, views


def encode_name(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def path_parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


class TreeNode:
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
        self.children: dict[str, TreeNode] | None = {} if type is EntryType.DIR else None

    @classmethod
    def of(cls, e: Entry, layer: int) -> "TreeNode":
        # once per entry of every layer: slots set directly, no defaults to undo
        node = object.__new__(cls)
        kind = e.type
        node.type = kind
        node.mode = e.mode & 0o7777
        node.uid = e.uid
        node.gid = e.gid
        node.mtime_ns = e.mtime_ns
        node.layer = layer
        node.xattrs = dict(e.xattrs) if e.xattrs else {}
        node.size = node.rdev = 0
        node.linkname = ""
        node.data = b""
        node.children = None
        if kind is EntryType.FILE:
            node.size = e.size
            node.data = e.data
        elif kind is EntryType.DIR:
            node.children = {}
        elif kind is EntryType.SYMLINK:
            node.size = len(encode_name(e.linkname))
            node.linkname = e.linkname
        elif kind is EntryType.CHAR or kind is EntryType.BLOCK:
            node.rdev = os.makedev(e.devmajor, e.devminor)
        return node

    def take_attrs(self, other: "TreeNode") -> None:
        for name in ("mode", "uid", "gid", "mtime_ns", "layer", "xattrs"):
            setattr(self, name, getattr(other, name))


def _implied_dir(layer: int) -> TreeNode:
    return TreeNode(EntryType.DIR, 0o755, layer=layer)


def _copy_lower_dir(implied: TreeNode, lower: TreeNode | None) -> None:
    """A directory a layer implies is the lower one left as it was; in a view
    it must say so, or overlayfs would show the view's defaults instead."""
    if lower is not None and lower.children is not None:
        implied.mode, implied.uid, implied.gid = lower.mode, lower.uid, lower.gid
        implied.mtime_ns = lower.mtime_ns
        implied.xattrs = {k: v for k, v in lower.xattrs.items() if k != _OPAQUE_XATTR}


def _is_whiteout_of(node: TreeNode, layer: int) -> bool:
    return node.type is EntryType.CHAR and node.rdev == 0 and node.layer == layer


def _whiteout_device(layer: int) -> TreeNode:
    return TreeNode(EntryType.CHAR, 0o666, rdev=os.makedev(0, 0), layer=layer)


class Tree:
    def __init__(self):
        self.root = TreeNode(EntryType.DIR)
        self._view = False
        self._below: Tree | None = None
        self._parents: dict[str, tuple[tuple[str, ...], TreeNode]] = {}
        """Resolved parent directories of this layer's entries, by the
        directory part of the name as written; a parent stays valid until
        some existing name is replaced."""

    def apply(self, entries: Iterable[Entry], layer: int, *,
              merged_below: "Tree | None" = None) -> None:
        """Apply one layer. With ``merged_below`` this tree is that layer's own
        view: whiteouts become markers, and hardlinks to lower files copy them.

        This runs once per entry of every layer before a new image's first
        answer, so the common entry (a plain name in a directory already met)
        costs one split and one lookup: resolved parents are keyed by the
        name's directory part as written, and the paths this layer made are
        only collected into ``upper`` once a whiteout needs them."""
        parents = self._parents = {}
        view = self._view = merged_below is not None
        self._below = merged_below
        made: list[tuple[tuple[str, ...], str]] = []
        upper: set[tuple[str, ...]] = {()}
        for e in entries:
            name = e.name
            if name.endswith("/"):
                name = name.rstrip("/")
            dir_raw, _, base = name.rpartition("/")
            if base in _ODD_BASES or base.startswith(_WH) or "\0" in base:
                self._apply_odd(e, layer, merged_below, upper, made)
                continue
            known = parents.get(dir_raw)
            if known is None:
                dir_parts = clean_path(e.name, layer)[:-1]
                known = parents[dir_raw] = self._make_parents(dir_parts, layer, e.name)
            dir_path, parent = known
            children = parent.children
            if base not in children and e.type is not EntryType.HARDLINK \
                    and not (view and e.type in _RESOLVING):
                children[base] = TreeNode.of(e, layer)
            else:
                self._place(parent, dir_path, base, e, layer, merged_below)
            made.append((dir_path, base))
        self._parents = {}

    def _apply_odd(self, e: Entry, layer: int, merged_below: "Tree | None",
                   upper: set[tuple[str, ...]], made: list) -> None:
        """An entry for the root, a whiteout, or one whose last part is
        ``.`` or ``..`` or holds a NUL byte: ``clean_path`` sorts them out."""
        parts = clean_path(e.name, layer)
        if not parts:
            if e.type is not EntryType.DIR:
                raise UnsafeEntry(f"layer {layer}: entry {e.name!r} would replace the root "
                                  f"directory with a {e.type.value}")
            self.root.take_attrs(TreeNode.of(e, layer))
            return
        base = parts[-1]
        if base.startswith(_WH):
            self._parents.clear()
            if base == _WH_OPAQUE:
                target = None
            elif base.startswith(_WH_META):
                return
            else:
                target = base[len(_WH):]
                if target in ("", ".", ".."):
                    raise UnsafeEntry(f"layer {layer}: whiteout {e.name!r} names no file")
            _add_upper(upper, made)
            made.clear()
            if merged_below is None:
                self._whiteout(parts[:-1], target, upper, layer, e.name)
            else:
                self._mark_whiteout(parts[:-1], target, upper, layer, e.name)
            return
        dir_path, parent = self._make_parents(parts[:-1], layer, e.name)
        self._place(parent, dir_path, base, e, layer, merged_below)
        made.append((dir_path, base))

    def _place(self, parent: TreeNode, dir_path: tuple[str, ...], base: str, e: Entry,
               layer: int, merged_below: "Tree | None") -> None:
        old = parent.children.get(base)
        if e.type is EntryType.HARDLINK:
            node = self._link_target(e, layer, merged_below, dir_path + (base,))
            if node is old:
                return
        else:
            node = TreeNode.of(e, layer)
            if e.type is EntryType.DIR and old is not None and old.type is EntryType.DIR:
                # in a view, an opaque marker met earlier in this layer stays
                opaque = old.xattrs.get(_OPAQUE_XATTR) if self._view else None
                old.take_attrs(node)
                if opaque is not None:
                    old.xattrs[_OPAQUE_XATTR] = opaque
                return
        if old is not None or (self._view and e.type in _RESOLVING):
            # a name replaced, or in a view a directory or symlink that may
            # hide a lower layer's symlink some earlier name was resolved
            # through: parents resolved so far may be stale
            self._parents.clear()
        if old is not None and self._view and node.children is not None and old.children is None:
            # whatever this layer put here first already removed the lower directory
            node.xattrs[_OPAQUE_XATTR] = b"y"
        parent.children[base] = node

    def _link_target(self, e: Entry, layer: int, merged_below: "Tree | None",
                     path: tuple[str, ...]) -> TreeNode:
        """The node a hardlink entry at ``path`` shares; like link(2), the
        target's last component is not followed."""
        parts = clean_path(e.linkname, layer)
        if parts and self._resolve(parts[:-1], layer, e.name) + parts[-1:] == path:
            raise UnsafeEntry(f"layer {layer}: hardlink {e.name!r} points to itself")
        node = self._find(parts, layer, e.name) if parts else None
        if node is None and merged_below is not None and parts:
            below = merged_below._find(parts, layer, e.name)
            if below is not None and below.type is not EntryType.DIR:
                node = TreeNode(below.type, below.mode, below.uid, below.gid, below.size,
                             below.mtime_ns, below.linkname, below.rdev, below.layer,
                             below.data, dict(below.xattrs))
        if node is None:
            raise UnsafeEntry(f"layer {layer}: hardlink {e.name!r} points to "
                              f"{e.linkname!r}, which is not in the image")
        if node.type is EntryType.DIR:
            raise UnsafeEntry(f"layer {layer}: hardlink {e.name!r} points to "
                              f"directory {e.linkname!r}")
        return node

    def _find(self, parts: tuple[str, ...], layer: int, raw: str) -> TreeNode | None:
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
            if node is None and self._view:
                # a symlink of a lower layer leads this layer's entries as it
                # leads the merged tree's: the view holds them where they land
                lower = self._visible_below((*done, part), dirs_only=False)
                if lower is not None and lower.type is EntryType.SYMLINK:
                    node = lower
            if node is not None and node.type is EntryType.SYMLINK:
                hops += 1
                if hops > 255:
                    raise UnsafeEntry(f"layer {layer}: entry {raw!r}: too many levels of "
                                      "symbolic links in its path")
                if node.linkname.startswith("/"):
                    done.clear()
                    del nodes[1:]
                pending.extendleft(reversed(path_parts(node.linkname)))
                continue
            done.append(part)
            nodes.append(node)
        return tuple(done)

    def _walk(self, path: tuple[str, ...]) -> TreeNode | None:
        node = self.root
        for part in path:
            if node.children is None:
                return None
            node = node.children.get(part)
            if node is None:
                return None
        return node

    def _make_parents(self, parts: tuple[str, ...], layer: int,
                      raw: str) -> tuple[tuple[str, ...], TreeNode]:
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

    def _visible_below(self, path: tuple[str, ...], dirs_only: bool = True) -> TreeNode | None:
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
            _make_opaque(parent, dir_path, upper)
            return
        old = parent.children.get(target)
        if dir_path + (target,) in upper:
            if old is not None and old.type is EntryType.DIR:
                _make_opaque(old, dir_path + (target,), upper)
        elif self._visible_below(dir_path + (target,), dirs_only=False) is not None:
            parent.children[target] = _whiteout_device(layer)


def _add_upper(upper: set[tuple[str, ...]], made: list[tuple[tuple[str, ...], str]]) -> None:
    """The paths a layer made, and every directory above them: what its
    whiteouts and opaque markers leave in place."""
    for dir_path, base in made:
        path = dir_path + (base,)
        while path not in upper:
            upper.add(path)
            path = path[:-1]


def _make_opaque(node: TreeNode, path: tuple[str, ...], upper: set) -> None:
    """Nothing below shows through an opaque directory, so the whiteouts and
    implied directories this layer's markers put in it so far go: overlayfs
    would list a whiteout there, and show an implied directory the merged
    tree does not have."""
    node.xattrs[_OPAQUE_XATTR] = b"y"
    for name in list(node.children):
        _prune(node, name, path + (name,), upper)


def _prune(parent: TreeNode, name: str, path: tuple[str, ...], upper: set) -> None:
    """Remove ``parent/name`` unless this layer made it; inside what it made,
    remove what it did not."""
    if path not in upper:
        del parent.children[name]
        return
    node = parent.children[name]
    if node.children is not None:
        for child in list(node.children):
            _prune(node, child, path + (child,), upper)


def clean_path(raw: str, layer: int) -> tuple[str, ...]:
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


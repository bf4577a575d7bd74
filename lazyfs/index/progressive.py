"""Answers about the merged tree while its layers are still being indexed.

On a first mount of a gzip image nothing is known until bytes arrive, yet
most questions need only part of the image: ``/etc/os-release`` in the top
layer does not depend on the layers below it. This module holds what each
layer has shown so far and answers a lookup as soon as overlay semantics
make the answer certain:

* a path is decided by the topmost layer with an entry at exactly that path,
  provided every layer above it is complete and leaves the path alone;
* a complete layer that whites the path (or a parent) out, or makes a parent
  opaque, without making the path itself, decides that it does not exist;
* once every layer is complete, a path no layer has is absent, and one that
  only exists as the parent of other entries is the directory they imply;
* everything else (readdir, a layer that would need the merge proper to
  place its entries) waits for the full merged index, which then answers
  everything.

An entry lands where its name says only if each of its parents is a
directory when the layer is applied. A parent the layer itself made as a
directory earlier is one; a parent it takes from the layers below (umoci
writes ``usr/local/bin`` without ``usr``) must be found to be a directory
there first, by the same rules, before anything depending on that layer is
answered. A parent that is a symlink could send the entry anywhere, so a
layer with such an entry ("unplaced") defers to the merged index.

Answers given early carry provisional inode numbers (above ``PROVISIONAL``)
and are not cached by the kernel; once the merged index exists a provisional
inode is translated to the final one by its path. Within one layer still
being read, a later duplicate of a name already answered replaces it only
when the merged index takes over.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from ..formats.entry import Entry, EntryType
from ..errors import LazyfsError, NotFound, UnsafeEntry
from .merged import ROOT_INO, MergedIndex, Node
from .overlay import TreeNode as _Node, clean_path as _clean

PROVISIONAL = 1 << 60
_WH = ".wh."
_WH_META = ".wh..wh."
_WH_OPAQUE = ".wh..wh..opq"

Path_ = tuple[str, ...]


@dataclass
class LayerSeen:
    """What one layer has shown so far, keyed by cleaned path."""

    entries: dict[Path_, Entry] = field(default_factory=dict)
    implied: set[Path_] = field(default_factory=lambda: {()})
    """Every strict parent of an entry: directories this layer makes or passes through."""
    whiteouts: set[Path_] = field(default_factory=set)
    opaque: set[Path_] = field(default_factory=set)
    dirs: set[Path_] = field(default_factory=lambda: {()})
    """Explicit directory entries seen so far (and the root)."""
    below: set[Path_] = field(default_factory=set)
    """Parents of entries this layer takes from the layers below it."""
    unchecked: list[Path_] = field(default_factory=list)
    """Those of ``below`` not yet found to be directories there."""
    unplaced: bool = False
    complete: bool = False

    def add(self, entries: list[Entry], layer: int) -> None:
        for e in entries:
            try:
                parts = _clean(e.name, layer)
            except UnsafeEntry:
                self.unplaced = True
                continue
            self._add(parts, e)

    def _add(self, parts: Path_, e: Entry) -> None:
        parent, base = parts[:-1], parts[-1] if parts else ""
        if parts and parent not in self.dirs:
            self._from_below(parent)
        if base.startswith(_WH):
            if base == _WH_OPAQUE:
                self.opaque.add(parent)
            elif not base.startswith(_WH_META):
                self.whiteouts.add(parent + (base[len(_WH):],))
            return
        if not parts and e.type is not EntryType.DIR:
            self.unplaced = True
            return
        if e.type is EntryType.DIR:
            self.dirs.add(parts)
        elif parts in self.dirs or parts in self.implied:
            self.dirs.discard(parts)
            self.unplaced = True
        self.entries[parts] = e
        for i in range(len(parts)):
            self.implied.add(parts[:i])

    def _from_below(self, parent: Path_) -> None:
        for i in range(1, len(parent) + 1):
            p = parent[:i]
            if p in self.dirs or p in self.below:
                continue
            if p in self.entries:
                self.unplaced = True
                return
            self.below.add(p)
            self.unchecked.append(p)


@dataclass(frozen=True)
class _Marker:
    name: str


FINAL = _Marker("final")
"""Only the merged index can answer."""
WAIT = _Marker("wait")
"""The layer that decides has not shown enough yet."""
ABSENT = _Marker("absent")


class ProgressiveIndex:
    """Lookups over layers that are still arriving; ``Tree`` hands over to
    the merged index once it is ``set_final``."""

    def __init__(self, layer_count: int):
        self.layers = [LayerSeen() for _ in range(layer_count)]
        self.final: MergedIndex | None = None
        self.error: LazyfsError | None = None
        self._retry: Callable[[], None] | None = None
        self._changed = trio.Event()
        self._final_ready = trio.Event()
        self._paths: dict[Path_, int] = {(): ROOT_INO}
        self._nodes: dict[int, tuple[Path_, Node, Entry | None]] = {}
        self._next = itertools.count(PROVISIONAL)
        self._translated: dict[int, int] = {}

    # -- fed by the indexing tasks (on the trio loop)

    def add(self, layer: int, entries: list[Entry]) -> None:
        if entries:
            self.layers[layer].add(entries, layer)
            self._wake()

    def complete(self, layer: int) -> None:
        self.layers[layer].complete = True
        self._wake()

    def set_final(self, index: MergedIndex) -> None:
        self.final = index
        self._final_ready.set()
        self._wake()

    def let_go(self) -> None:
        """Forget what the layers showed once the merged index answers: only
        the inodes handed out early are still translated (``_nodes``)."""
        assert self.final is not None
        self.layers = [LayerSeen(complete=True) for _ in self.layers]

    def fail(self, error: LazyfsError, retry: Callable[[], None] | None = None) -> None:
        """Indexing cannot finish: every waiting question gets ``error``. So
        do later ones, unless ``retry`` is given: the next question then
        calls it (to start the indexing again) and waits for that attempt."""
        if self.error is None:
            self.error = error
        self._retry = retry
        self._final_ready.set()
        self._wake()

    def restart(self) -> None:
        """Indexing starts again after a failure: layers not complete are
        forgotten, to be shown again from their start."""
        self.error, self._retry = None, None
        for i, seen in enumerate(self.layers):
            if not seen.complete:
                self.layers[i] = LayerSeen()
        if self.final is None:
            self._final_ready = trio.Event()
        self._wake()

    @property
    def restartable(self) -> bool:
        """Whether the next question starts a failed indexing again."""
        return self.error is not None and self._retry is not None

    def _failed(self, retried: bool = True) -> None:
        raise_or_retry(self.error, self._retry, retried)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- asked by the filesystem

    @property
    def settled(self) -> bool:
        """Whether answers are final: the merged index, or a failure that no
        later question will start again."""
        return self.final is not None or (self.error is not None and self._retry is None)

    async def wait_final(self) -> MergedIndex:
        self._failed(retried=False)
        await self._final_ready.wait()
        return self.final_index()

    def final_index(self) -> MergedIndex:
        if self.error is not None:
            raise self.error
        assert self.final is not None
        return self.final

    def translate(self, ino: int) -> int:
        """The merged index's inode for ``ino`` (which may be provisional)."""
        if ino < PROVISIONAL:
            return ino
        final = self.final_index()
        known = self._translated.get(ino)
        if known is None:
            path = self._nodes[ino][0]
            known = final.resolve("/" + "/".join(path), follow=False).ino
            self._translated[ino] = known
        return known

    async def lookup(self, parent: int, name: str) -> Node | None | _Marker:
        """The early answer, waiting while it may still come; ``FINAL`` once
        only the merged index can answer (``Tree`` hands over then)."""
        if self.final is not None:
            return FINAL
        return await self._decided(self._path(parent) + (name,))

    async def getattr(self, ino: int) -> Node:
        """An inode answered early; the root also after a failure, so that
        the mount's statistics stay readable."""
        if ino == ROOT_INO:
            return self._root()
        self._failed(retried=False)
        known = self._nodes.get(ino)
        if known is None:
            raise NotFound(f"no inode {ino} in image index")
        return known[1]

    def _root(self) -> Node:
        """The root as far as it is known. The kernel asks for it before
        every path walk, so it cannot wait for the layer that decides it
        (often the base layer): until then it is the topmost root entry seen
        so far, or the defaults of an image without one."""
        answer = self._decide(())
        if isinstance(answer, Node):
            return answer
        for layer in range(len(self.layers) - 1, -1, -1):
            e = self.layers[layer].entries.get(())
            if e is not None:
                node = _provisional(ROOT_INO, e, layer)
                self._nodes[ROOT_INO] = ((), node, e)
                return node
        return Node(ROOT_INO, EntryType.DIR, 0o755, 0, 0, 0, 0, 1, 0, "", -1, b"", False)

    def xattrs(self, ino: int) -> dict[str, bytes] | None:
        """The extended attributes of an inode answered early; ``None`` when
        only the merged index has them."""
        if self.settled:
            return None
        if ino == ROOT_INO:
            self._root()
        known = self._nodes.get(ino)
        if known is None or known[2] is None:
            return None
        return dict(known[2].xattrs)

    def parent_of(self, ino: int) -> int | None:
        """The parent inode of a provisional node (None when not provisional)."""
        known = self._nodes.get(ino)
        if known is None or self.settled:
            return None
        return self._paths.get(known[0][:-1])

    def _path(self, ino: int) -> Path_:
        if ino == ROOT_INO:
            return ()
        known = self._nodes.get(ino)
        if known is None:
            raise NotFound(f"no inode {ino} in image index")
        return known[0]

    async def _decided(self, path: Path_) -> Node | None | _Marker:
        """The early answer for ``path``, waiting while it may still come;
        ``FINAL`` when only the merged index can answer."""
        retried = False
        while True:
            self._failed(retried)
            retried = True
            if self.final is not None:
                return FINAL
            answer = self._decide(path)
            if answer is ABSENT:
                return None
            if answer is WAIT:
                await self._changed.wait()
                continue
            if answer is FINAL:
                await self._final_ready.wait()
                continue
            return answer

    def _decide(self, path: Path_) -> Node | _Marker:
        found = self._find(path, len(self.layers))
        if isinstance(found, _Marker):
            return found
        layer, e = found
        return self._node(path, e, layer, self.layers[layer])

    def _find(self, path: Path_, top: int) -> tuple[int, Entry] | _Marker:
        """The entry the merge of the layers below ``top`` would leave at
        ``path``, with its layer, if that is certain yet. A directory that
        only exists because entries below it need it is the one the lowest
        such layer implied."""
        implied_by = None
        for layer in range(top - 1, -1, -1):
            seen = self.layers[layer]
            placed = self._placed(layer)
            if placed is not None:
                return placed
            e = seen.entries.get(path)
            if e is not None:
                if implied_by is not None and e.type is not EntryType.DIR:
                    return FINAL
                return layer, e
            if not seen.complete:
                return WAIT
            verdict = _through(seen, path)
            if verdict is FINAL:
                return FINAL
            if verdict is ABSENT:
                return ABSENT if implied_by is None else _implied(implied_by)
            if path in seen.implied:
                implied_by = layer
        if not path:
            return FINAL
        return ABSENT if implied_by is None else _implied(implied_by)

    def _placed(self, layer: int) -> _Marker | None:
        """``None`` once every parent ``layer`` takes from below is known to
        be a directory there (or absent, so the layer makes it)."""
        seen = self.layers[layer]
        if seen.unplaced:
            return FINAL
        while seen.unchecked:
            found = self._find(seen.unchecked[-1], layer)
            if found is WAIT or found is FINAL:
                return found
            if found is not ABSENT and found[1].type is not EntryType.DIR:
                return FINAL
            seen.unchecked.pop()
        return None

    def _node(self, path: Path_, e: Entry, layer: int, seen: LayerSeen) -> Node | _Marker:
        if e.type is EntryType.HARDLINK:
            try:
                target = seen.entries.get(_clean(e.linkname, layer))
            except UnsafeEntry:
                return FINAL
            if target is None or target.type in (EntryType.HARDLINK, EntryType.DIR):
                return FINAL
            e = target
        ino = self._paths.get(path)
        if ino is None:
            ino = self._paths[path] = next(self._next)
        node = _provisional(ino, e, layer)
        self._nodes[ino] = (path, node, e)
        return node


def raise_or_retry(error: LazyfsError | None, retry: Callable[[], None] | None,
                   retried: bool) -> None:
    """After a failed indexing: raise ``error``, unless this request may start
    the indexing again (``retry``, not done by this request yet: ``retried``)."""
    if error is None:
        return
    if retried or retry is None:
        raise error
    retry()


def _implied(layer: int) -> tuple[int, Entry]:
    return layer, Entry("", EntryType.DIR, 0o755)


def _through(seen: LayerSeen, path: Path_) -> _Marker | None:
    """What a complete layer with no entry at ``path`` does to it: ``None``
    when it lets the layers below decide, ``ABSENT`` when it hides it, or
    ``FINAL`` when only the merge can tell."""
    parents = [path[:i] for i in range(len(path))]
    if any(p in seen.entries and seen.entries[p].type is not EntryType.DIR for p in parents):
        return FINAL
    hidden = path in seen.whiteouts or any(p in seen.whiteouts for p in parents[1:]) \
        or any(p in seen.opaque for p in parents)
    if not hidden:
        return None
    return FINAL if path in seen.implied else ABSENT


def _provisional(ino: int, e: Entry, layer: int) -> Node:
    """The node the merge would make of ``e``; its link count is not known yet."""
    n = _Node.of(e, layer)
    return Node(ino, n.type, n.mode, n.uid, n.gid, n.size, n.mtime_ns, 1, n.rdev, n.linkname,
                n.layer, n.data, bool(n.xattrs))

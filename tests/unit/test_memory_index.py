"""The merged tree answered from memory is the index file's tree, answer for answer.

Every overlay case of ``test_index`` (and per-layer views, hardlinks,
symlinks, xattrs, non-UTF-8 names) is built both ways and every question the
filesystem and the CLI ask is compared: nodes, lookups, listings from every
offset and as ``stat`` rows, paths, xattrs. Then the hand-over: a tree
answers from memory before any file exists and from the file once written,
mid-listing included.
"""

from __future__ import annotations

import pytest

from lazyfs.errors import NotFound
from lazyfs.index.memory import MemoryIndex
from lazyfs.index.merged import ROOT_INO, MergedIndex, TreeQueries
from lazyfs.index.tree import Tree
from tests.support.entries import OPQ, D, F, H, L, W
from tests.unit.test_index import OVERLAY_CASES

EXTRA = {
    "views, hardlinks, whiteouts, opaque dirs": [
        [F("d/a", b"1"), F("d/b", b"2"), F("h1", b"h"), H("h2", "h1"), F("e/old"),
         D("x", xattrs={"user.k": b"v"})],
        [W("d/a"), OPQ("e"), F("e/new", b"3"), OPQ("gone"), W("no/such/x"), D("d/sub")],
        [F("x/f", b"4"), H("y", "h1"), H("z", "d/b"), L("bin", "usr/bin"), F("usr/bin/sh")],
    ],
    "names that are not UTF-8, and sorting by bytes": [
        [F("caf\udce9", b"1"), F("Z"), F("a"), F("\u0800"), F("\udcc0"), F("B/c"),
         L("l", "caf\udce9")],
    ],
}


def _answers(ix) -> dict:
    """Everything an index tells about itself, as plain data."""
    out = {"count": ix.entry_count, "roots": list(ix.layer_roots),
           "xattr_inodes": ix.xattr_inodes()}
    ino = ROOT_INO
    while True:
        try:
            node = ix.getattr(ino)
        except NotFound:
            break
        listing = list(ix.readdir(ino))
        stats = ix.stat_listing(ino, len(listing) + 1)
        assert stats == TreeQueries.stat_listing(ix, ino, len(listing)), "rows are the nodes'"
        pages = [ix.stat_listing(ino, 2, k) for k in range(0, len(listing) + 2, 2)]
        assert sum(pages, []) == stats, "pages resume where the last ended"
        out[ino] = (node, ix.path_of(ino), ix.xattrs(ino), listing, ix.listdir(ino), stats,
                    [ix.stat_listing(ino, 3, k) for k in range(len(listing) + 1)],
                    [list(ix.readdir(ino, k)) for k in range(len(listing) + 1)],
                    {name: ix.lookup(ino, name) for name, _, _ in listing},
                    ix.lookup(ino, "no such name"))
        ino += 1
    out["walk"] = list(ix.walk())
    out["bytes"] = ix.content_bytes()
    assert out["bytes"] == sum({node.ino: node.size for _, node in out["walk"]}.values())
    return out


@pytest.mark.parametrize("layers", [case[0] for case in OVERLAY_CASES.values()]
                         + list(EXTRA.values()),
                         ids=list(OVERLAY_CASES) + list(EXTRA))
def test_memory_answers_what_the_file_answers(tmp_path, layers):
    names = [f"{i}-layer" for i in range(len(layers))]
    on_disk = MergedIndex.build(tmp_path / "a", layers, layer_names=names)
    memory = MemoryIndex.build(tmp_path / "b", layers, layer_names=names)
    assert not (tmp_path / "b").exists()
    assert _answers(memory) == _answers(on_disk)
    assert _answers(memory.persist()) == _answers(on_disk)
    for path in ("/h2", "/bin/sh", "/d/b", "/e/new", "/x/f"):
        try:
            expected = on_disk.resolve(path)
        except NotFound:
            with pytest.raises(NotFound):
                memory.resolve(path)
        else:
            assert memory.resolve(path) == expected


async def test_a_tree_answers_from_memory_then_from_the_file_mid_listing(tmp_path):
    layers = [[F(f"dir/f{i:03}", b"x") for i in range(300)], [W("dir/f007")]]
    memory = MemoryIndex.build(tmp_path / "ix", layers, per_layer=False)
    tree = Tree(memory)
    node = await tree.lookup(ROOT_INO, "dir")
    listing = await tree.readdir(node.ino)
    first = [next(listing) for _ in range(100)]
    assert not (tmp_path / "ix").exists()
    tree.settle(memory.persist())
    assert isinstance(tree.index, MergedIndex)
    rest = list(await tree.readdir(node.ino, first[-1][2]))
    names = [name for name, _, _ in first + rest]
    assert names == [f"f{i:03}" for i in range(300) if i != 7]
    assert [offset for _, _, offset in first + rest] == list(range(1, 300))
    assert (await tree.lookup(node.ino, "f100")) == MergedIndex.open(tmp_path / "ix").lookup(
        node.ino, "f100")

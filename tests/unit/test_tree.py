"""The tree a mount asks: early answers while layers arrive, then the merged index.

No mount needed: ``Tree`` is what ``LazyOperations`` asks, so its answers
before and after the hand-over are the filesystem's.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from lazyfs.errors import LayerFormatError, NotFound
from lazyfs.formats.entry import EntryType
from lazyfs.index.merged import ROOT_INO, MergedIndex
from lazyfs.index.progressive import PROVISIONAL, ProgressiveIndex
from lazyfs.index.tree import Tree, mode_of
from tests.support.entries import D, F, L, W

BASE = [D("./", mode=0o700), D("etc"), F("etc/os-release", b"debian"), F("etc/hostname", b"h"),
        D("usr"), D("usr/bin"), F("usr/bin/env", b"env", mode=0o755), L("bin", "usr/bin")]
TOP = [D("etc"), F("etc/app.conf", b"conf", xattrs={"user.k": b"v"}), W("etc/hostname")]
LAYERS = [BASE, TOP]


@pytest.fixture
def final(tmp_path):
    with MergedIndex.build(tmp_path / "ix", LAYERS, per_layer=False) as index:
        yield index


def fed(*complete: int) -> ProgressiveIndex:
    p = ProgressiveIndex(len(LAYERS))
    for i in complete:
        p.add(i, LAYERS[i])
        p.complete(i)
    return p


async def test_a_tree_over_a_merged_index_answers_at_once_and_lasts(final):
    tree = Tree(final)
    assert tree.lasting and tree.index is final
    etc = await tree.lookup(ROOT_INO, "etc")
    conf = await tree.lookup(etc.ino, "app.conf")
    assert conf.size == 4 and await tree.lookup(etc.ino, "hostname") is None
    assert await tree.xattrs(conf.ino) == {"user.k": b"v"}
    assert [name for name, _, _ in await tree.readdir(etc.ino)] == ["app.conf", "os-release"]
    assert await tree.parent(etc.ino) == ROOT_INO
    assert await tree.parent(conf.ino) == etc.ino
    size, files = await tree.totals()
    assert size == len(b"debian" + b"env" + b"conf" + b"usr/bin") and files == final.entry_count


async def test_early_answers_are_provisional_and_not_lasting():
    tree = Tree(progress=fed(1))
    assert tree.index is None and not tree.lasting
    etc = await tree.lookup(ROOT_INO, "etc")
    conf = await tree.lookup(etc.ino, "app.conf")
    assert etc.ino >= PROVISIONAL and conf.ino >= PROVISIONAL
    assert (await tree.getattr(conf.ino)).data == conf.data
    assert await tree.xattrs(conf.ino) == {"user.k": b"v"}
    assert await tree.parent(conf.ino) == etc.ino
    assert await tree.lookup(etc.ino, "hostname") is None, "whited out by a complete layer"
    assert await tree.totals() == (0, 0)
    assert mode_of(conf) == 0o100644


async def test_the_merged_index_takes_over_and_provisional_inodes_are_translated(final):
    p = fed(1)
    tree = Tree(progress=p)
    etc = await tree.lookup(ROOT_INO, "etc")
    conf = await tree.lookup(etc.ino, "app.conf")
    p.add(0, BASE)
    p.complete(0)
    p.set_final(final)
    assert tree.lasting and tree.index is final
    want = final.resolve("/etc/app.conf")
    assert (await tree.getattr(conf.ino)).ino == want.ino
    assert (await tree.lookup(etc.ino, "app.conf")).ino == want.ino
    assert (await tree.lookup(etc.ino, "os-release")).ino == final.resolve("/etc/os-release").ino
    assert await tree.xattrs(conf.ino) == {"user.k": b"v"}
    assert await tree.parent(conf.ino) == final.resolve("/etc").ino
    names = [name for name, _, _ in await tree.readdir(etc.ino)]
    assert names == ["app.conf", "os-release"]
    assert (await tree.totals())[1] == final.entry_count


async def test_what_only_the_merged_index_knows_waits_for_it(final):
    p = fed(1)
    tree = Tree(progress=p)
    etc = await tree.lookup(ROOT_INO, "etc")
    got = {}

    async def ask(key, fn, *args):
        got[key] = await fn(*args)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask, "listing", tree.readdir, etc.ino)
        nursery.start_soon(ask, "lower", tree.lookup, etc.ino, "os-release")
        nursery.start_soon(ask, "env", tree.lookup, ROOT_INO, "bin")
        await trio.testing.wait_all_tasks_blocked()
        assert got == {}
        p.add(0, BASE)
        p.complete(0)
        await trio.testing.wait_all_tasks_blocked()
        assert got["lower"].layer == 0 and got["lower"].ino >= PROVISIONAL
        assert got["env"].type is EntryType.SYMLINK
        assert "listing" not in got, "listings wait for the merged index"
        p.set_final(final)
    assert [name for name, _, _ in got["listing"]] == ["app.conf", "os-release"]


async def test_a_failure_reaches_the_tree_but_the_root_stays():
    p = fed(1)
    tree = Tree(progress=p)
    etc = await tree.lookup(ROOT_INO, "etc")
    p.fail(LayerFormatError("layer 0: broken gzip stream"))
    assert tree.lasting and tree.index is None
    assert (await tree.getattr(ROOT_INO)).ino == ROOT_INO
    for ask in (tree.lookup(etc.ino, "app.conf"), tree.getattr(etc.ino), tree.readdir(etc.ino),
                tree.totals(), tree.parent(etc.ino)):
        with pytest.raises(LayerFormatError):
            await ask


async def test_an_unknown_inode_is_not_found_before_and_after(final):
    p = fed(1)
    tree = Tree(progress=p)
    with pytest.raises(NotFound):
        await tree.getattr(PROVISIONAL + 99)
    with pytest.raises(NotFound):
        await Tree(final).getattr(10 ** 6)


async def test_layer_roots_are_children_of_the_root(tmp_path):
    with MergedIndex.build(tmp_path / "ix", LAYERS, layer_names=["0-a", "1-b"],
                           per_layer=True) as index:
        tree = Tree(index)
        for name, ino in index.layer_roots:
            assert await tree.parent(ino) == ROOT_INO
        top = dict(index.layer_roots)["1-b"]
        etc = await tree.lookup(top, "etc")
        assert await tree.parent(etc.ino) == top
        conf = index.resolve("/etc/app.conf", root=top)
        assert await tree.parent(conf.ino) == etc.ino


def test_a_tree_needs_an_index():
    with pytest.raises(ValueError):
        Tree()

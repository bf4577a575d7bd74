"""Early answers while layers arrive, checked against the merged index itself.

Every answer the progressive index gives before the merge must be the one
the merged index gives after it; the randomized stacks below hold whiteouts,
opaque directories, symlinks, hardlinks and implied parents in every order.
"""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from lazyfs.formats.entry import Entry, EntryType
from lazyfs.errors import LayerFormatError, NotFound, UnsafeEntry
from lazyfs.index.merged import ROOT_INO, MergedIndex
from tests.support.entries import OPQ, D, F, H, L, T, W
from lazyfs.index.progressive import ABSENT, FINAL, PROVISIONAL, WAIT, ProgressiveIndex
from lazyfs.index.tree import Tree





def progressive(*layers, complete=None) -> ProgressiveIndex:
    p = ProgressiveIndex(len(layers))
    for i, entries in enumerate(layers):
        p.add(i, list(entries))
        if complete is None or i in complete:
            p.complete(i)
    return p


def decide(p: ProgressiveIndex, path: str):
    return p._decide(tuple(x for x in path.split("/") if x))


BASE = [D("./", mode=0o700), D("etc"), F("etc/os-release", b"debian"), D("usr"),
        D("usr/bin"), F("usr/bin/env", b"env", mode=0o755), L("bin", "usr/bin")]


def test_a_path_in_the_top_layer_is_answered_before_lower_layers_finish():
    top = [D("etc"), F("etc/app.conf", b"conf")]
    p = progressive([], top, complete={1})
    node = decide(p, "etc/app.conf")
    assert node.layer == 1 and node.size == 4 and node.ino >= PROVISIONAL
    assert decide(p, "etc/app.conf").ino == node.ino


def test_a_lower_path_waits_for_every_layer_above_it():
    p = progressive(BASE, [D("etc")], complete={0})
    assert decide(p, "etc/os-release") is WAIT
    p.complete(1)
    assert decide(p, "etc/os-release").layer == 0


def test_a_path_seen_in_a_layer_still_arriving_is_answered():
    p = progressive(BASE[:3], complete=set())
    assert decide(p, "etc/os-release").data == b"debian"
    assert decide(p, "usr/bin/env") is WAIT


def test_whiteouts_and_opaque_dirs_above_answer_absent_without_the_lower_layers():
    p = progressive(BASE[:3], [D("etc"), W("etc/os-release")], complete={1})
    assert decide(p, "etc/os-release") is ABSENT
    p = progressive(BASE[:3], [D("etc"), OPQ("etc"), F("etc/new", b"n")], complete={1})
    assert decide(p, "etc/os-release") is ABSENT
    assert decide(p, "etc/new").layer == 1
    p = progressive(BASE[:3], [W("etc")], complete={1})
    assert decide(p, "etc/os-release") is ABSENT


def test_a_path_no_layer_has_is_absent_once_every_layer_is_complete():
    p = progressive(BASE, [D("etc")], complete={1})
    assert decide(p, "etc/missing") is WAIT
    p.complete(0)
    assert decide(p, "etc/missing") is ABSENT
    assert decide(p, "nowhere") is ABSENT


def test_a_directory_only_implied_is_the_lowest_implying_layers():
    p = progressive([D("etc")], [F("opt/app/bin", b"x")], [F("opt/app/lib", b"y")])
    node = decide(p, "opt/app")
    assert (node.type, node.mode, node.layer, node.mtime_ns) == (T.DIR, 0o755, 1, 0)


def test_parents_taken_from_below_must_be_directories_there():
    """umoci writes ``usr/local/bin/x`` without ``usr``: fine over a directory."""
    p = progressive([D("etc")], [F("usr/local/x", b"x")], complete={1})
    assert decide(p, "usr/local/x") is WAIT
    p.add(0, [D("usr")])
    assert decide(p, "usr/local/x") is WAIT
    p.add(0, [D("usr/local")])
    assert decide(p, "usr/local/x").layer == 1


def test_a_parent_that_is_a_symlink_below_defers_to_the_merge():
    """``lib/x`` without a ``lib`` entry lands under the symlink's target."""
    p = progressive([L("lib", "usr/lib"), D("usr"), D("usr/lib")], [F("lib/x", b"x")])
    assert decide(p, "usr/lib/x") is FINAL
    assert decide(p, "lib") is FINAL
    assert decide(p, "usr") is FINAL


def test_a_layer_that_replaces_what_it_made_defers_to_the_merge():
    p = progressive([F("b/c/a", b"x"), L("b/c", "d")])
    assert decide(p, "b/c/a") is FINAL


def test_hardlinks_share_their_target_in_the_same_layer():
    p = progressive([D("a"), F("a/f", b"data"), H("a/g", "a/f")])
    assert decide(p, "a/g").data == b"data"
    p = progressive([D("a"), F("a/f", b"data")], [D("a"), H("a/g", "a/f")])
    assert decide(p, "a/g") is FINAL


def test_the_root_takes_the_top_explicit_root_entry():
    p = progressive(BASE, [D("./", mode=0o711), D("etc")], complete={1})
    assert decide(p, "").mode == 0o711
    p = progressive(BASE, [D("etc")], complete={1})
    assert decide(p, "").mode == 0o700


async def test_lookups_wait_for_what_they_need_then_switch_to_the_merged_index(tmp_path):
    layers = [BASE, [D("etc"), F("etc/app.conf", b"conf")]]
    p = ProgressiveIndex(2)
    got = {}

    async def ask(name, parent_path):
        parent = ROOT_INO
        for part in parent_path:
            parent = (await p.lookup(parent, part)).ino
        got[name] = await p.lookup(parent, name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask, "app.conf", ["etc"])
        nursery.start_soon(ask, "os-release", ["etc"])
        nursery.start_soon(ask, "missing", ["etc"])
        await trio.testing.wait_all_tasks_blocked()
        p.add(1, layers[1])
        await trio.testing.wait_all_tasks_blocked()
        assert got["app.conf"].layer == 1 and "os-release" not in got
        p.complete(1)
        p.add(0, layers[0])
        await trio.testing.wait_all_tasks_blocked()
        assert got["os-release"].layer == 0 and "missing" not in got
        p.complete(0)
        await trio.testing.wait_all_tasks_blocked()
        assert got["missing"] is None, "absent once every layer is complete"
        final = MergedIndex.build(tmp_path / "ix", layers, per_layer=False)
        p.set_final(final)
    provisional = got["app.conf"].ino
    assert p.translate(provisional) == final.resolve("/etc/app.conf").ino
    assert (await Tree(progress=p).getattr(provisional)).ino == final.resolve("/etc/app.conf").ino


async def test_a_failure_reaches_every_waiting_lookup():
    p = ProgressiveIndex(1)
    errors = []

    async def ask():
        try:
            await p.lookup(ROOT_INO, "etc")
        except LayerFormatError as e:
            errors.append(e)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)
        nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        p.fail(LayerFormatError("layer x: broken gzip stream"))
    assert len(errors) == 2
    with pytest.raises(LayerFormatError):
        await p.lookup(ROOT_INO, "etc")
    assert (await p.getattr(ROOT_INO)).ino == ROOT_INO, "the root stays, for statistics"


async def test_an_unknown_inode_is_not_found():
    p = progressive(BASE)
    with pytest.raises(NotFound):
        await p.getattr(PROVISIONAL + 12345)


# ---------------------------------------------------------------- differential


NAMES = ["a", "b", "c", "d"]


def _random_layer(rng: random.Random, depth: int = 3) -> list[Entry]:
    """Entries with explicit parents (as docker writes them) most of the
    time, implied ones (as umoci does) otherwise; a layer never puts a
    non-directory where it already has a directory or something below it,
    which only the merged index sorts out."""
    entries: list[Entry] = []
    seen: set[str] = set()
    nondirs: set[str] = set()
    parents: set[str] = set()
    files: list[str] = []
    for _ in range(rng.randint(0, 14)):
        parts = [rng.choice(NAMES) for _ in range(rng.randint(1, depth))]
        path = "/".join(parts)
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts))]
        kind = rng.random()
        makes_dir = 0.35 <= kind < 0.55 or kind >= 0.72
        if path in seen or any(p in nondirs for p in prefixes) or \
                (not makes_dir and path in parents):
            continue
        if rng.random() < 0.7:
            for parent in prefixes:
                if parent not in seen:
                    seen.add(parent)
                    entries.append(D(parent, mode=rng.choice([0o755, 0o700])))
        parents.update(prefixes)
        seen.add(path)
        if kind < 0.35:
            files.append(path)
            nondirs.add(path)
            entries.append(F(path, path.encode() + bytes([rng.randrange(256)])))
        elif kind < 0.55:
            entries.append(D(path, mode=rng.choice([0o755, 0o711])))
        elif kind < 0.65:
            nondirs.add(path)
            entries.append(L(path, rng.choice(NAMES)))
        elif kind < 0.72 and files:
            nondirs.add(path)
            entries.append(H(path, rng.choice(files)))
        elif kind < 0.9:
            seen.discard(path)
            entries.append(W(path))
        else:
            entries.append(OPQ("/".join(parts[:-1]) or "."))
    return entries


def _same(early, final) -> bool:
    keep = ("type", "mode", "uid", "gid", "size", "mtime_ns", "rdev", "linkname", "layer",
            "data", "has_xattrs")
    return all(getattr(early, k) == getattr(final, k) for k in keep)


def _paths(depth: int = 3) -> list[tuple[str, ...]]:
    out = [()]
    frontier = [()]
    for _ in range(depth):
        frontier = [p + (n,) for p in frontier for n in NAMES]
        out += frontier
    return out


def _final_node(index: MergedIndex, path: tuple[str, ...]):
    ino = ROOT_INO
    for part in path:
        node = index.lookup(ino, part)
        if node is None:
            return None
        if node.type is not EntryType.DIR and part != path[-1]:
            return None
        ino = node.ino
    return index.getattr(ino)


@pytest.mark.parametrize("seed", range(100))
def test_every_early_answer_is_the_merged_answer(tmp_path, seed):
    rng = random.Random(seed)
    for _ in range(100):
        layers = [_random_layer(rng) for _ in range(rng.randint(1, 4))]
        try:
            final = MergedIndex.build(tmp_path / "ix", layers, per_layer=False)
            break
        except UnsafeEntry:
            continue  # not a valid image (an entry below a file, a dangling hardlink)
    else:
        raise AssertionError("no valid stack drawn")
    # every layer complete, then the top layers complete and the rest partly fed
    for cut in range(len(layers) + 1):
        p = ProgressiveIndex(len(layers))
        for i, entries in enumerate(layers):
            if i >= cut:
                p.add(i, entries)
                p.complete(i)
            else:
                p.add(i, entries[:rng.randint(0, len(entries))])
        for path in _paths():
            answer = p._decide(path)
            expected = _final_node(final, path)
            if answer is ABSENT:
                assert expected is None, (path, layers)
            elif answer not in (FINAL, WAIT):
                assert expected is not None and _same(answer, expected), (path, answer, expected)

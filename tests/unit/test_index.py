"""The merged overlay index, table-driven from ``Entry`` lists.

Each case states layers bottom to top and the tree expected from them; the
umoci oracle for the same rules lives in tests/integration/test_index_umoci.py.
"""

from __future__ import annotations

import os
import threading

import pytest

from lazyfs.formats.entry import Entry
from lazyfs.errors import CacheError, NotFound, SymlinkLoop, UnsafeEntry, UsageError
from lazyfs.index.merged import ROOT_INO, MergedIndex
from tests.support.entries import OPQ, D, F, H, L, T, W


def build(tmp_path, *layers, **kw) -> MergedIndex:
    return MergedIndex.build(tmp_path / "index.sqlite", layers, **kw)


def tree(ix: MergedIndex, ino: int = ROOT_INO) -> dict[str, object]:
    """Path -> file data, "dir", "-> target" or the type name; compact to assert on."""
    out = {}
    for path, node in ix.walk(ino):
        if path.endswith("/"):
            continue
        path = path.split(":", 1)[-1]
        if node.type is T.FILE:
            out[path] = node.data
        elif node.type is T.DIR:
            out[path] = "dir"
        elif node.type is T.SYMLINK:
            out[path] = "-> " + node.linkname
        else:
            out[path] = f"{node.type.value} {os.major(node.rdev)}:{os.minor(node.rdev)}"
    return out


# --------------------------------------------------------------- overlay rules

OVERLAY_CASES = {
    "later file replaces earlier": (
        [[F("a", b"1")], [F("a", b"2")]],
        {"/a": b"2"}),
    "whiteout removes lower file and is not shown": (
        [[F("a", b"1"), F("b", b"1")], [W("a")]],
        {"/b": b"1"}),
    "whiteout removes a whole subtree": (
        [[F("d/x/y", b"1"), F("d/z", b"2"), F("e", b"3")], [W("d")]],
        {"/e": b"3"}),
    "whiteout of a missing name is harmless": (
        [[F("a", b"1")], [W("nope"), W("no/such/dir")]],
        {"/a": b"1"}),
    "whiteout then same-layer file: the file survives": (
        [[F("a", b"1")], [W("a"), F("a", b"2")]],
        {"/a": b"2"}),
    "same-layer file then whiteout: the file survives": (
        [[F("a", b"1")], [F("a", b"2"), W("a")]],
        {"/a": b"2"}),
    "whiteout of a dir keeps what this layer put in it": (
        [[F("d/old", b"1")], [F("d/new", b"2"), W("d")]],
        {"/d": "dir", "/d/new": b"2"}),
    "opaque marker first hides lower content, keeps this layer's": (
        [[F("d/a", b"1"), F("d/sub/b", b"1"), F("e", b"1")], [OPQ("d"), F("d/c", b"2")]],
        {"/d": "dir", "/d/c": b"2", "/e": b"1"}),
    "opaque marker last hides lower content, keeps this layer's": (
        [[F("d/a", b"1"), F("d/sub/b", b"1"), F("e", b"1")], [F("d/c", b"2"), OPQ("d")]],
        {"/d": "dir", "/d/c": b"2", "/e": b"1"}),
    "opaque keeps lower dirs this layer writes into, minus their lower files": (
        [[F("d/sub/old", b"1")], [F("d/sub/new", b"2"), OPQ("d")]],
        {"/d": "dir", "/d/sub": "dir", "/d/sub/new": b"2"}),
    "opaque in a middle layer, more content above": (
        [[F("d/a", b"1")], [OPQ("d"), F("d/b", b"2")], [F("d/c", b"3")]],
        {"/d": "dir", "/d/b": b"2", "/d/c": b"3"}),
    "other whiteout meta entries are ignored, implying no parent": (
        [[F("a", b"1")], [F(".wh..wh.plnk"), F("d/.wh..wh.aufs")]],
        {"/a": b"1"}),
    "file replaces a directory and its subtree": (
        [[F("d/x", b"1"), F("d/y/z", b"1")], [F("d", b"2")]],
        {"/d": b"2"}),
    "directory replaces a file, then a file the directory": (
        [[F("p", b"1")], [D("p"), F("p/q", b"2")], [F("p", b"3")]],
        {"/p": b"3"}),
    "directory replaces a file": (
        [[F("p", b"1")], [D("p"), F("p/q", b"2")]],
        {"/p": "dir", "/p/q": b"2"}),
    "directory over directory merges": (
        [[F("d/a", b"1")], [D("d", 0o700), F("d/b", b"2")]],
        {"/d": "dir", "/d/a": b"1", "/d/b": b"2"}),
    "symlink replaces a directory": (
        [[F("d/a", b"1")], [L("d", "/etc")]],
        {"/d": "-> /etc"}),
    "duplicate entries in one layer: last wins": (
        [[F("a", b"1"), F("a", b"2"), L("b", "x"), F("b", b"3")]],
        {"/a": b"2", "/b": b"3"}),
    "names are normalised": (
        [[F("./a", b"1"), F("/b", b"2"), F("c//d/./e", b"3"), F("c/x/../y", b"4"), D("f/")]],
        {"/a": b"1", "/b": b"2", "/c": "dir", "/c/d": "dir", "/c/d/e": b"3", "/c/y": b"4",
         "/f": "dir"}),
    "entries below a symlinked directory land in its target": (
        [[D("usr/lib"), L("lib", "usr/lib")], [F("lib/x", b"1")], [F("lib/y", b"2")]],
        {"/lib": "-> usr/lib", "/usr": "dir", "/usr/lib": "dir",
         "/usr/lib/x": b"1", "/usr/lib/y": b"2"}),
    "absolute symlinked parent stays inside the image": (
        [[L("up", "/../../srv")], [F("up/x", b"1")]],
        {"/up": "-> /../../srv", "/srv": "dir", "/srv/x": b"1"}),
    "whiteout through a symlinked directory": (
        [[F("usr/lib/x", b"1"), L("lib", "usr/lib")], [W("lib/x")]],
        {"/lib": "-> usr/lib", "/usr": "dir", "/usr/lib": "dir"}),
    "devices keep their numbers": (
        [[Entry("dev/null", T.CHAR, 0o666, devmajor=1, devminor=3),
          Entry("dev/sda", T.BLOCK, 0o660, devmajor=8, devminor=0),
          Entry("run/fifo", T.FIFO, 0o600)]],
        {"/dev": "dir", "/dev/null": "char 1:3", "/dev/sda": "block 8:0",
         "/run": "dir", "/run/fifo": "fifo 0:0"}),
}


@pytest.mark.parametrize("layers, expected", OVERLAY_CASES.values(), ids=OVERLAY_CASES.keys())
def test_overlay_rules(tmp_path, layers, expected):
    assert tree(build(tmp_path, *layers)) == expected


def test_implied_parents_are_root_owned_0755_with_zero_mtime(tmp_path):
    ix = build(tmp_path, [F("a/b/c", b"x", uid=7, gid=8, mtime_ns=5_000_000_000)])
    for path in ("/a", "/a/b"):
        node = ix.resolve(path)
        assert (node.type, node.mode, node.uid, node.gid, node.mtime_ns) == (T.DIR, 0o755, 0, 0, 0)
    f = ix.resolve("/a/b/c")
    assert (f.uid, f.gid, f.mtime_ns, f.size, f.layer) == (7, 8, 5_000_000_000, 1, 0)


def test_root_entry_sets_root_attributes(tmp_path):
    ix = build(tmp_path, [D("./", 0o700, uid=3, mtime_ns=9)], [F("x", b"")])
    root = ix.getattr(ROOT_INO)
    assert (root.type, root.mode, root.uid, root.mtime_ns, root.layer) == (T.DIR, 0o700, 3, 9, 0)


def test_directory_over_directory_takes_new_attributes_and_xattrs(tmp_path):
    ix = build(tmp_path, [D("d", 0o755, xattrs={"user.a": b"1"}), F("d/x")],
               [D("d", 0o1777, uid=5, mtime_ns=7, xattrs={"user.b": b"2"})])
    d = ix.resolve("/d")
    assert (d.mode, d.uid, d.mtime_ns, d.layer) == (0o1777, 5, 7, 1)
    assert ix.xattrs(d.ino) == {"user.b": b"2"}
    assert ix.listdir(d.ino) == ["x"]


def test_directory_nlink_counts_subdirectories(tmp_path):
    ix = build(tmp_path, [D("a"), D("a/b"), D("a/c"), F("a/f"), L("a/l", "b")])
    assert ix.resolve("/a").nlink == 4
    assert ix.resolve("/a/b").nlink == 2
    assert ix.getattr(ROOT_INO).nlink == 3


def test_symlink_size_is_its_target_length(tmp_path):
    ix = build(tmp_path, [L("l", "some/where")])
    assert ix.resolve("/l", follow=False).size == len("some/where")


# --------------------------------------------------------------- hardlinks

def test_hardlinks_share_an_inode_and_count_links(tmp_path):
    ix = build(tmp_path, [F("a", b"data", xattrs={"user.x": b"1"}), H("b", "a"), H("d/c", "./a")])
    a, b, c = ix.resolve("/a"), ix.resolve("/b"), ix.resolve("/d/c")
    assert a.ino == b.ino == c.ino
    assert a.nlink == 3 and a.data == b"data"
    assert ix.xattrs(c.ino) == {"user.x": b"1"}


def test_replacing_one_name_of_a_hardlink_group_keeps_the_others(tmp_path):
    ix = build(tmp_path, [F("a", b"data"), H("b", "a")], [F("a", b"new")])
    a, b = ix.resolve("/a"), ix.resolve("/b")
    assert a.ino != b.ino
    assert (a.data, a.nlink) == (b"new", 1)
    assert (b.data, b.nlink, b.layer) == (b"data", 1, 0)


def test_whiting_out_the_hardlink_target_name_keeps_the_link(tmp_path):
    ix = build(tmp_path, [F("a", b"data"), H("b", "a"), H("c", "a")], [W("a")])
    assert tree(ix) == {"/b": b"data", "/c": b"data"}
    assert ix.resolve("/b").nlink == 2


def test_hardlink_to_a_lower_layer_file(tmp_path):
    ix = build(tmp_path, [F("a", b"data")], [H("b", "a")])
    assert ix.resolve("/a").ino == ix.resolve("/b").ino
    assert ix.resolve("/b").nlink == 2


@pytest.mark.parametrize("layers, message", [
    ([[H("b", "missing")]], "layer 0: hardlink 'b' points to 'missing'"),
    ([[F("a")], [W("a"), H("b", "a")]], "layer 1: hardlink 'b' points to 'a'"),
    ([[D("d"), H("b", "d")]], "layer 0: hardlink 'b' points to directory 'd'"),
    ([[F("a"), H("b", "../a")]], "layer 0: entry '../a' escapes"),
])
def test_bad_hardlinks_are_refused(tmp_path, layers, message):
    with pytest.raises(UnsafeEntry, match=message.replace(".", r"\.")):
        build(tmp_path, *layers)


# --------------------------------------------------------------- hostile names

@pytest.mark.parametrize("entry", [
    F("../etc/passwd"), F("a/../../x"), F("/../x"), F(""), F("a\0b"), F(".."),
    L("./", "/etc"), F("."), W("x/."), F(".wh."), F("d/.wh.."),
])
def test_hostile_names_are_refused_naming_layer_and_entry(tmp_path, entry):
    with pytest.raises(UnsafeEntry) as err:
        build(tmp_path, [F("ok")], [entry])
    assert "layer 1" in str(err.value)
    assert repr(entry.name) in str(err.value)
    assert not (tmp_path / "index.sqlite").exists()


def test_entry_below_a_file_is_refused(tmp_path):
    with pytest.raises(UnsafeEntry, match=r"layer 1: entry 'f/x': parent /f is not a directory"):
        build(tmp_path, [F("f")], [F("f/x")])


# --------------------------------------------------------------- resolve

@pytest.fixture
def links(tmp_path):
    return build(tmp_path, [
        F("etc/passwd", b"root"), D("usr/bin"), F("usr/bin/sh", b"sh"),
        L("bin", "usr/bin"), L("abs", "/usr/bin/sh"), L("usr/bin/rel", "../../etc/passwd"),
        L("escape", "../../../../etc/passwd"), L("loop1", "loop2"), L("loop2", "loop1"),
        L("self", "self"), L("dangling", "/nowhere"), L("dirlink", "/usr"),
    ])


@pytest.mark.parametrize("path, data", [
    ("/bin/sh", b"sh"), ("bin/sh", b"sh"), ("/abs", b"sh"), ("/usr/bin/rel", b"root"),
    ("/bin/rel", b"root"), ("/escape", b"root"), ("/../../etc/passwd", b"root"),
    ("/dirlink/bin/../../etc/passwd", b"root"), ("//etc/./passwd", b"root"),
])
def test_resolve_follows_links_inside_the_image(links, path, data):
    assert links.resolve(path).data == data


def test_resolve_without_follow_returns_the_link(links):
    node = links.resolve("/bin", follow=False)
    assert (node.type, node.linkname) == (T.SYMLINK, "usr/bin")
    assert links.resolve("/bin/rel", follow=False).linkname == "../../etc/passwd"
    assert links.resolve("/").ino == ROOT_INO


@pytest.mark.parametrize("path", ["/loop1", "/self", "/loop2/x"])
def test_resolve_reports_loops(links, path):
    with pytest.raises(SymlinkLoop, match="too many levels of symbolic links"):
        links.resolve(path)


@pytest.mark.parametrize("path", ["/dangling", "/nope", "/etc/passwd/x", "/bin/nope"])
def test_resolve_missing_is_not_found(links, path):
    with pytest.raises(NotFound):
        links.resolve(path)


def test_symlink_loop_has_eloop():
    import errno
    assert SymlinkLoop.errno == errno.ELOOP and issubclass(SymlinkLoop, NotFound)


# --------------------------------------------------------------- persistence and reads

def test_inodes_are_stable_across_open(tmp_path):
    layers = [[F(f"d{i}/f{j}", bytes([j])) for i in range(5) for j in range(5)],
              [F("d1/f1", b"x"), H("d2/h", "d1/f1"), W("d3")]]
    ix = build(tmp_path, *layers)
    before = {path: node for path, node in ix.walk()}
    ix.close()
    again = MergedIndex.open(tmp_path / "index.sqlite")
    assert {path: node for path, node in again.walk()} == before
    assert again.entry_count == len(before) - 1
    for path, node in before.items():
        assert again.getattr(node.ino) == node
        assert again.path_of(node.ino) in {p for p, n in before.items() if n.ino == node.ino}


def test_readdir_offsets_are_resumable(tmp_path):
    names = [f"f{i:05d}" for i in range(2500)]
    ix = build(tmp_path, [F(f"big/{n}") for n in reversed(names)] + [F("other")])
    big = ix.resolve("/big").ino
    full = list(ix.readdir(big))
    assert [name for name, _, _ in full] == names == ix.listdir(big)
    assert [off for _, _, off in full] == list(range(1, 2501))
    for cut in (0, 1, 63, 64, 65, 320, 321, 1023, 1024, 1025, 2048, 2499, 2500):
        resumed = [name for name, _, _ in ix.readdir(big, full[cut - 1][2] if cut else 0)]
        assert resumed == names[cut:]
    name, node, _ = full[7]
    assert ix.lookup(big, name) == node
    assert ix.lookup(big, "missing") is None


def test_readdir_paged_like_fuse_is_complete_and_linear(tmp_path):
    import time

    names = [f"n{i:06d}" for i in range(30_000)]
    ix = build(tmp_path, [F(f"huge/{n}") for n in names], per_layer=False)
    huge = ix.resolve("/huge").ino
    got, offset = [], 0
    start = time.process_time()
    while True:
        page = []
        for name, _, offset in ix.readdir(huge, offset):
            page.append(name)
            if len(page) == 37:
                break
        if not page:
            break
        got.extend(page)
    assert got == names
    # ~800 pages: ~0.4 s CPU seeking by name, ~2.2 s skipping rows from the start each time
    assert time.process_time() - start < 1.5


def test_getattr_of_unknown_inode_is_not_found(tmp_path):
    ix = build(tmp_path, [F("a")])
    with pytest.raises(NotFound, match="no inode 999"):
        ix.getattr(999)


def test_non_utf8_names_round_trip(tmp_path):
    raw = b"caf\xe9".decode("utf-8", "surrogateescape")
    ix = build(tmp_path, [F(raw, b"1"), L("link", raw)])
    assert ix.listdir(ROOT_INO) == [raw, "link"]
    assert ix.resolve("/link").data == b"1"


def test_xattrs(tmp_path):
    ix = build(tmp_path, [F("a", xattrs={"user.x": b"\x00\xff", "security.capability": b"cap"}),
                          F("b")])
    a, b = ix.resolve("/a"), ix.resolve("/b")
    assert a.has_xattrs and not b.has_xattrs
    assert ix.xattrs(a.ino) == {"user.x": b"\x00\xff", "security.capability": b"cap"}
    assert ix.xattrs(b.ino) == {}


def test_concurrent_readers_in_threads(tmp_path):
    ix = build(tmp_path, [F(f"d/f{i}", str(i).encode()) for i in range(200)])
    d = ix.resolve("/d").ino
    errors = []

    def work():
        try:
            for i in range(200):
                assert ix.lookup(d, f"f{i}").data == str(i).encode()
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ix.close()


@pytest.mark.parametrize("damage", ["garbage", "truncate", "empty", "missing"])
def test_damaged_index_is_a_cache_error(tmp_path, damage):
    build(tmp_path, [F(f"f{i}", b"x" * 100) for i in range(2000)]).close()
    path = tmp_path / "index.sqlite"
    if damage == "garbage":
        path.write_bytes(b"not a database" * 1000)
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()
    with pytest.raises(CacheError):
        MergedIndex.open(path).listdir(ROOT_INO)


def test_build_replaces_atomically_and_leaves_no_temp_files(tmp_path):
    build(tmp_path, [F("a")])
    ix = build(tmp_path, [F("b")])
    assert ix.listdir(ROOT_INO) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["index.sqlite"]


def test_layer_names_must_match_layers(tmp_path):
    with pytest.raises(UsageError):
        build(tmp_path, [F("a")], layer_names=["0-a", "1-b"])


# --------------------------------------------------------------- per-layer views

def test_per_layer_views(tmp_path):
    ix = build(tmp_path,
               [F("d/a", b"1"), F("d/b", b"2"), F("h1", b"h"), H("h2", "h1"), F("e/old")],
               [W("d/a"), OPQ("e"), F("e/new", b"3"), OPQ("gone"), W("no/such/x")],
               [F("x", b"4"), H("y", "h1")],
               layer_names=["0-aaaa", "1-bbbb", "2-cccc"])
    assert [name for name, _ in ix.layer_roots] == ["0-aaaa", "1-bbbb", "2-cccc"]
    roots = dict(ix.layer_roots)
    assert tree(ix, roots["0-aaaa"]) == {"/d": "dir", "/d/a": b"1", "/d/b": b"2",
                                         "/h1": b"h", "/h2": b"h", "/e": "dir", "/e/old": b""}
    assert tree(ix, roots["1-bbbb"]) == {"/d": "dir", "/d/a": "char 0:0",
                                         "/e": "dir", "/e/new": b"3"}
    assert tree(ix, roots["2-cccc"]) == {"/x": b"4", "/y": b"h"}
    h1 = ix.resolve("/h1", root=roots["0-aaaa"])
    assert h1.ino == ix.resolve("/h2", root=roots["0-aaaa"]).ino and h1.nlink == 2
    e = ix.resolve("/e", root=roots["1-bbbb"])
    assert ix.xattrs(e.ino) == {"trusted.overlay.opaque": b"y"}
    assert ix.xattrs(ix.resolve("/d", root=roots["1-bbbb"]).ino) == {}
    assert ix.path_of(e.ino) == "1-bbbb:/e"
    assert ix.resolve("/y", root=roots["2-cccc"]).nlink == 1
    assert tree(ix) == {"/d": "dir", "/d/b": b"2", "/e": "dir", "/e/new": b"3",
                        "/h1": b"h", "/h2": b"h", "/x": b"4", "/y": b"h"}
    assert ix.resolve("/y").nlink == 3


def test_view_marks_a_dir_whited_out_and_recreated_as_opaque(tmp_path):
    ix = build(tmp_path, [F("d/old")], [W("d"), D("d"), F("d/new")])
    view = dict(ix.layer_roots)["1"]
    assert tree(ix, view) == {"/d": "dir", "/d/new": b""}
    assert ix.xattrs(ix.resolve("/d", root=view).ino) == {"trusted.overlay.opaque": b"y"}
    assert tree(ix) == {"/d": "dir", "/d/new": b""}


def test_view_keeps_an_opaque_marker_met_before_the_directory_entry(tmp_path):
    # found by the overlayfs property test: the later entry for the directory
    # itself used to replace its xattrs, dropping the marker
    ix = build(tmp_path, [F("a"), D("b/a")], [D("a"), OPQ("b"), F("a"), D("b")])
    view = dict(ix.layer_roots)["1"]
    assert ix.xattrs(ix.resolve("/b", root=view).ino) == {"trusted.overlay.opaque": b"y"}
    assert tree(ix) == {"/a": b"", "/b": "dir"}


def test_a_view_places_names_after_the_layer_replaces_a_lower_symlink(tmp_path):
    # a name met through the lower symlink c -> b first, then c made a
    # directory by this layer: later names under c go into that directory,
    # in the view as in the merged tree
    for made in ("c", "c/."):  # a plain name, and one cleaned first
        ix = build(tmp_path, [D("b")], [L("c", "b")], [F("c/c"), D(made), F("c/x")])
        view = dict(ix.layer_roots)["2"]
        assert tree(ix) == {"/b": "dir", "/b/c": b"", "/c": "dir", "/c/x": b""}, made
        assert tree(ix, view) == {"/b": "dir", "/b/c": b"", "/c": "dir", "/c/x": b""}, made


def test_without_per_layer_views(tmp_path):
    ix = build(tmp_path, [F("a")], per_layer=False)
    assert ix.layer_roots == []
    assert tree(ix) == {"/a": b""}


def test_view_turns_a_whiteout_the_layer_writes_below_into_an_opaque_dir(tmp_path):
    ix = build(tmp_path, [F("a/old")], [W("a"), F("a/new")])
    view = dict(ix.layer_roots)["1"]
    assert tree(ix, view) == {"/a": "dir", "/a/new": b""}
    assert ix.xattrs(ix.resolve("/a", root=view).ino) == {"trusted.overlay.opaque": b"y"}
    assert tree(ix) == {"/a": "dir", "/a/new": b""}


def test_markers_below_a_file_are_ignored_in_merged_tree_and_views(tmp_path):
    ix = build(tmp_path, [F("a"), OPQ("a"), W("a/x")])
    assert tree(ix) == {"/a": b""} == tree(ix, dict(ix.layer_roots)["0"])


# --------------------------------------------------------------- scale

def _hundred_k() -> list[Entry]:
    entries = []
    for d in range(2000):
        entries.append(D(f"usr/share/doc/pkg{d}/"))
        entries.extend(F(f"usr/share/doc/pkg{d}/file{i}.txt", b"0123456789abcdef")
                       for i in range(49))
    return entries


@pytest.mark.slow
def test_100k_entries_open_and_walk_in_bounded_memory(tmp_path):
    """Memory, not speed: the speed budget is measured by scripts/bench."""
    import subprocess
    import sys

    path = tmp_path / "index.sqlite"
    MergedIndex.build(path, [_hundred_k()], per_layer=False).close()
    # A fresh process, as the mount daemon would be: open, look up, walk everything.
    probe = (
        "import resource, sys, time\n"
        "from lazyfs.index.merged import MergedIndex\n"
        "t = time.perf_counter()\n"
        "ix = MergedIndex.open(sys.argv[1])\n"
        "opened = time.perf_counter() - t\n"
        "d = ix.resolve('/usr/share/doc/pkg1234').ino\n"
        "t = time.process_time()\n"
        "for _ in range(5000): ix.lookup(d, 'file7.txt'); ix.getattr(d)\n"
        "per_call = (time.process_time() - t) / 10000\n"
        "n = sum(1 for _ in ix.walk())\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
        "rss = int(hwm.split()[1]) / 1024  # this process's peak; ru_maxrss survives exec\n"
        "print(opened, per_call, n, rss)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True,
                         text=True, check=True).stdout.split()
    opened, per_call, count, rss = float(out[0]), float(out[1]), int(out[2]), float(out[3])
    assert count == 100_000 + 4
    assert opened > 0 and per_call > 0
    assert rss < 200

"""The merged index against ``umoci unpack``, the reference for applying layers.

Each stack of layers is written as tar blobs into an OCI layout, unpacked by
umoci as root into a real directory, and built into a ``MergedIndex`` from the
same entries; the two trees must agree attribute by attribute (types, mode
bits, owners, sizes and content, symlink targets, hardlink groups, user
xattrs, device numbers, file mtimes), or both must refuse the stack.

The per-layer views are checked the same way against the kernel: each view
is written out as a directory and the stack mounted with overlayfs, which
must show the merged tree.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from lazyfs.formats.entry import Entry, EntryType
from lazyfs.errors import UnsafeEntry
from lazyfs.index.memory import MemoryIndex
from lazyfs.index.merged import ROOT_INO, MergedIndex
from tests.support.images import gzip_bytes
from tests.support.ocilayout import tar_from_entries, write_oci_layout

T = EntryType
UMOCI = shutil.which("umoci")
pytestmark = [
    pytest.mark.skipif(UMOCI is None, reason="umoci is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="umoci must unpack as root to keep owners"),
]

MTIME = 1_600_000_000 * 10**9


def F(name, data=b"", mode=0o644, **kw):
    kw.setdefault("mtime_ns", MTIME)
    return Entry(name, T.FILE, mode, size=len(data), data=data, **kw)


def D(name, mode=0o755, **kw):
    return Entry(name, T.DIR, mode, mtime_ns=MTIME, **kw)


def L(name, target, **kw):
    return Entry(name, T.SYMLINK, 0o777, linkname=target, mtime_ns=MTIME, **kw)


def H(name, target):
    return Entry(name, T.HARDLINK, 0o644, linkname=target, mtime_ns=MTIME)


def W(path):
    head, _, base = path.rpartition("/")
    return F(f"{head}/.wh.{base}" if head else f".wh.{base}")


def OPQ(dir):
    return F(f"{dir}/.wh..wh..opq")


def umoci_unpack(layers: list[list[Entry]], work: Path) -> Path | None:
    """The rootfs umoci makes of ``layers``, or None if umoci refuses them."""
    layout = write_oci_layout(work / "oci", [tar_from_entries(layer) for layer in layers])
    bundle = work / "bundle"
    done = subprocess.run(["sh", "-c", 'umask 022 && exec "$0" unpack --image "$1" "$2"',
                           UMOCI, layout.ref, str(bundle)], capture_output=True, text=True)
    if done.returncode != 0:
        return None
    return bundle / "rootfs"


def fs_tree(rootfs: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(rootfs):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st_ = os.lstat(path)
            rel = "/" + os.path.relpath(path, rootfs)
            kind = {stat.S_IFREG: T.FILE, stat.S_IFDIR: T.DIR, stat.S_IFLNK: T.SYMLINK,
                    stat.S_IFCHR: T.CHAR, stat.S_IFBLK: T.BLOCK,
                    stat.S_IFIFO: T.FIFO}[stat.S_IFMT(st_.st_mode)]
            content = Path(path).read_bytes() if kind is T.FILE else b""
            link = os.readlink(path) if kind is T.SYMLINK else ""
            xattrs = {} if kind is T.SYMLINK else {
                k: os.getxattr(path, k, follow_symlinks=False)
                for k in os.listxattr(path, follow_symlinks=False) if k.startswith("user.")}
            out[rel] = _record(kind, st_.st_mode, st_.st_uid, st_.st_gid, st_.st_size, content,
                               link, st_.st_rdev, xattrs, st_.st_mtime_ns, st_.st_nlink)
    return out


def index_tree(ix: MergedIndex) -> dict[str, tuple]:
    out = {}
    for path, node in ix.walk():
        if node.ino == ROOT_INO:
            continue
        xattrs = {k: v for k, v in ix.xattrs(node.ino).items() if k.startswith("user.")}
        out[path] = _record(node.type, node.mode, node.uid, node.gid, node.size, node.data,
                            node.linkname, node.rdev, xattrs, node.mtime_ns, node.nlink)
    return out


def _record(kind, mode, uid, gid, size, content, link, rdev, xattrs, mtime_ns, nlink) -> tuple:
    return (kind.value,
            None if kind is T.SYMLINK else stat.S_IMODE(mode),
            uid, gid,
            size if kind in (T.FILE, T.SYMLINK) else None,
            content, link,
            rdev if kind in (T.CHAR, T.BLOCK) else None,
            xattrs,
            None if kind is T.DIR else mtime_ns // 10**9,
            None if kind is T.DIR else nlink)


def fs_links(rootfs: Path) -> set[frozenset[str]]:
    groups: dict[int, set[str]] = {}
    for dirpath, dirnames, filenames in os.walk(rootfs):
        # a symlink to a directory is listed with the directories
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        for name in filenames + links:
            path = os.path.join(dirpath, name)
            groups.setdefault(os.lstat(path).st_ino, set()).add("/" + os.path.relpath(path, rootfs))
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def index_links(ix: MergedIndex) -> set[frozenset[str]]:
    groups: dict[int, set[str]] = {}
    for path, node in ix.walk():
        if node.type is not T.DIR:
            groups.setdefault(node.ino, set()).add(path)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def assert_same_as_umoci(layers: list[list[Entry]], work: Path) -> str:
    """Compare, and say how the stack ended: "refused" by both, or "compared"."""
    work.mkdir(parents=True)
    rootfs = umoci_unpack(layers, work)
    try:
        ix = MergedIndex.build(work / "index.sqlite", layers)
    except UnsafeEntry as e:
        assert rootfs is None, f"lazyfs refused a stack umoci unpacks: {e}"
        return "refused"
    assert rootfs is not None, "umoci refused a stack lazyfs accepts"
    with ix:
        assert index_tree(ix) == fs_tree(rootfs)
        assert index_links(ix) == fs_links(rootfs)
    # what a first mount answers from, before the index file is written
    memory = MemoryIndex.build(work / "memory.sqlite", layers)
    assert index_tree(memory) == fs_tree(rootfs)
    assert index_links(memory) == fs_links(rootfs)
    return "compared"


AWKWARD = {
    "whiteouts, opaque both orders, replacements": [
        [D("d"), F("d/a", b"a", uid=1000), D("d/sub", 0o700), F("d/sub/x", b"x"),
         D("e"), F("e/1", b"1"), F("e/2", b"2"), F("f", b"f", xattrs={"user.k": b"v"})],
        [OPQ("d"), F("d/b", b"b"), F("e/3", b"3"), OPQ("e"), W("f"), F("g", b"g")],
        [W("d/b"), D("f", 0o711), F("f/inner", b"i"), F("e", b"now a file")],
    ],
    "dir replaced by file and back": [
        [D("p"), F("p/q", b"q"), F("r", b"r")],
        [F("p", b"p is a file"), D("r", 0o750), F("r/s", b"s")],
        [D("p", 0o700), F("p/new", b"n"), F("r", b"r again")],
    ],
    "hardlinks with nlink and a whited-out name": [
        [F("bin/busybox", b"bb", mode=0o755), H("bin/sh", "bin/busybox"),
         H("bin/ls", "./bin/busybox"), F("lib/a", b"a"), H("lib/b", "lib/a")],
        [W("bin/busybox"), F("lib/a", b"replaced")],
        [H("bin/cat", "bin/sh"), W("bin/ls")],
    ],
    "symlinked parents and whiteouts through them": [
        [D("usr"), D("usr/lib"), F("usr/lib/old", b"o"), L("lib", "usr/lib"),
         L("abs", "/usr/lib"), L("up", "../../../usr")],
        [F("lib/new", b"n"), F("abs/x", b"x"), W("lib/old"), F("up/lib/y", b"y")],
        [L("dangling", "/made/by/link"), F("dangling/z", b"z"), OPQ("abs")],
    ],
    "whiteout and re-create in one layer, both orders": [
        [D("a", 0o700), F("a/x", b"x"), D("b", 0o700), F("b/y", b"y")],
        [W("a"), D("a", 0o750), F("a/new", b"n"), D("b", 0o751), F("b/new", b"n"), W("b")],
    ],
    "devices, owners, modes, xattrs, root entry": [
        [D("./", 0o750, uid=0),
         Entry("dev/null", T.CHAR, 0o666, devmajor=1, devminor=3, mtime_ns=MTIME),
         Entry("dev/sda1", T.BLOCK, 0o660, gid=6, devmajor=8, devminor=1, mtime_ns=MTIME),
         Entry("run/fifo", T.FIFO, 0o600, uid=33, mtime_ns=MTIME),
         F("usr/bin/sudo", b"s", mode=0o4755), D("tmp", 0o1777),
         F("etc/x", b"x", uid=1000, gid=1000, xattrs={"user.a": b"1", "user.b": b"two"})],
        [F("etc/x", b"y", mode=0o600, xattrs={"user.c": b"3"}),
         Entry("dev/null", T.CHAR, 0o600, devmajor=1, devminor=5, mtime_ns=MTIME)],
    ],
    "hardlink to itself is refused": [[F("a"), H("a", "a")]],
    "entry below a file is refused": [[F("f")], [F("f/x")]],
    "hardlink to a missing file is refused": [[H("b", "nope")]],
}


@pytest.mark.parametrize("layers", AWKWARD.values(), ids=AWKWARD.keys())
def test_awkward_stacks_match_umoci(tmp_path, layers):
    assert_same_as_umoci(layers, tmp_path / "case")


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_layout_holds_several_tags_and_skopeo_reads_it(tmp_path):
    gz = gzip_bytes(tar_from_entries([F("a", b"x")]))
    one = write_oci_layout(tmp_path / "oci", [gz, tar_from_entries([D("b")])], tag="one")
    two = write_oci_layout(tmp_path / "oci", [tar_from_entries([F("z", b"z")])], tag="two")
    again = write_oci_layout(tmp_path / "oci", [gz], tag="one")
    assert again.manifest_digest != one.manifest_digest
    for layout, count in ((again, 1), (two, 1)):
        out = subprocess.run(["skopeo", "inspect", f"oci:{layout.ref}"], capture_output=True,
                             text=True, check=True).stdout
        assert json.loads(out)["Layers"] == layout.layer_digests
        assert len(layout.layer_digests) == count
    # copy re-reads and verifies every blob against its digest
    subprocess.run(["skopeo", "copy", "-q", f"oci:{two.ref}", f"dir:{tmp_path / 'copy'}"],
                   check=True, capture_output=True)
    assert (tmp_path / "copy" / two.layer_digests[0].split(":")[1]).exists()


def test_root_entry_attributes_match_umoci(tmp_path):
    layers = [[D("./", 0o750, uid=5, gid=6), F("a")]]
    rootfs = umoci_unpack(layers, tmp_path)
    root = MergedIndex.build(tmp_path / "index.sqlite", layers).getattr(ROOT_INO)
    st_ = os.lstat(rootfs)
    assert (root.mode, root.uid, root.gid) == (stat.S_IMODE(st_.st_mode), st_.st_uid, st_.st_gid)


# ----------------------------------------------------------------- generated stacks

NAMES = ("a", "b", "c")
paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
files = st.builds(F, paths, st.sampled_from([b"", b"x", b"hello"]),
                 st.sampled_from([0o644, 0o600, 0o755, 0o4755]), uid=st.sampled_from([0, 1000]),
                 xattrs=st.sampled_from([{}, {"user.t": b"1"}]))
dirs = st.builds(D, paths, st.sampled_from([0o755, 0o700, 0o1777]), gid=st.sampled_from([0, 7]))
symlinks = st.builds(L, paths, st.one_of(paths, paths.map("/{}".format),
                                         paths.map("../{}".format), st.just("/")))
hardlinks = st.builds(H, paths, st.one_of(st.sampled_from(NAMES), paths))
devices = st.builds(
    lambda p: Entry(p, T.CHAR, 0o600, devmajor=1, devminor=7, mtime_ns=MTIME), paths)
markers = st.one_of(paths.map(W), paths.map(OPQ))
entries = st.one_of(files, dirs, symlinks, hardlinks, markers, devices)
stacks = st.lists(st.lists(entries, min_size=1, max_size=6), min_size=1, max_size=3)


@pytest.mark.slow
@settings(max_examples=int(os.environ.get("LAZYFS_UMOCI_EXAMPLES", "60")), deadline=None,
          database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(stacks)
@example([[L("b", "/"), H("a", "b")]])  # a hard link to a symlink to a directory
@example([[F("a"), L("a", "/"), F("b")], [F("a/a"), H("b", "a")]])  # below a lower symlink
def test_generated_stacks_match_umoci(tmp_path_factory, layers):
    event(assert_same_as_umoci(layers, tmp_path_factory.mktemp("stack") / "case"))


# ----------------------------------------------------------------- per-layer views

def materialize(ix: MergedIndex, root_ino: int, dest: Path) -> None:
    """Write one per-layer view to ``dest`` as a real directory tree."""
    made: dict[int, str] = {}
    dirs = []
    for path, node in ix.walk(root_ino):
        target = str(dest) + path.split(":", 1)[1]
        if node.ino in made:
            os.link(made[node.ino], target)
            continue
        made[node.ino] = target
        if node.type is T.DIR:
            os.makedirs(target, exist_ok=True)
            dirs.append((target, node))
        else:
            if node.type is T.FILE:
                Path(target).write_bytes(node.data)
            elif node.type is T.SYMLINK:
                os.symlink(node.linkname, target)
            else:
                kind = {T.CHAR: stat.S_IFCHR, T.BLOCK: stat.S_IFBLK, T.FIFO: stat.S_IFIFO}
                os.mknod(target, kind[node.type] | 0o600, node.rdev)
            _restore(target, node, ix)
    for target, node in reversed(dirs):
        _restore(target, node, ix)


def _restore(target: str, node, ix: MergedIndex) -> None:
    os.chown(target, node.uid, node.gid, follow_symlinks=False)
    if node.type is not T.SYMLINK:
        os.chmod(target, node.mode)
        for key, value in ix.xattrs(node.ino).items():
            os.setxattr(target, key, value)
    os.utime(target, ns=(node.mtime_ns, node.mtime_ns), follow_symlinks=False)


def assert_views_overlay_to_merged(layers: list[list[Entry]]) -> None:
    # A private directory rather than pytest's: a concurrent pytest session
    # pruning old temp dirs must never walk into a live mount.
    work = Path(tempfile.mkdtemp(prefix="lazyfs-views-"))
    try:
        _views_overlay_to_merged(layers, work)
    finally:
        shutil.rmtree(work)


def _views_overlay_to_merged(layers: list[list[Entry]], work: Path) -> None:
    try:
        ix = MergedIndex.build(work / "index.sqlite", layers)
    except UnsafeEntry:
        return
    with ix:
        lowers = []
        for name, ino in ix.layer_roots:
            materialize(ix, ino, work / name)
            lowers.insert(0, str(work / name))
        (work / "empty").mkdir()
        lowers.append(str(work / "empty"))
        mnt = work / "mnt"
        mnt.mkdir()
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", "lowerdir=" + ":".join(lowers),
                        str(mnt)], check=True, capture_output=True)
        try:
            seen = {p: r[:-1] for p, r in fs_tree(mnt).items()}
        finally:
            if subprocess.run(["umount", str(mnt)]).returncode != 0:
                subprocess.run(["umount", "--lazy", str(mnt)], check=True)
        assert seen == {p: r[:-1] for p, r in index_tree(ix).items()}


@pytest.fixture(scope="session")
def overlayfs() -> None:
    """Skip unless this process can really mount an overlay (root alone is not
    enough inside some containers)."""
    if "overlay" not in Path("/proc/filesystems").read_text():
        pytest.skip("the kernel has no overlayfs")
    base = Path(tempfile.mkdtemp(prefix="lazyfs-overlay-probe-"))
    try:
        for name in ("l1", "l2", "mnt"):
            (base / name).mkdir()
        done = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                               f"lowerdir={base / 'l1'}:{base / 'l2'}", str(base / "mnt")],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount overlayfs here: {done.stderr.strip()}")
        subprocess.run(["umount", str(base / "mnt")], check=True)
    finally:
        shutil.rmtree(base)
VIEW_CASES = {k: v for k, v in AWKWARD.items() if "symlinked parents" not in k}


@pytest.mark.parametrize("layers", VIEW_CASES.values(), ids=VIEW_CASES.keys())
def test_views_stacked_by_overlayfs_show_the_merged_tree(overlayfs, layers):
    assert_views_overlay_to_merged(layers)


def test_view_implied_dirs_keep_lower_attributes(tmp_path):
    ix = MergedIndex.build(tmp_path / "index.sqlite",
                           [[D("etc", 0o700, uid=5)], [F("etc/new", b"n")]])
    view = dict(ix.layer_roots)["1"]
    etc = ix.resolve("/etc", root=view)
    assert (etc.mode, etc.uid) == (0o700, 5) == (ix.resolve("/etc").mode, ix.resolve("/etc").uid)


# Symlinks only as leaves: a view cannot express entries written through a
# symlinked directory of a lower layer.
leaf_symlinks = st.builds(L, paths.map(lambda p: p + "l"), paths)
view_entries = st.one_of(files, dirs, leaf_symlinks, hardlinks, markers, devices)


@pytest.mark.slow
@settings(max_examples=int(os.environ.get("LAZYFS_UMOCI_EXAMPLES", "60")), deadline=None,
          database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.lists(view_entries, min_size=1, max_size=6), min_size=1, max_size=3))
# a layer whiting out a directory it also made: what its markers put there goes
@example(layers=[[F("a/a")], [D("a"), W("a/a"), L("al", "a"), W("a")]])
@example(layers=[[D("a"), F("a/a/a"), D("a")], [D("a"), OPQ("a/a"), L("al", "a"), W("a")]])
def test_generated_views_stacked_by_overlayfs_show_the_merged_tree(overlayfs, layers):
    assert_views_overlay_to_merged(layers)

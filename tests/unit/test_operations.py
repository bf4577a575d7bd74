"""The filesystem over a tree still being indexed, without a mount.

The operations only ask ``Tree``; what they add is the kernel's caching:
nothing provisional may be cached, everything final may be for long.
"""

from __future__ import annotations

import errno

import pyfuse3
import pytest

from lazyfs.errors import LayerFormatError
from lazyfs.index.merged import ROOT_INO, MergedIndex
from lazyfs.index.progressive import PROVISIONAL, ProgressiveIndex
from lazyfs.index.tree import Tree
from lazyfs.fs import operations
from lazyfs.fs.operations import TIMEOUT, LazyOperations
from lazyfs.formats.entry import Entry, EntryType
from tests.support.listings import listed
from tests.support.entries import D, F, H, L

LAYERS = [[D("etc"), F("etc/os-release", b"debian")], [D("etc"), F("etc/motd", b"hello\n")]]


async def no_reads(node, offset, size):
    raise AssertionError("no content is read here")


async def test_early_answers_are_not_cached_and_final_ones_are(tmp_path):
    p = ProgressiveIndex(2)
    p.add(1, LAYERS[1])
    p.complete(1)
    ops = LazyOperations(Tree(progress=p), no_reads)
    etc = await ops.lookup(ROOT_INO, b"etc")
    motd = await ops.lookup(etc.st_ino, b"motd")
    assert motd.st_ino >= PROVISIONAL and motd.st_size == 6
    assert motd.entry_timeout == motd.attr_timeout == 0
    assert (await ops.statfs(None)).f_files == 0, "sizes are unknown while indexing"
    with MergedIndex.build(tmp_path / "ix", LAYERS, per_layer=False) as final:
        p.add(0, LAYERS[0])
        p.complete(0)
        p.set_final(final)
        again = await ops.getattr(motd.st_ino)
        assert again.st_ino == final.resolve("/etc/motd").ino
        assert again.entry_timeout == again.attr_timeout == TIMEOUT
        lower = await ops.lookup(etc.st_ino, b"os-release")
        assert lower.st_size == 6 and lower.entry_timeout == TIMEOUT
        assert (await ops.lookup(etc.st_ino, b"..")).st_ino == ROOT_INO
        assert (await ops.statfs(None)).f_files == final.entry_count


async def test_a_failed_index_answers_eio_but_the_root_stays(tmp_path):
    p = ProgressiveIndex(1)
    ops = LazyOperations(Tree(progress=p), no_reads)
    p.fail(LayerFormatError("layer 0: broken gzip stream"))
    assert (await ops.getattr(ROOT_INO)).st_ino == ROOT_INO
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.lookup(ROOT_INO, b"etc")
    assert e.value.errno == errno.EIO
    assert ops.counters.errors == 1


class _CountingTree(Tree):
    """The real tree, counting the questions that reach it."""

    asked = 0

    async def getattr(self, ino):
        self.asked += 1
        return await super().getattr(ino)

    async def xattrs(self, ino):
        self.asked += 1
        return await super().xattrs(ino)

    async def readdir(self, ino, start=0):
        self.asked += 1
        return await super().readdir(ino, start)

    async def stat_listing(self, ino, limit, offset=0):
        self.asked += 1
        return await super().stat_listing(ino, limit, offset)


async def test_xattrs_of_a_node_without_any_and_opendir_are_answered_without_the_tree(tmp_path):
    layer = [D("etc"), F("etc/os-release", b"debian"),
             F("bin/ping", b"\x7fELF", xattrs={"security.capability": b"\x01\x02"})]
    with MergedIndex.build(tmp_path / "ix", [layer], per_layer=False) as index:
        tree = _CountingTree(index)
        ops = LazyOperations(tree, no_reads)
        plain = index.resolve("/etc/os-release").ino
        for _ in range(3):
            with pytest.raises(pyfuse3.FUSEError) as e:
                await ops.getxattr(plain, b"security.selinux", None)
            assert e.value.errno == pyfuse3.ENOATTR
            assert await ops.listxattr(plain, None) == []
        fh = await ops.opendir(index.resolve("/etc").ino, None)
        await ops.releasedir(fh)
        assert tree.asked == 0, "neither xattrs of a plain file nor opendir ask the tree"
        ping = index.resolve("/bin/ping").ino
        assert await ops.getxattr(ping, b"security.capability", None) == b"\x01\x02"
        assert await ops.listxattr(ping, None) == [b"security.capability"]
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.getxattr(ping, b"user.other", None)
        assert e.value.errno == pyfuse3.ENOATTR
        assert tree.asked > 0


async def test_labels_an_image_holds_nowhere_are_unsupported_on_a_mount_of_its_own(tmp_path):
    plain_layer = [D("etc"), F("etc/os-release", b"debian"),
                   F("etc/motd", b"hi", xattrs={"user.note": b"1"})]
    labelled_layer = [*plain_layer, F("bin/sh", b"\x7fELF", xattrs={"security.selinux": b"bin_t"})]
    for layer, labelled in ((plain_layer, False), (labelled_layer, True)):
        with MergedIndex.build(tmp_path / f"ix{labelled}", [layer], per_layer=False) as index:
            own = LazyOperations(index, no_reads, unlabelled=True)
            shared = LazyOperations(index, no_reads)
            release = index.resolve("/etc/os-release").ino
            for name in (b"security.selinux", b"system.posix_acl_access",
                         b"system.posix_acl_default", b"user.note"):
                with pytest.raises(pyfuse3.FUSEError) as e:
                    await shared.getxattr(release, name, None)
                assert e.value.errno == pyfuse3.ENOATTR
                unsupported = name.startswith(b"system.") or (name == b"security.selinux"
                                                              and not labelled)
                with pytest.raises(pyfuse3.FUSEError) as e:
                    await own.getxattr(release, name, None)
                assert e.value.errno == (errno.EOPNOTSUPP if unsupported else pyfuse3.ENOATTR)
            assert await own.getxattr(index.resolve("/etc/motd").ino, b"user.note", None) == b"1"
            assert await own.listxattr(release, None) == []
            if labelled:
                sh = index.resolve("/bin/sh").ino
                assert await own.getxattr(sh, b"security.selinux", None) == b"bin_t"


class _Listing:
    """``readdir_reply`` standing in for the kernel's buffer: takes ``room``
    entries per call."""

    def __init__(self, room: int):
        self.room, self.got = room, []

    def __call__(self, token, name, attrs, next_id):
        if len(token) >= self.room:
            return False
        token.append(name)
        self.got.append((name, attrs.st_ino, next_id))
        return True


async def _walk(ops, ino: int, listing: _Listing) -> None:
    fh = await ops.opendir(ino, None)
    offset = 0
    while True:
        page: list = []
        await ops.readdir(fh, offset, page)
        if not page:
            break
        offset = listing.got[-1][2]
    await ops.releasedir(fh)


async def test_a_directory_is_listed_from_the_tree_once_then_from_memory(tmp_path, monkeypatch):
    names = [f"f{i:03}" for i in range(150)]
    layer = [D("etc"), *(F(f"etc/{n}", n.encode()) for n in names)]
    with MergedIndex.build(tmp_path / "ix", [layer], per_layer=False) as index:
        etc = index.resolve("/etc").ino
        tree = _CountingTree(index)
        ops = LazyOperations(tree, no_reads)
        pages = []
        for _ in range(3):
            listing = _Listing(room=7)
            monkeypatch.setattr(pyfuse3, "readdir_reply", listing)
            await _walk(ops, etc, listing)
            pages.append(listing.got)
            if len(pages) == 1:
                asked, tree.asked = tree.asked, 0
        assert [n.decode() for n, _, _ in pages[0]] == names
        assert [off for _, _, off in pages[0]] == list(range(1, 151))
        assert pages[0] == pages[1] == pages[2]
        assert asked > 0 and tree.asked == 0, "the second and third walks asked the tree nothing"


@pytest.mark.parametrize("keep", [4096, 10], ids=["kept", "too big to keep"])
@pytest.mark.parametrize("extra", [None, {".lowerdir": b"x", ".z": b""}], ids=["", "extra files"])
async def test_pages_of_a_listing_resume_where_the_kernel_asks(tmp_path, monkeypatch, keep, extra):
    """Whether a listing is kept or paged from the index, each offset the
    kernel resumes at (in order, or after a seek) gives the same entries."""
    monkeypatch.setattr(operations, "LISTING_MAX", keep)
    monkeypatch.setattr(operations, "PAGE", 16)
    names = [f"f{i:03}" for i in range(150)]
    layer = [D("etc"), *(F(n, n.encode()) for n in names)]
    with MergedIndex.build(tmp_path / "ix", [layer], per_layer=False) as index:
        ops = LazyOperations(Tree(index), no_reads, extra_files=extra)
        expected = sorted(extra or ()) + ["etc"] + names
        for room in (7, 16, 1000):
            listing = _Listing(room=room)
            monkeypatch.setattr(pyfuse3, "readdir_reply", listing)
            await _walk(ops, ROOT_INO, listing)
            assert [n.decode() for n, _, _ in listing.got] == expected
            assert [off for _, _, off in listing.got] == list(range(1, len(expected) + 1))
        for start in (151, 40, 3, 17, 0, len(expected), len(expected) + 5):
            listing = _Listing(room=5)
            monkeypatch.setattr(pyfuse3, "readdir_reply", listing)
            fh = await ops.opendir(ROOT_INO, None)
            await ops.readdir(fh, start, [])
            await ops.releasedir(fh)
            assert [n.decode() for n, _, _ in listing.got] == expected[start:start + 5]



_FIELDS = ("st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
           "st_blocks", "st_blksize", "st_atime_ns", "st_mtime_ns", "st_ctime_ns",
           "entry_timeout", "attr_timeout", "generation")


def _fields(attrs: pyfuse3.EntryAttributes) -> tuple:
    return tuple(getattr(attrs, f) for f in _FIELDS)


@pytest.mark.parametrize("keep", [4096, 1], ids=["kept", "paged"])
@pytest.mark.parametrize("extra", [None, {".lowerdir": b"x"}], ids=["plain", "extra files"])
async def test_listed_attributes_are_getattr_s(tmp_path, monkeypatch, extra, keep):
    """A listing builds its entries' attributes from rows, not nodes: every
    field must still be what ``getattr`` and ``lookup`` answer."""
    layer = [D("d", uid=5, gid=6, mtime_ns=1_700_000_000_123_456_789),
             F("d/empty", b""), F("d/odd", b"x" * 513, mode=0o4755, uid=1000, gid=100),
             F("d/caf\udce9", b"latin-1 name"), H("d/link", "d/odd"), L("d/sym", "odd"),
             Entry("d/tty", EntryType.CHAR, 0o620, devmajor=4, devminor=1),
             Entry("d/sda", EntryType.BLOCK, 0o660, devmajor=8, devminor=0),
             Entry("d/pipe", EntryType.FIFO, 0o600), D("d/sub", mode=0o1777), F("top")]
    monkeypatch.setattr(operations, "LISTING_MAX", keep)
    with MergedIndex.build(tmp_path / "ix", [layer], per_layer=False) as index:
        ops = LazyOperations(Tree(index), no_reads, extra_files=extra)
        for ino in (ROOT_INO, index.resolve("/d").ino):
            attrs = await listed(ops, ino, monkeypatch)
            assert len(attrs) == len(index.listdir(ino)) + (ino == ROOT_INO and bool(extra))
            for name, a in attrs:
                assert _fields(a) == _fields(await ops.getattr(a.st_ino, None)), name
                assert _fields(a) == _fields(await ops.lookup(ino, name, None)), name


async def test_a_layers_view_lists_the_layers_at_the_root(tmp_path, monkeypatch):
    layers = [[D("etc"), F("etc/a", b"1")], [F("etc/b", b"22"), F("top")]]
    with MergedIndex.build(tmp_path / "ix", layers, layer_names=["base", "app"]) as index:
        ops = LazyOperations(Tree(index), no_reads, layers=True,
                             extra_files={".lowerdir": b"app:base"})
        attrs = await listed(ops, ROOT_INO, monkeypatch)
        assert [n for n, _ in attrs] == [b"base", b"app", b".lowerdir"]
        for name, a in attrs:
            assert _fields(a) == _fields(await ops.lookup(ROOT_INO, name, None)), name
        assert (await ops.getattr(ROOT_INO, None)).st_nlink == 4

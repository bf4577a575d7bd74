"""The pieces of a handover that need no mount: the synthetic FUSE_INIT as
libfuse 3.14 reads it, handles that name their inode, the slots a successor
restores, and what counts as a user of the mount."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import trio

from lazyfs.fs import operations
from lazyfs.index.merged import MergedIndex
from lazyfs.index.tree import Tree

from lazyfs.reference import parse_reference
from lazyfs.serve.handles import LOCAL_BITS, Handles, ImageOps, inode_of, slot_of
from lazyfs.serve.handover import overlay_users
from lazyfs.serve.holder import FUSE_DEV_IOC_CLONE, mounted
from lazyfs.serve.images import ImageSet, Slot
from lazyfs.serve.relay import FUSE_INIT, INIT_UNIQUE, init_request
from lazyfs.store.blobs import Store
from tests.support.entries import D, F
from tests.support.listings import listed


def test_the_synthetic_init_is_a_7_38_init_request():
    msg = init_request()
    # fuse_in_header is 40 bytes and fuse_init_in 64 from protocol 7.36 on
    assert len(msg) == 104
    length, opcode, unique, nodeid = struct.unpack_from("=IIQQ", msg)
    assert (length, opcode, unique, nodeid) == (104, FUSE_INIT, INIT_UNIQUE, 0)
    major, minor, readahead, flags, flags2 = struct.unpack_from("=5I", msg, 40)
    assert (major, minor, flags2) == (7, 38, 0)
    assert flags & (1 << 13) and flags & (1 << 4)  # READDIRPLUS (pyfuse3 needs it), EXPORT
    assert flags & (1 << 22)  # MAX_PAGES: libfuse keeps its 1 MiB buffers
    assert not flags & (0b111 << 7)  # no splice offered
    assert msg[60:] == bytes(44)


def test_the_clone_ioctl_is_ior_229_0_uint32():
    assert FUSE_DEV_IOC_CLONE == (2 << 30) | (4 << 16) | (229 << 8) | 0


async def test_an_image_s_listings_and_lookups_give_its_inodes_in_its_slot(tmp_path, monkeypatch):
    layer = [D("etc"), F("etc/a", b"1"), F("etc/b", b"22"), F("top")]
    with MergedIndex.build(tmp_path / "ix", [layer], per_layer=False) as index:
        image = SimpleNamespace(tree=Tree(index), read=None, stats=None)
        base = 7 << LOCAL_BITS
        ops = ImageOps(image, base, Handles())
        etc = index.resolve("/etc").ino
        for keep in (4096, 1):
            monkeypatch.setattr(operations, "LISTING_MAX", keep)
            got = await listed(ops, etc, monkeypatch)
            assert [(n, a.st_ino) for n, a in got] == \
                [(n, (await ops.lookup(etc, n, None)).st_ino) for n in (b"a", b"b")]
            assert all(a.st_ino == base | index.resolve("/etc/" + n.decode()).ino for n, a in got)


def test_a_handle_names_its_inode_and_two_opens_differ():
    made = Handles()
    ino = 7 << 32 | 1234
    a, b = made.make(ino), made.make(ino)
    assert a != b and inode_of(a) == inode_of(b) == ino and slot_of(a) == 7
    assert 0 < a < 1 << 63


MOUNTINFO = (
    "30 1 0:27 / /srv/store rw - fuse.lazyfs lazyfs-store ro\n"
    "41 1 0:40 / /run/c1/rootfs rw,relatime - overlay overlay "
    "rw,lowerdir=/srv/store/.layers/sha256-ab:/srv/store/.layers/sha256-cd,"
    "upperdir=/var/s/1/fs,workdir=/var/s/1/work\n"
    "42 1 0:41 / /run/c2/rootfs rw - overlay overlay rw,lowerdir=/srv/storex/a,upperdir=/u,"
    "workdir=/w\n")


def test_overlay_mounts_on_the_root_are_its_users():
    assert overlay_users("/srv/store", MOUNTINFO) == ["/run/c1/rootfs"]
    assert overlay_users("/srv/other", MOUNTINFO) == []


def test_the_holder_sees_its_mount_go():
    assert mounted(MOUNTINFO.encode(), "0:27")
    assert not mounted(MOUNTINFO.encode(), "0:28")


def test_restored_slots_keep_their_numbers_and_new_ones_follow(tmp_path):
    async def main():
        async with trio.open_nursery() as nursery:
            first = ImageSet(nursery, Store(tmp_path))
            pinned = parse_reference("registry.test/a@sha256:" + "1" * 64)
            for number, views in ((1, False), (3, True)):
                slot = Slot(number, pinned, views, names={"registry.test/a:v1"},
                            layers=["sha256:" + "2" * 64])
                first._slots[number] = slot
            doc = first.export()
            second = ImageSet(nursery, Store(tmp_path))
            second.restore(doc)
            assert [(s.number, s.views, s.layers) for s in second.slots()] == \
                [(1, False, ["sha256:" + "2" * 64]), (3, True, ["sha256:" + "2" * 64])]
            assert second.names() == ["registry.test/a:v1"]
            assert second.fresh("registry.test/a:v1") == 0  # a tag is asked about again
            assert second._new_slot(parse_reference("registry.test/b@sha256:" + "3" * 64)).number == 4
            nursery.cancel_scope.cancel()
    trio.run(main)

"""The FUSE operations over an image from the memory registry, called directly
as the kernel would call them (no mount): names, attributes, listings,
contents, links and xattrs come from the image; writes are refused."""

from __future__ import annotations

import errno
import os
import stat

import pyfuse3
import pytest

from lazyfs.fs.operations import image_operations
from lazyfs.image import OpenOptions
from lazyfs.store.blobs import Store
from lazyfs.testing import WHITEOUT, Dir, File, MemoryRegistry, build_layer
from tests.support.listings import listed

CTX = pyfuse3.RequestContext()
ROOT = pyfuse3.ROOT_INODE
TOOL = bytes(range(256)) * 600
LOWER = {
    "etc/": Dir(mode=0o755),
    "etc/hostname": "box\n",
    "etc/shadow": "secret\n",
    "usr/bin/tool": File(TOOL, mode=0o755),
    "link": ("symlink", "etc/hostname"),
    "noted": File("with xattrs\n", xattrs={"user.a": b"1", "user.b": b"two"}),
}
UPPER = {"etc/shadow": WHITEOUT, "etc/motd": "hello\n"}


@pytest.fixture
def registry() -> MemoryRegistry:
    return MemoryRegistry()


@pytest.fixture
async def ops(tmp_path, registry):
    layers = [build_layer("estargz", LOWER), build_layer("gzip", UPPER)]
    pushed = registry.push_image("fs/app", "v1", layers)
    factory = image_operations(pushed.ref, tmp_path / "mnt",
                               open_options=OpenOptions(registry=registry.options()),
                               store=Store(tmp_path / "store"))
    async with factory() as operations:
        assert operations.digest == pushed.digest
        yield operations


async def lookup(ops, path: str) -> pyfuse3.EntryAttributes:
    ino = ROOT
    attrs = await ops.getattr(ROOT, CTX)
    for name in path.strip("/").split("/"):
        attrs = await ops.lookup(ino, name.encode(), CTX)
        ino = attrs.st_ino
    return attrs


async def listing(ops, monkeypatch, ino: int) -> dict[str, int]:
    """Names and modes ``readdir`` hands the kernel."""
    return {os.fsdecode(name): attrs.st_mode for name, attrs in await listed(ops, ino, monkeypatch)}


async def read_all(ops, ino: int, size: int = 1 << 20) -> bytes:
    info = await ops.open(ino, os.O_RDONLY, CTX)
    try:
        return await ops.read(info.fh, 0, size)
    finally:
        await ops.release(info.fh)


async def test_lookup_and_getattr(ops):
    tool = await lookup(ops, "usr/bin/tool")
    assert stat.S_ISREG(tool.st_mode) and stat.S_IMODE(tool.st_mode) == 0o755
    assert tool.st_size == len(TOOL)
    assert (await ops.getattr(tool.st_ino, CTX)).st_size == len(TOOL)
    etc = await lookup(ops, "etc")
    assert stat.S_ISDIR(etc.st_mode)
    assert (await ops.lookup(etc.st_ino, b"..", CTX)).st_ino == ROOT
    assert (await ops.lookup(etc.st_ino, b".", CTX)).st_ino == etc.st_ino


async def test_missing_names_are_enoent(ops):
    etc = await lookup(ops, "etc")
    assert (await ops.lookup(etc.st_ino, b"nothing", CTX)).st_ino == 0
    assert (await ops.lookup(etc.st_ino, b"shadow", CTX)).st_ino == 0
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.getattr(10_000, CTX)
    assert e.value.errno == errno.ENOENT


async def test_readdir_lists_the_merged_tree(ops, monkeypatch):
    root = await listing(ops, monkeypatch, ROOT)
    assert sorted(root) == ["etc", "link", "noted", "usr"]
    assert stat.S_ISLNK(root["link"]) and stat.S_ISDIR(root["etc"])
    etc = await listing(ops, monkeypatch, (await lookup(ops, "etc")).st_ino)
    assert sorted(etc) == ["hostname", "motd"]


async def test_read_gives_the_bytes_built(ops):
    tool = await lookup(ops, "usr/bin/tool")
    assert await read_all(ops, tool.st_ino) == TOOL
    info = await ops.open(tool.st_ino, os.O_RDONLY, CTX)
    assert await ops.read(info.fh, 1000, 300) == TOOL[1000:1300]
    assert await ops.read(info.fh, len(TOOL) - 5, 4096) == TOOL[-5:]
    assert await ops.read(info.fh, len(TOOL) + 10, 10) == b""
    await ops.release(info.fh)
    assert await read_all(ops, (await lookup(ops, "etc/motd")).st_ino) == b"hello\n"
    assert ops.stats()["fuse"]["bytes_read"] == len(TOOL) + 300 + 5 + 6


async def test_a_read_that_cannot_be_verified_is_eio(ops, registry):
    tool = await lookup(ops, "usr/bin/tool")
    info = await ops.open(tool.st_ino, os.O_RDONLY, CTX)
    registry.fault("flip", kind=("range", "multirange"), times=None)
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.read(info.fh, 0, 4096)
    assert e.value.errno == errno.EIO
    assert ops.stats()["fuse"]["errors"] == 1
    registry.clear_faults()
    assert await ops.read(info.fh, 0, 4096) == TOOL[:4096]


async def test_readlink_and_xattrs(ops):
    link = await lookup(ops, "link")
    assert await ops.readlink(link.st_ino, CTX) == b"etc/hostname"
    noted = await lookup(ops, "noted")
    assert await ops.listxattr(noted.st_ino, CTX) == [b"user.a", b"user.b"]
    assert await ops.getxattr(noted.st_ino, b"user.b", CTX) == b"two"
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.getxattr(noted.st_ino, b"user.none", CTX)
    assert e.value.errno == pyfuse3.ENOATTR
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.readlink(noted.st_ino, CTX)
    assert e.value.errno == errno.EINVAL


@pytest.mark.parametrize("flags", [os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC])
async def test_write_opens_are_refused(ops, flags):
    hostname = await lookup(ops, "etc/hostname")
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.open(hostname.st_ino, flags, CTX)
    assert e.value.errno == errno.EROFS
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.access(hostname.st_ino, os.W_OK, CTX)
    assert e.value.errno == errno.EROFS
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.mkdir(ROOT, b"new", 0o755, CTX)
    assert e.value.errno == errno.EROFS
    assert await ops.access(hostname.st_ino, os.R_OK, CTX)


async def test_directories_are_not_opened_as_files(ops):
    etc = await lookup(ops, "etc")
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.open(etc.st_ino, os.O_RDONLY, CTX)
    assert e.value.errno == errno.EISDIR
    # opendir of a file never reaches the filesystem: the kernel refuses it
    # (ENOTDIR) from the attributes it has, so opendir does not ask the tree.


async def test_statfs_counts_the_image(ops):
    s = await ops.statfs(CTX)
    assert s.f_files >= 8
    assert s.f_blocks * s.f_bsize >= len(TOOL)

"""``open_image_async`` on images in every layer format, served by the memory
registry: the merged tree is what the layers say once whiteouts are applied,
every file reads back as built, and a second read fetches nothing."""

from __future__ import annotations

import random

import pytest

from lazyfs.errors import CorruptData, DigestMismatch
from lazyfs.formats.entry import EntryType
from lazyfs.image import OpenOptions, open_image_async
from lazyfs.index.merged import ROOT_INO
from lazyfs.index.shared import publish_index
from lazyfs.manifest import Platform
from lazyfs.registry import RegistryClient
from lazyfs.store.blobs import Store
from lazyfs.testing import FORMATS, OPAQUE, WHITEOUT, Dir, File, MemoryRegistry, build_layer

BIG = random.Random(5).randbytes(150_000) + bytes(8192) + b"end of tool\n" * 500
CHUNKED = {"estargz": {"chunk_size": 32 << 10}, "zstd:chunked": {"chunk_size": 32 << 10}}
LOWER = {
    "etc/": Dir(),
    "etc/hostname": "lower\n",
    "etc/passwd": "root:x:0:0::/root:/bin/sh\n",
    "usr/bin/tool": File(BIG, mode=0o755),
    "usr/share/doc/a": "a\n",
    "usr/share/doc/b": "b\n",
    "bin/tool2": ("hardlink", "usr/bin/tool"),
    "link": ("symlink", "etc/hostname"),
    "secret": File("only root\n", mode=0o600, uid=0, gid=42, xattrs={"user.note": b"hi\0there"}),
}
UPPER = {
    "etc/passwd": WHITEOUT,
    "usr/share/doc": OPAQUE,
    "usr/share/doc/c": "c\n",
    "etc/hostname": "upper\n",
    "new/file": "new\n",
}
FILES = {
    "/etc/hostname": b"upper\n",
    "/usr/bin/tool": BIG,
    "/bin/tool2": BIG,
    "/usr/share/doc/c": b"c\n",
    "/new/file": b"new\n",
    "/secret": b"only root\n",
}
DIRS = {"/", "/etc", "/usr", "/usr/bin", "/usr/share", "/usr/share/doc", "/bin", "/new"}


def push_layered(registry: MemoryRegistry, fmt: str, tag: str = "v1"):
    layers = [build_layer(fmt, entries, **CHUNKED.get(fmt, {})) for entries in (LOWER, UPPER)]
    return registry.push_image("layered/app", tag, layers)


def opened(tmp_path, registry: MemoryRegistry, ref: str, **options):
    """``open_image_async`` of ``ref`` in ``registry``, with a store of the test's own."""
    return open_image_async(ref, OpenOptions(registry=registry.options(), **options),
                            store=Store(tmp_path / "store"))


@pytest.mark.parametrize("fmt", FORMATS)
async def test_merged_tree_and_contents(tmp_path, fmt):
    registry = MemoryRegistry()
    pushed = push_layered(registry, fmt)
    async with opened(tmp_path, registry, pushed.ref) as image:
        assert image.digest == pushed.digest
        assert [info.format for info in image.layers] == [fmt, fmt]
        tree = dict(image.index.walk(ROOT_INO))
        assert {p for p, n in tree.items() if n.type is EntryType.DIR} == DIRS
        assert {p for p, n in tree.items() if n.type is EntryType.FILE} == set(FILES)
        assert {p: n.linkname for p, n in tree.items() if n.type is EntryType.SYMLINK} == \
            {"/link": "etc/hostname"}
        assert len(tree) == len(DIRS) + len(FILES) + 1
        for path, content in FILES.items():
            node = tree[path]
            assert node.size == len(content), path
            assert await image.read(node, 0, node.size) == content, path
        assert await image.read(tree["/usr/bin/tool"], 100_000, 60_000) == BIG[100_000:160_000]
        assert tree["/bin/tool2"].ino == tree["/usr/bin/tool"].ino
        assert tree["/usr/bin/tool"].mode == 0o755
        secret = tree["/secret"]
        assert (secret.mode, secret.gid) == (0o600, 42)
        assert image.index.xattrs(secret.ino) == {"user.note": b"hi\0there"}


@pytest.mark.parametrize("fmt", FORMATS)
async def test_second_read_fetches_nothing(tmp_path, fmt):
    registry = MemoryRegistry()
    pushed = push_layered(registry, fmt)
    async with opened(tmp_path, registry, pushed.ref) as image:
        node = image.index.resolve("/usr/bin/tool")
        first = await image.read(node, 0, node.size)
        after_first = registry.count()
        sent = registry.bytes_sent()
        second = await image.read(node, 0, node.size)
        assert first == second == BIG
        assert registry.count() == after_first
        assert registry.bytes_sent() == sent


@pytest.mark.parametrize("fmt", ["estargz", "zstd:chunked"])
async def test_toc_formats_read_lazily(tmp_path, fmt):
    """A small file of a layer with its own TOC costs a range, not the layer."""
    registry = MemoryRegistry()
    pushed = push_layered(registry, fmt)
    async with opened(tmp_path, registry, pushed.ref) as image:
        at_open = registry.bytes_sent()
        node = image.index.resolve("/new/file")
        assert await image.read(node, 0, node.size) == b"new\n"
        fetched = registry.bytes_sent() - at_open
    upper = pushed.layers[1]
    assert 0 < fetched < upper.size
    assert registry.count("blob") == 1
    assert not registry.seen("blob", digest=upper.digest)


@pytest.mark.parametrize("times, ok", [(1, True), (None, False)])
async def test_corrupt_ranges_are_retried_then_refused(tmp_path, times, ok):
    registry = MemoryRegistry()
    pushed = push_layered(registry, "estargz")
    async with opened(tmp_path, registry, pushed.ref) as image:
        registry.fault("flip", kind=("range", "multirange"), times=times)
        node = image.index.resolve("/new/file")
        if ok:
            assert await image.read(node, 0, node.size) == b"new\n"
        else:
            with pytest.raises((CorruptData, DigestMismatch)):
                await image.read(node, 0, node.size)
        stats = image.stats()["layers"][1]
    assert stats["verify_failures"] >= 1
    assert stats["failed_reads"] == (0 if ok else 1)


async def test_whiteouts_hide_across_many_layers(tmp_path):
    registry = MemoryRegistry()
    layers = [build_layer("gzip", {"a/x": "1", "a/y": "1", "b": "1"}),
              build_layer("estargz", {"a/.wh.x": b"", "b": "2"}),
              build_layer("zstd:chunked", {"a/x": "3", "b": WHITEOUT})]
    pushed = registry.push_image("layered/mixed", "v1", layers)
    async with opened(tmp_path, registry, pushed.ref) as image:
        tree = dict(image.index.walk(ROOT_INO))
        assert sorted(tree) == ["/", "/a", "/a/x", "/a/y"]
        assert await image.read(tree["/a/x"], 0, 10) == b"3"
        assert tree["/a/x"].layer == 2 and tree["/a/y"].layer == 0


async def test_platform_from_an_index(tmp_path):
    registry = MemoryRegistry()
    amd = registry.push_image("multi/app", None, [build_layer("gzip", {"arch": "amd64"})])
    arm = registry.push_image("multi/app", None, [build_layer("tar", {"arch": "arm64"})],
                              platform={"os": "linux", "architecture": "arm64"})
    top = registry.push_index("multi/app", "v1", [amd, arm])
    async with opened(tmp_path, registry, top.ref,
                      platform=Platform.parse("linux/arm64")) as image:
        assert image.digest == arm.digest
        node = image.index.resolve("/arch")
        assert await image.read(node, 0, 100) == b"arm64"


@pytest.mark.parametrize("referrers", [True, False])
async def test_published_index_spares_the_next_opener_a_full_pass(tmp_path, referrers):
    """``index push`` against the memory registry, with the referrers API and
    without it (distribution 2.8: the tag-schema fallback), then a fresh store
    opens the image from the published tables without fetching the layers."""
    registry = MemoryRegistry(referrers=referrers)
    pushed = push_layered(registry, "gzip")
    async with opened(tmp_path / "first", registry, pushed.ref) as image, \
            RegistryClient(registry.options()) as client:
        artifact = await publish_index(client, image)
    assert registry.seen("manifest", method="PUT", digest=artifact)
    assert pushed.digest.replace(":", "-") in registry.repositories["layered/app"].tags
    registry.requests.clear()
    async with opened(tmp_path / "second", registry, pushed.ref) as image:
        assert sorted(image.shared_tables) == sorted(layer.digest for layer in pushed.layers)
        assert [r.status for r in registry.seen("referrers")] == [200 if referrers else 404]
        for layer in pushed.layers:
            assert not registry.seen("blob", digest=layer.digest)
        node = image.index.resolve("/usr/bin/tool")
        assert await image.read(node, 0, node.size) == BIG

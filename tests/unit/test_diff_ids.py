"""A layer whose uncompressed bytes differ from the diff_id its image config
lists is refused wherever a pass reads all of them anyway: building its table
(tar, gzip, zstd), indexing it in the background on a first mount, and
loading a table another image built earlier."""

from __future__ import annotations

import hashlib

import pytest

from lazyfs.errors import DigestMismatch
from lazyfs.image import OpenOptions, open_image_async
from lazyfs.index.merged import ROOT_INO
from lazyfs.store.blobs import Store
from lazyfs.testing import MemoryRegistry, build_layer

ENTRIES = {"etc/": None, "etc/os-release": "ID=lazyfs\n"}
LIE = "sha256:" + hashlib.sha256(b"not this layer").hexdigest()


@pytest.fixture
def registry() -> MemoryRegistry:
    return MemoryRegistry()


def push(registry: MemoryRegistry, fmt: str, tag: str, lie: bool):
    layers = [build_layer(fmt, ENTRIES), build_layer("tar", {"etc/motd": "hello\n"})]
    diff_ids = [LIE if lie else layers[0].diff_id, layers[1].diff_id]
    extra = {"rootfs": {"type": "layers", "diff_ids": diff_ids}}
    return registry.push_image("diff/app", tag, layers, config_extra=extra)


def opened(tmp_path, registry: MemoryRegistry, ref: str, **options):
    return open_image_async(ref, OpenOptions(registry=registry.options(), **options),
                            store=Store(tmp_path / "store"))


@pytest.mark.parametrize("fmt", ["tar", "gzip", "zstd"])
async def test_a_lying_diff_id_fails_the_table_build(tmp_path, registry, fmt):
    pushed = push(registry, fmt, "lie", lie=True)
    with pytest.raises(DigestMismatch, match="diff_id") as e:
        async with opened(tmp_path, registry, pushed.ref):
            pass
    assert pushed.layers[0].digest in str(e.value) and LIE in str(e.value)


async def test_an_honest_image_opens(tmp_path, registry):
    pushed = push(registry, "gzip", "v1", lie=False)
    async with opened(tmp_path, registry, pushed.ref) as image:
        assert image.index.resolve("/etc/os-release").size == 10


async def test_a_table_built_for_another_image_is_checked_too(tmp_path, registry):
    honest = push(registry, "gzip", "v1", lie=False)
    async with opened(tmp_path, registry, honest.ref):
        pass
    liar = push(registry, "gzip", "lie", lie=True)
    with pytest.raises(DigestMismatch, match="diff_id"):
        async with opened(tmp_path, registry, liar.ref):
            pass


async def test_a_first_mount_serves_no_layer_with_a_lying_diff_id(tmp_path, registry):
    pushed = push(registry, "gzip", "lie", lie=True)
    async with opened(tmp_path, registry, pushed.ref, background_index=True) as image:
        with pytest.raises(DigestMismatch, match="diff_id"):
            await image.tree.lookup(ROOT_INO, "etc")
        with pytest.raises(DigestMismatch):
            await image.tree.merged()
        stats = image.stats()
        assert stats["index"].startswith("failed: ") and "diff_id" in stats["index"]
        assert stats["layers"][0]["indexing"]["state"].startswith("failed: ")
        assert "next lookup" not in stats["index"]


async def test_a_decompressed_copy_that_misses_its_diff_id_is_not_kept(tmp_path):
    """The copy a single-frame zstd layer is served from is verified against
    the diff_id too (a table built before diff_ids were kept has none)."""
    from lazyfs.read.decompressed import DecompressedBlob

    layer = build_layer("zstd", ENTRIES)
    blob_file = tmp_path / "layer.zst"
    blob_file.write_bytes(layer.blob)

    class Local:
        digest, size = layer.digest, layer.size

        async def path(self):
            return blob_file

    store = Store(tmp_path / "store")
    with pytest.raises(DigestMismatch):
        await DecompressedBlob(Local(), LIE, store).read_range(0, 10)
    assert store.blob_path(LIE) is None
    copy = DecompressedBlob(Local(), layer.diff_id, store)
    assert (await copy.read_range(0, 10)) == (await copy.read_range(0, 512))[:10]
    assert store.blob_path(layer.diff_id) is not None

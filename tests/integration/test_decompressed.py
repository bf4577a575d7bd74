"""A single-frame zstd layer is inflated once into a copy verified against its
diff_id; reads are then served from the copy, not by inflating the layer."""

from __future__ import annotations

import zstandard

from lazyfs.image import open_image_async
from lazyfs.store.blobs import Store
from lazyfs.testing.push import OCI_LAYER_ZSTD, push_image, sha256
from tests.support.images import make_tar


async def test_single_frame_zstd_reads_come_from_a_verified_copy(registry, tmp_path):
    files = {"etc/": None, "etc/os-release": "ID=zstd\n", "big": bytes(range(256)) * 20_000}
    tar = make_tar(files)
    blob = zstandard.ZstdCompressor().compress(tar)
    with registry.client() as c:
        push_image(c, "zstd/single", "v1", [blob], layer_media_type=OCI_LAYER_ZSTD)
    store = Store(tmp_path / "c")
    async with open_image_async(f"{registry.host}/zstd/single:v1", store=store) as img:
        big = img.index.resolve("/big")
        assert await img.read(big, 1_000_000, 10) == (bytes(range(256)) * 20_000)[1_000_000:1_000_010]
        assert await img.read(img.index.resolve("/etc/os-release"), 0, 100) == b"ID=zstd\n"
        layer = img.stats()["layers"][0]
        assert layer["mode"] == "full pull" and "single zstd frame" in layer["reason"]
    copy = store.blob_path(sha256(tar))
    assert copy is not None and copy.read_bytes() == tar


async def test_a_decompressed_copy_that_does_not_match_the_diff_id_is_refused(registry, tmp_path):
    tar = make_tar({"a": "a\n"})
    blob = zstandard.ZstdCompressor().compress(tar)
    with registry.client() as c:
        push_image(c, "zstd/lying", "v1", [blob], layer_media_type=OCI_LAYER_ZSTD,
                   diff_ids=[sha256(b"not this tar")])
    store = Store(tmp_path / "c")
    import pytest

    from lazyfs.errors import DigestMismatch
    # the table's pass over the layer finds the lie before any read
    with pytest.raises(DigestMismatch, match="diff_id"):
        async with open_image_async(f"{registry.host}/zstd/lying:v1", store=store) as img:
            await img.read(img.index.resolve("/a"), 0, 2)
    assert store.blob_path(sha256(tar)) is None

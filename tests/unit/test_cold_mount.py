"""What a mount asks the registry for: few requests on a first open, and
nothing but the tag's manifest on the next one (the config and every
table come from the store)."""

from __future__ import annotations

import pytest

from lazyfs.image import OpenOptions, open_image_async
from lazyfs.store.blobs import Store
from lazyfs.testing import MemoryRegistry, build_layer

TOC_FORMATS = ("estargz", "zstd:chunked")


def _layers(fmt: str):
    return [build_layer(fmt, {"etc/": None, "etc/os-release": "debian\n",
                              **{f"usr/lib/f{i}": f"{i}\n" * 50 for i in range(40)}}),
            build_layer(fmt, {"app/": None, "app/top.txt": "top\n"}),
            build_layer(fmt, {"srv/": None, "srv/data": "x" * 5000})]


@pytest.mark.parametrize("fmt", TOC_FORMATS)
async def test_a_second_open_fetches_no_blob_byte_config_included(tmp_path, fmt):
    registry = MemoryRegistry()
    pushed = registry.push_image("library/app", "v1", _layers(fmt))
    options = OpenOptions(registry=registry.options())
    async with open_image_async(pushed.ref, options, Store(tmp_path)) as image:
        node = image.index.resolve("/etc/os-release")
        assert await image.read(node, 0, node.size) == b"debian\n"
    assert registry.count("blob") + registry.count("range") > 0
    registry.requests.clear()
    async with open_image_async(pushed.ref, options, Store(tmp_path)) as image:
        node = image.index.resolve("/etc/os-release")
        assert await image.read(node, 0, node.size) == b"debian\n"
    assert [r.kind for r in registry.requests if r.kind not in ("ping", "manifest")] == []

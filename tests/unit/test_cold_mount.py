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


def _ranges_per_layer(registry: MemoryRegistry, pushed) -> list[int]:
    return [registry.count("range", digest=layer.digest) for layer in pushed.layers]


@pytest.mark.parametrize("fmt", TOC_FORMATS)
async def test_each_layers_toc_comes_in_one_request(tmp_path, fmt):
    registry = MemoryRegistry()
    pushed = registry.push_image("library/app", "v1", _layers(fmt))
    async with open_image_async(pushed.ref, OpenOptions(registry=registry.options()),
                                Store(tmp_path)) as image:
        assert image.index.resolve("/srv/data").size == 5000
    assert _ranges_per_layer(registry, pushed) == [1, 1, 1]


async def test_an_estargz_toc_larger_than_the_guess_costs_one_more_request(tmp_path, monkeypatch):
    from lazyfs.formats import estargz
    monkeypatch.setattr(estargz, "TOC_GUESS", 200)
    registry = MemoryRegistry()
    pushed = registry.push_image("library/app", "v1", _layers("estargz"))
    async with open_image_async(pushed.ref, OpenOptions(registry=registry.options()),
                                Store(tmp_path)) as image:
        node = image.index.resolve("/usr/lib/f39")
        assert await image.read(node, 0, node.size) == b"39\n" * 50
    assert _ranges_per_layer(registry, pushed)[0] == 3, "tail, rest of the TOC, the read"


def test_the_mount_path_imports_only_what_every_mount_uses():
    """Indexing gzip layers, publishing tables and the background indexer
    are loaded when an image needs them, not by every mount."""
    import subprocess
    import sys
    code = ("import sys, lazyfs.cli.main, lazyfs.fs.operations, lazyfs.fs.daemon, lazyfs.image; "
            "print(' '.join(sorted(sys.modules)))")
    loaded = set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                text=True).stdout.split())
    assert "lazyfs.image" in loaded
    assert loaded.isdisjoint({"lazyfs.formats.gzip", "lazyfs.formats.zran", "rapidgzip",
                              "lazyfs.index.publish", "lazyfs.read.background"})


async def test_the_layers_tocs_are_fetched_while_the_config_is(tmp_path, autojump_clock):
    """With the config's answer stalled, every layer's TOC has been asked
    for already: the first mount does not wait a round trip for it."""
    import json

    import trio
    registry = MemoryRegistry()
    pushed = registry.push_image("library/app", "v1", _layers("estargz"))
    config = json.loads(pushed.manifest)["config"]["digest"]
    registry.fault("stall", kind="blob", digest=config, seconds=600)
    with pytest.raises(trio.TooSlowError):
        with trio.fail_after(60):
            async with open_image_async(pushed.ref, OpenOptions(registry=registry.options()),
                                        Store(tmp_path)):
                pass
    assert _ranges_per_layer(registry, pushed) == [1, 1, 1]

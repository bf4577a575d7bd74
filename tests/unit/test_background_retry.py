"""A first mount's background index that fails because the registry was
unreachable past the retry deadline starts again on the next lookup or read
once asked, and then serves the image; a layer whose bytes are wrong does not."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from lazyfs.errors import DigestMismatch, LayerFormatError, RegistryInterrupted
from lazyfs.image import OpenOptions, open_image_async
from lazyfs.index.merged import ROOT_INO
from lazyfs.manifest import Descriptor
from lazyfs.read.streaming import LayerStream
from lazyfs.store.blobs import Store
from lazyfs.testing import MemoryRegistry, build_layer

BIG = random.Random(7).randbytes(200_000)


@pytest.fixture
def registry() -> MemoryRegistry:
    return MemoryRegistry()


def push(registry: MemoryRegistry):
    base = build_layer("gzip", {"etc/": None, "etc/os-release": "ID=lazyfs\n", "big": BIG})
    top = build_layer("gzip", {"etc/motd": "hello\n"})
    return registry.push_image("bg/app", "v1", [base, top])


def opened(tmp_path, registry: MemoryRegistry, ref: str):
    options = OpenOptions(registry=registry.options(retry_deadline=5.0), background_index=True)
    return open_image_async(ref, options, store=Store(tmp_path / "store"))


async def test_the_next_lookup_after_a_failure_indexes_again(tmp_path, registry, autojump_clock):
    pushed = push(registry)
    base = pushed.layers[0].digest
    registry.fault("status", kind=("blob", "range"), digest=base, times=None, status=503)
    async with opened(tmp_path, registry, pushed.ref) as image:
        with pytest.raises(RegistryInterrupted, match="gave up"):
            await image.tree.lookup(ROOT_INO, "etc")
        state = image.stats()["index"]
        assert state.startswith("failed: ") and "next lookup or read starts it again" in state
        assert not image.tree.lasting  # nothing the kernel may cache yet
        with pytest.raises(RegistryInterrupted):
            await image.tree.lookup(ROOT_INO, "etc")
        assert image.stats()["index_attempts"] == 2
        registry.clear_faults()
        etc = await image.tree.lookup(ROOT_INO, "etc")
        node = await image.tree.lookup(etc.ino, "os-release")
        assert await image.read(node, 0, node.size) == b"ID=lazyfs\n"
        await image.tree.merged()
        stats = image.stats()
        assert stats["index"] == "ready" and stats["index_attempts"] == 3
        assert "gave up" in stats["index_last_error"]
        # the merged index answers now: the entries gathered to build it are let go
        background = image.background
        assert background.tables == [None, None]
        assert all(not s.table.entries and s.indexer is None for s in background.streams.values())
        assert all(not seen.entries for seen in background.progress.layers)
        assert await image.read(node, 0, node.size) == b"ID=lazyfs\n"
        early = await image.tree.getattr(etc.ino)  # an inode handed out early still translates
        assert early.ino == image.tree.index.resolve("/etc").ino


async def test_a_layer_that_fails_its_digest_is_not_indexed_again(tmp_path, registry,
                                                                  autojump_clock):
    pushed = push(registry)
    base = pushed.layers[0].digest
    registry.fault("flip", kind=("blob", "range"), digest=base, times=None)
    async with opened(tmp_path, registry, pushed.ref) as image:
        with pytest.raises((DigestMismatch, LayerFormatError)):
            await image.tree.lookup(ROOT_INO, "etc")
        asked = registry.count(digest=base)
        with pytest.raises((DigestMismatch, LayerFormatError)):
            await image.tree.lookup(ROOT_INO, "etc")
        assert registry.count(digest=base) == asked
        assert "next lookup" not in image.stats()["index"]
        assert image.tree.lasting


async def test_the_next_read_after_a_failure_starts_the_layer_again(tmp_path):
    stream = LayerStream(Descriptor("application/vnd.oci.image.layer.v1.tar+gzip",
                                    "sha256:" + "0" * 64, 10), Store(tmp_path))
    restarted = []

    def retry() -> None:
        restarted.append(True)
        stream.reset()

    stream.fail(RegistryInterrupted("cut short"), retry)
    with trio.move_on_after(0.2):
        await stream.finished()
    assert restarted == [True] and stream.error is None
    stream.fail(RegistryInterrupted("again"), retry)
    async with trio.open_nursery() as nursery:
        async def waiting() -> None:
            with pytest.raises(RegistryInterrupted, match="later"):
                await stream.finished()
        nursery.start_soon(waiting)
        await trio.testing.wait_all_tasks_blocked()
        assert restarted == [True, True]
        stream.fail(RegistryInterrupted("later"), retry)

"""A new image answers before its index file and layer tables are written.

The first answers come from the merged tree in memory; the files follow a
moment later (or when the image closes first), after which the tree answers
from the file, the same answers. An image sharing a layer, opened before that
layer's table is saved, takes the table built in this process: nothing of the
layer is fetched again.
"""

from __future__ import annotations

import gc
import weakref

import trio

from lazyfs import image as image_module
from lazyfs.image import WRITE_BEHIND_DELAY
from lazyfs.index.memory import MemoryIndex
from lazyfs.index.merged import ROOT_INO, MergedIndex
from lazyfs.testing import MemoryRegistry, build_layer
from tests.unit.test_image_facade import FILES, opened, push_layered


def _written(tmp_path) -> set[str]:
    indexes = tmp_path / "store" / "indexes"
    return {p.parent.name for p in indexes.glob("*/*")} if indexes.exists() else set()


async def test_first_answers_come_before_the_files_then_from_them(tmp_path):
    registry = MemoryRegistry()
    pushed = push_layered(registry, "estargz")
    async with opened(tmp_path, registry, pushed.ref) as image:
        assert isinstance(image.index, MemoryIndex)
        assert _written(tmp_path) == set()
        before = dict(image.index.walk(ROOT_INO))
        node = await image.tree.lookup(ROOT_INO, "usr")
        assert [n for n, _, _ in await image.tree.readdir(node.ino)] == ["bin", "share"]
        tool = image.index.resolve("/usr/bin/tool")
        assert await image.read(tool, 0, tool.size) == FILES["/usr/bin/tool"]
        await image.stored()
        assert _written(tmp_path) == {"merged", "layer-estargz"}
        with trio.fail_after(5):
            while not isinstance(image.index, MergedIndex):
                await trio.sleep(0.01)
        assert dict(image.index.walk(ROOT_INO)) == before
    async with opened(tmp_path, registry, pushed.ref) as again:
        assert isinstance(again.index, MergedIndex)
        assert dict(again.index.walk(ROOT_INO)) == before


async def test_files_are_written_on_the_way_out_and_after_the_delay(tmp_path):
    registry = MemoryRegistry()
    pushed = push_layered(registry, "zstd:chunked")
    async with opened(tmp_path / "a", registry, pushed.ref):
        pass
    assert _written(tmp_path / "a") == {"merged", "layer-zstd-chunked"}
    async with opened(tmp_path / "b", registry, pushed.ref) as image:
        with trio.fail_after(WRITE_BEHIND_DELAY + 5):
            while not isinstance(image.index, MergedIndex):
                await trio.sleep(0.05)
        assert _written(tmp_path / "b") == {"merged", "layer-zstd-chunked"}


async def test_an_image_sharing_an_unsaved_layer_fetches_nothing_of_it(tmp_path):
    registry = MemoryRegistry()
    base = build_layer("estargz", {"etc/os-release": "ID=base\n", "bin/sh": "sh\n"})
    first = registry.push_image("shared/a", "v1",
                                [base, build_layer("estargz", {"app": "a\n"})])
    second = registry.push_image("shared/b", "v1",
                                 [base, build_layer("estargz", {"app": "b\n"})])
    async with opened(tmp_path, registry, first.ref):
        assert _written(tmp_path) == set()
        seen = len(registry.seen(digest=base.digest))
        assert seen > 0
        async with opened(tmp_path, registry, second.ref) as image:
            node = image.index.resolve("/app")
            assert await image.read(node, 0, node.size) == b"b\n"
        assert len(registry.seen(digest=base.digest)) == seen


async def test_the_tree_in_memory_is_let_go_once_the_file_answers(tmp_path):
    registry = MemoryRegistry()
    pushed = push_layered(registry, "estargz")
    async with opened(tmp_path, registry, pushed.ref) as image:
        memory = weakref.ref(image.index)
        await image.stored()
        assert isinstance(image.index, MergedIndex)
        gc.collect()
        assert memory() is None, "the tree in memory is still referenced"


async def test_the_files_wait_while_reads_keep_coming(tmp_path, monkeypatch):
    monkeypatch.setattr(image_module, "WRITE_BEHIND_QUIET", 1.0)
    registry = MemoryRegistry()
    pushed = push_layered(registry, "estargz")
    async with opened(tmp_path, registry, pushed.ref) as image:
        tool = image.index.resolve("/usr/bin/tool")
        until = trio.current_time() + WRITE_BEHIND_DELAY + 1.5
        while trio.current_time() < until:
            assert await image.read(tool, 0, tool.size) == FILES["/usr/bin/tool"]
            await trio.sleep(0.05)
        assert _written(tmp_path) == set()
        with trio.fail_after(10):
            while not isinstance(image.index, MergedIndex):
                await trio.sleep(0.05)
        assert _written(tmp_path) == {"merged", "layer-estargz"}

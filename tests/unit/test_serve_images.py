"""The images a service holds: opened once per image, closed with their memory
given back, tags resolved again once stale, failures remembered and not cached."""

from __future__ import annotations

import gc
import weakref

import pytest
import trio
import trio.testing

from lazyfs.errors import NotFound
from lazyfs.image import OpenOptions
from lazyfs.registry import RegistryClient
from lazyfs.serve.fs import StoreOperations
from lazyfs.serve.images import SLOT_SHIFT, ImageSet
from lazyfs.store.blobs import Store
from lazyfs.testing import MemoryRegistry, build_layer


def _push(registry: MemoryRegistry, tag: str, text: str):
    return registry.push_image("app/web", tag, [build_layer("estargz", {"which": text})])


async def _with_images(tmp_path, registry, body, **kw):
    options = OpenOptions(registry=registry.options())
    async with RegistryClient(options.registry) as client, trio.open_nursery() as nursery:
        images = ImageSet(nursery, Store(tmp_path), options, client=client, **kw)
        try:
            await body(images)
        finally:
            nursery.cancel_scope.cancel()


async def _read(images: ImageSet, slot) -> bytes:
    async with images.using(slot) as image:
        node = image.index.resolve("/which")
        return await image.read(node, 0, node.size)


async def test_a_closed_image_gives_its_memory_back_and_reopens(tmp_path):
    registry = MemoryRegistry()
    pushed = _push(registry, "v1", "one\n")

    async def body(images: ImageSet):
        ops = StoreOperations(images)
        slot = await images.by_reference(pushed.ref)
        assert slot is await images.by_reference(pushed.ref)  # one image, opened once
        await ops._image(slot.number << SLOT_SHIFT | 1)
        held = weakref.ref(slot.image)
        images.close(slot)
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        assert held() is None, "a closed image is still referenced"
        assert await _read(images, slot) == b"one\n"
        assert slot.opens == 2 and slot.image is not None

    await _with_images(tmp_path, registry, body)


async def test_a_tag_is_resolved_again_once_stale_and_a_digest_never(tmp_path):
    """Also: a tag whose registry fails when it is due again keeps the image it named."""
    registry = MemoryRegistry()
    first = _push(registry, "v1", "one\n")

    async def body(images: ImageSet):
        slot = await images.by_reference(first.ref)
        by_digest = await images.by_reference(first.by_digest)
        assert by_digest is slot
        _push(registry, "v1", "two\n")
        assert await images.by_reference(first.ref) is slot  # still fresh
        images.tag_ttl = 0
        moved = await images.by_reference(first.ref)
        assert moved is not slot and await _read(images, moved) == b"two\n"
        assert await images.by_reference(first.by_digest) is slot
        assert images.fresh(first.by_digest) == float("inf")
        # a registry failing when the tag is due again: the image it named is served on
        registry.fault("status", kind="manifest", status=503, times=None)
        assert await images.by_reference(first.ref) is moved
        assert await _read(images, moved) == b"two\n"
        assert "resolving again" in images.failures[-1]["what"]

    await _with_images(tmp_path, registry, body, tag_ttl=3600)


async def test_a_failure_is_remembered_with_its_reason_and_not_cached(tmp_path):
    registry = MemoryRegistry()
    ref = "registry.test/app/web:later"

    async def body(images: ImageSet):
        with pytest.raises(NotFound):
            await images.by_reference(ref)
        assert images.failure_count == 1 and "manifest unknown" in images.failures[0]["reason"]
        _push(registry, "later", "now\n")
        assert await _read(images, await images.by_reference(ref)) == b"now\n"

    await _with_images(tmp_path, registry, body)


"""A registry that cannot be reached falls back to the image a previous pull
left in the store; when the store has none, the registry's failure is what
the caller sees (exit 7), not a missing local image (exit 3)."""

from __future__ import annotations

import httpx
import pytest

from lazyfs.errors import RegistryUnreachable
from lazyfs.image import OpenOptions, open_image_async
from lazyfs.store.blobs import Store
from lazyfs.store.records import image_record
from lazyfs.testing import MemoryRegistry, build_layer


def opened(tmp_path, registry: MemoryRegistry, ref: str):
    return open_image_async(ref, OpenOptions(registry=registry.options()),
                            store=Store(tmp_path / "store"))


async def test_unreachable_registry_with_an_empty_store_is_unreachable(tmp_path, autojump_clock):
    registry = MemoryRegistry()
    pushed = registry.push_image("down/app", "v1", [build_layer("tar", {"a": "a\n"})])
    registry.fault("drop", error=httpx.ConnectError, times=None)
    with pytest.raises(RegistryUnreachable) as e:
        async with opened(tmp_path, registry, pushed.ref):
            pass
    assert registry.host in str(e.value)
    assert "no copy of" in str(e.value) and "local store" in str(e.value)


async def test_unreachable_registry_uses_the_stored_copy(tmp_path, autojump_clock):
    registry = MemoryRegistry()
    pushed = registry.push_image("down/app", "v1", [build_layer("tar", {"a": "a\n"})])
    async with opened(tmp_path, registry, pushed.ref) as image:
        digest, resolved = image.digest, image.resolved
    Store(tmp_path / "store").record_image(image_record(resolved.ref, resolved))
    registry.fault("drop", error=httpx.ConnectError, times=None)
    async with opened(tmp_path, registry, pushed.ref) as image:
        assert image.digest == digest

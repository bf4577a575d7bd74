"""Whole blobs from the memory registry: a pull, and the parallel ranged
download with the faults a real network commits (a dropped range, a registry
that ignores Range, a corrupted piece), checked byte for byte in the store."""

from __future__ import annotations

import random

import pytest

from lazyfs.errors import CorruptData, DigestMismatch
from lazyfs.manifest import Descriptor
from lazyfs.pull import pull
from lazyfs.reference import parse_reference
from lazyfs.registry import RegistryClient
from lazyfs.registry.download import Fallback, stream_blob
from lazyfs.store.blobs import Store
from lazyfs.testing import MemoryRegistry, build_layer

DATA = random.Random(3).randbytes(300_000)
CHUNK = 64 << 10


@pytest.fixture
def registry() -> MemoryRegistry:
    return MemoryRegistry()


def push(registry: MemoryRegistry):
    layers = [build_layer("gzip", {"big": DATA}), build_layer("tar", {"small": "x\n"})]
    return registry.push_image("dl/app", "v1", layers)


def descriptor(layer) -> Descriptor:
    return Descriptor(layer.media_type, layer.digest, layer.size)


async def test_pull_stores_every_layer_verified(tmp_path, registry):
    pushed = push(registry)
    store = Store(tmp_path / "store")
    result = await pull(parse_reference(pushed.ref), options=registry.options(), store=store)
    assert result.digest == pushed.digest
    assert result.layers_fetched == 2
    assert result.bytes_fetched == sum(layer.size for layer in pushed.layers)
    for layer in pushed.layers:
        assert store.blob_path(layer.digest).read_bytes() == layer.blob
    again = await pull(parse_reference(pushed.ref), options=registry.options(), store=store)
    assert again.up_to_date


async def ranged(tmp_path, registry, layer, **kw):
    got = bytearray()
    async with RegistryClient(registry.options()) as client:
        path = await stream_blob(client, parse_reference(registry.ref("dl/app", "v1")),
                                 descriptor(layer), Store(tmp_path / "store"), got.extend,
                                 chunk=CHUNK, parallel=3, **kw)
    return path, bytes(got)


async def test_ranged_download_survives_a_dropped_range(tmp_path, registry):
    """A connection dropped before the answer is sent again (``retry=True``)."""
    layer = push(registry).layers[0]
    registry.fault("drop", kind="range", nth=2)
    path, consumed = await ranged(tmp_path, registry, layer)
    assert consumed == layer.blob == path.read_bytes()
    ranges = registry.seen("range", digest=layer.digest)
    assert len(ranges) == -(-layer.size // CHUNK) + 1
    assert [r.fault for r in ranges].count("drop") == 1


async def test_registry_ignoring_range_is_streamed_once(tmp_path, registry):
    layer = push(registry).layers[0]
    registry.fault("ignore_range", kind="range", times=None)
    fallback = Fallback()
    path, consumed = await ranged(tmp_path, registry, layer, fallback=fallback)
    assert consumed == layer.blob == path.read_bytes()
    assert "not 206" in fallback.reason
    assert registry.count("range", digest=layer.digest) == 1
    assert registry.count("blob", method="GET", digest=layer.digest) == 1


async def test_a_corrupted_piece_fails_verification(tmp_path, registry):
    layer = push(registry).layers[0]
    registry.fault("flip", kind="range", nth=3)
    with pytest.raises(DigestMismatch):
        await ranged(tmp_path, registry, layer)
    assert Store(tmp_path / "store").blob_path(layer.digest) is None


@pytest.mark.parametrize("attempt", range(5))
async def test_a_failing_consumer_is_the_error_reported_not_the_ranges_it_stopped(tmp_path, attempt):
    registry = MemoryRegistry()
    layer = build_layer("tar", {"big": bytes(range(256)) * 4000})
    pushed = registry.push_image("dl/app", "v1", [layer])

    def broken(data: bytes) -> None:
        raise CorruptData("not a tar")
    with pytest.raises(CorruptData):
        async with RegistryClient(registry.options()) as client:
            await stream_blob(client, parse_reference(pushed.ref),
                              Descriptor(layer.media_type, layer.digest, layer.size),
                              Store(tmp_path / "store"), broken, chunk=16 << 10, parallel=4)

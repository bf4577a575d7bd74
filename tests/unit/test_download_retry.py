"""A whole-blob download that meets a registry failing part-way: a range cut
short is resumed from the bytes that arrived, an outage is waited out while
it lasts less than the retry deadline, and only a longer one fails."""

from __future__ import annotations

import random

import httpx
import pytest

from lazyfs.errors import RegistryError, RegistryInterrupted, RegistryUnreachable
from lazyfs.manifest import Descriptor
from lazyfs.reference import parse_reference
from lazyfs.registry import RegistryClient
from lazyfs.registry.download import DownloadProgress, stream_blob
from lazyfs.store.blobs import Store
from lazyfs.testing import MemoryRegistry, build_layer

DATA = random.Random(5).randbytes(300_000)
CHUNK = 64 << 10


@pytest.fixture
def registry() -> MemoryRegistry:
    return MemoryRegistry()


def pushed_layer(registry: MemoryRegistry):
    layer = build_layer("gzip", {"big": DATA})
    registry.push_image("dl/app", "v1", [layer])
    return layer


async def download(tmp_path, registry, layer, progress=None, **options):
    got = bytearray()
    desc = Descriptor(layer.media_type, layer.digest, layer.size)
    async with RegistryClient(registry.options(**options)) as client:
        path = await stream_blob(client, parse_reference(registry.ref("dl/app", "v1")), desc,
                                 Store(tmp_path / "store"), got.extend, chunk=CHUNK, parallel=3,
                                 progress=progress)
    return path, bytes(got)


def starts(registry, layer) -> list[int]:
    return [int(r.range.partition("=")[2].partition("-")[0])
            for r in registry.seen("range", digest=layer.digest)]


async def test_a_range_cut_short_is_resumed_from_what_arrived(tmp_path, registry):
    layer = pushed_layer(registry)
    registry.fault("truncate", kind="range", nth=2)
    path, consumed = await download(tmp_path, registry, layer)
    assert consumed == layer.blob == path.read_bytes()
    cut = [r for r in registry.seen("range", digest=layer.digest) if r.fault == "truncate"]
    assert len(cut) == 1
    first, last = (int(x) for x in cut[0].range.partition("=")[2].split("-"))
    resumed = first + (last + 1 - first) // 2
    assert resumed in starts(registry, layer)
    assert registry.bytes_sent("range", digest=layer.digest) == layer.size


@pytest.mark.parametrize("error", [httpx.RemoteProtocolError, httpx.ReadError])
async def test_a_connection_dropped_mid_body_is_resumed(tmp_path, registry, error):
    layer = pushed_layer(registry)
    registry.fault("drop", kind="range", nth=3, at=0.5, error=error)
    path, consumed = await download(tmp_path, registry, layer)
    assert consumed == layer.blob == path.read_bytes()
    assert registry.bytes_sent("range", digest=layer.digest) == layer.size


async def test_a_short_outage_is_waited_out(tmp_path, registry, autojump_clock):
    layer = pushed_layer(registry)
    registry.fault("status", kind="range", nth=2, times=40, status=503)
    path, consumed = await download(tmp_path, registry, layer)
    assert consumed == layer.blob == path.read_bytes()


async def test_dropped_connections_are_waited_out(tmp_path, registry, autojump_clock):
    layer = pushed_layer(registry)
    registry.fault("drop", kind="range", nth=2, times=30)
    path, consumed = await download(tmp_path, registry, layer)
    assert consumed == layer.blob == path.read_bytes()


async def test_an_outage_past_the_deadline_fails(tmp_path, registry, autojump_clock):
    layer = pushed_layer(registry)
    registry.fault("status", kind="range", nth=2, times=None, status=503)
    progress = DownloadProgress()
    with pytest.raises(RegistryInterrupted, match="gave up"):
        await download(tmp_path, registry, layer, progress, retry_deadline=20.0)
    assert 0 < progress.received < layer.size


async def test_other_answers_are_not_asked_again(tmp_path, registry, autojump_clock):
    layer = pushed_layer(registry)
    registry.fault("status", kind="range", nth=2, times=None, status=400)
    with pytest.raises(RegistryError) as e:
        await download(tmp_path, registry, layer)
    assert not isinstance(e.value, (RegistryInterrupted, RegistryUnreachable))
    assert registry.count("range", digest=layer.digest) <= 4


async def test_a_plain_get_cut_short_carries_on_by_range(tmp_path, registry):
    """The transport resumes a retried GET's body; one sent once is not resumed."""
    layer = pushed_layer(registry)
    ref = parse_reference(registry.ref("dl/app", "v1"))
    registry.fault("drop", kind="blob", at=0.5, error=httpx.RemoteProtocolError)
    async with RegistryClient(registry.options()) as client:
        async with client.get_blob_stream(ref, layer.digest) as chunks:
            body = b"".join([c async for c in chunks])
        assert body == layer.blob
        resumed = registry.seen("range", digest=layer.digest)
        assert [r.range for r in resumed] == [f"bytes={len(layer.blob) // 2}-"]
        registry.fault("truncate", kind="range")
        with pytest.raises(RegistryError, match="returned"):
            await client.get_range(ref, layer.digest, 0, 100_000)

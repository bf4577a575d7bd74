"""Deadlines on range reads, in real (short) time against the memory
registry: a stalled request is cut, gives its host slot back to the reads
behind it, a read fails within its own deadline, and a registry's
``Retry-After`` is waited for when the read's budget allows it."""

from __future__ import annotations

import pytest
import trio

from lazyfs.errors import RegistryError, RegistryInterrupted
from lazyfs.image import OpenOptions, open_image_async
from lazyfs.reference import parse_reference
from lazyfs.registry import RegistryClient
from lazyfs.store.blobs import Store
from lazyfs.testing import MemoryRegistry, build_layer

FILES = {f"f{i}": bytes([65 + i]) * 200_000 for i in range(10)}


@pytest.fixture
def pushed():
    registry = MemoryRegistry()
    layer = build_layer("estargz", dict(FILES), chunk_size=65536)
    return registry, registry.push_image("library/app", "v1", [layer]), layer


async def test_stalled_requests_give_their_slots_to_the_reads_behind_them(pushed):
    registry, image, layer = pushed
    ref = parse_reference(image.ref)
    registry.fault("stall", kind="range", seconds=600, times=8)
    options = registry.options(max_range_requests=8, slot_release=0.2, first_byte_timeout=2.0)
    async with RegistryClient(options) as client:
        stalled: list[BaseException] = []

        async def stalled_read(i: int) -> None:
            try:
                await client.get_range(ref, layer.digest, i * 1000, i * 1000 + 10)
            except RegistryInterrupted as e:
                stalled.append(e)

        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(stalled_read, i)
            await trio.sleep(0.05)
            with trio.fail_after(10):
                data = await client.get_range(ref, layer.digest, 0, 512)
            assert len(data) == 512
            assert not stalled, "the free read waited until the stalled ones were cut"
        assert len(stalled) == 8 and all("request cut" in str(e) for e in stalled)


async def _open(registry, tmp_path, **kw):
    return open_image_async("registry.test/library/app:v1",
                            OpenOptions(registry=registry.options(**kw)), Store(tmp_path))


async def test_a_read_against_a_stalling_registry_fails_within_its_deadline(pushed, tmp_path):
    registry, _, _ = pushed
    async with await _open(registry, tmp_path, read_deadline=1.5,
                           first_byte_timeout=20.0) as image:
        registry.fault("stall", kind=("range", "multirange"), seconds=600, times=None)
        node = image.index.resolve("/f3")
        started = trio.current_time()
        with trio.fail_after(10):
            with pytest.raises(RegistryInterrupted, match="read gave up after 1.5 s"):
                await image.read(node, 0, 4096)
        assert trio.current_time() - started < 3.0
        registry.clear_faults()
        assert await image.read(node, 0, 4096) == FILES["f3"][:4096]
        assert image.reader.layers[0].stats.timeouts == 1


@pytest.mark.parametrize("action", ["stall", "drip"])
async def test_a_stalled_or_dripping_answer_is_cut_and_asked_again(pushed, tmp_path, action):
    """The first answer sends part of its body then nothing, or a byte every
    50 ms: it is cut at its own deadline, and the read's next attempt gets
    the bytes."""
    registry, _, _ = pushed
    async with await _open(registry, tmp_path, read_deadline=20.0, first_byte_timeout=0.5,
                           min_rate=10 << 20) as image:
        if action == "stall":
            registry.fault("stall", kind=("range", "multirange"), seconds=600, at=0.3)
        else:
            registry.fault("drip", kind=("range", "multirange"), seconds=0.05)
        node = image.index.resolve("/f5")
        with trio.fail_after(10):
            assert await image.read(node, 0, 100_000) == FILES["f5"][:100_000]
        assert image.reader.layers[0].stats.retries == 1


async def test_retry_after_is_honoured_within_the_reads_budget(pushed, tmp_path):
    registry, _, _ = pushed
    async with await _open(registry, tmp_path, read_deadline=10.0) as image:
        registry.fault("status", kind=("range", "multirange"), status=503, retry_after="1")
        node = image.index.resolve("/f1")
        started = trio.current_time()
        assert await image.read(node, 0, 100) == FILES["f1"][:100]
        assert trio.current_time() - started >= 1.0

        registry.fault("status", kind=("range", "multirange"), status=503, retry_after="30")
        started = trio.current_time()
        with pytest.raises(RegistryError, match="503"):
            await image.read(image.index.resolve("/f7"), 0, 100)
        assert trio.current_time() - started < 1.0, "a wait past the deadline is not taken"


@pytest.mark.parametrize("action", ["flip", "truncate", "stall"])
async def test_a_redirect_target_that_fails_is_forgotten_at_once(tmp_path, action):
    """Bytes from the storage host that fail their checks (or do not come in
    time) send the read's next attempt back to the registry for a fresh
    redirect, not to the same target again while its URL is still fresh."""
    registry = MemoryRegistry(redirect=True)
    registry.push_image("library/app", "v1", [build_layer("estargz", dict(FILES),
                                                          chunk_size=65536)])
    async with await _open(registry, tmp_path, first_byte_timeout=0.5,
                           read_deadline=20.0) as image:
        assert await image.read(image.index.resolve("/f1"), 0, 100) == FILES["f1"][:100]

        def asked_registry() -> int:
            return sum(registry.count(k, host=registry.host) for k in ("range", "multirange"))

        before = asked_registry()
        registry.fault(action, kind=("range", "multirange"), host=registry.storage_host,
                       seconds=600)
        with trio.fail_after(10):
            assert await image.read(image.index.resolve("/f6"), 0, 5000) == FILES["f6"][:5000]
        assert image.reader.layers[0].stats.retries == 1
        assert asked_registry() == before + 1, "the retry went to the old redirect target"

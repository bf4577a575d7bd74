"""What loads under way hold is bounded, however many reads run at once:
128 concurrent reads of distinct pieces through a 1 MiB ``InFlight``."""

from __future__ import annotations

import random

import trio

from lazyfs.image import OpenOptions, open_image_async
from lazyfs.read.memory import InFlight
from lazyfs.store.blobs import Store
from lazyfs.testing import MemoryRegistry, build_layer

rng = random.Random(6)
FILES = {f"f{i}": rng.randbytes(100_000) for i in range(128)}


async def test_concurrent_reads_hold_no_more_than_the_in_flight_budget(tmp_path):
    registry = MemoryRegistry()
    pushed = registry.push_image("library/app", "v1",
                                 [build_layer("estargz", dict(FILES), chunk_size=64 << 10)])
    options = OpenOptions(registry=registry.options())
    async with open_image_async(pushed.ref, options, Store(tmp_path)) as image:
        budget = image.reader.in_flight = InFlight(1 << 20)

        async def read(name: str) -> None:
            node = image.index.resolve("/" + name)
            assert await image.read(node, 0, node.size) == FILES[name]

        async with trio.open_nursery() as nursery:
            for name in FILES:
                nursery.start_soon(read, name)
    assert 0 < budget.peak <= 1 << 20
    assert budget.used == 0

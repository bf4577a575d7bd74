"""Random reads of a gzip layer fetch each span of it about once.

The layer is indexed, its blob removed from the store (as on a machine that
has the index but not the layer), and read at random offsets with a memory
cache far smaller than the layer, as a large image is: what the registry
sends is counted against the layer's size."""

from __future__ import annotations

import random

import trio

from lazyfs.image import OpenOptions, open_image_async
from lazyfs.read.memory import Memory
from lazyfs.store.blobs import Store
from lazyfs.testing import MemoryRegistry, build_layer
from tests.support.text import words

rng = random.Random(19)
FILES = {f"d/{i}": words(rng, 2 << 20) for i in range(6)}


async def test_random_reads_fetch_each_span_about_once(tmp_path):
    registry = MemoryRegistry()
    layer = build_layer("gzip", {"d/": None, **FILES})
    pushed = registry.push_image("library/app", "v1", [layer])
    store = Store(tmp_path)
    options = OpenOptions(registry=registry.options())
    async with open_image_async(pushed.ref, options, store) as image:
        pass
    store.blob_path(layer.digest).unlink()
    registry.requests.clear()
    reads = [(name, rng.randrange(len(data) - 4096)) for name, data in FILES.items()
             for _ in range(50)]
    rng.shuffle(reads)
    async with open_image_async(pushed.ref, options, store) as image:
        image.reader.memory = Memory(2 << 20)
        image.reader.nursery = None  # no readahead: every byte fetched is for a read

        async def read(name: str, offset: int) -> None:
            node = image.index.resolve("/" + name)
            assert await image.read(node, offset, 4096) == FILES[name][offset:offset + 4096]

        for i in range(0, len(reads), 8):
            async with trio.open_nursery() as nursery:
                for name, offset in reads[i:i + 8]:
                    nursery.start_soon(read, name, offset)
    fetched = sum(registry.bytes_sent(k) for k in ("range", "multirange"))
    size = len(layer.blob)
    print(f"random reads fetched {fetched / size:.2f}x the layer")
    assert fetched <= 1.15 * size, f"fetched {fetched / size:.2f}x the layer's {size} bytes"

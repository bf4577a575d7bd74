"""A layer still streaming is read through the same interface as any other.

Its ``StreamingContent`` holds a read back until the layer is indexed (and
verified), then hands it to the layer's ordinary content; a failure reaches
every waiting read.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from lazyfs.errors import DigestMismatch
from lazyfs.formats import LayerTable
from lazyfs.formats.spans import LOCATOR as _LOC
from lazyfs.manifest import Descriptor
from lazyfs.read.content import StreamingContent
from lazyfs.read.streaming import LayerStream
from lazyfs.store.blobs import Store

LOCATOR = _LOC.pack(0, 10)


class Ordinary:
    """The layer's content once it is indexed."""

    def __init__(self):
        self.reads = []

    async def read(self, data: bytes, offset: int, size: int) -> bytes:
        self.reads.append((data, offset, size))
        return b"x" * size


@pytest.fixture
def stream(tmp_path):
    desc = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", "sha256:" + "a" * 64, 100)
    return LayerStream(desc, Store(tmp_path / "store"))


@pytest.mark.parametrize("early", [False, True])
async def test_a_read_waits_for_the_layer_then_reads_the_ordinary_way(stream, early):
    then = Ordinary()
    content = StreamingContent(stream, then, early=early)
    got = []

    async def read():
        got.append(await content.read(LOCATOR, 2, 4))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        assert got == [] and then.reads == []
        stream.settle(LayerTable("gzip", True))
    assert got == [b"xxxx"] and then.reads == [(LOCATOR, 2, 4)]
    assert await content.read(LOCATOR, 0, 1) == b"x", "no waiting once indexed"


@pytest.mark.parametrize("early", [False, True])
async def test_a_failed_layer_fails_every_waiting_read(stream, early):
    content = StreamingContent(stream, Ordinary(), early=early)
    failures = []

    async def read():
        try:
            await content.read(LOCATOR, 0, 4)
        except DigestMismatch as e:
            failures.append(e)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        stream.fail(DigestMismatch("layer: digest differs"))
    assert len(failures) == 2
    with pytest.raises(DigestMismatch):
        await content.read(LOCATOR, 0, 4)

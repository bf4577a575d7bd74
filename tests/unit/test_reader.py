"""The read path: real layers (tar, gzip, multi-frame zstd) read through a
``Reader`` whose blob is served from memory by a source that counts requests
and fails or corrupts answers on demand."""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import tarfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.testing
import zstandard

from lazyfs.blob import FileBlob
from lazyfs.errors import LazyfsError, RegistryError, UnsafeEntry
from lazyfs.formats import format_named
from lazyfs.formats.entry import Entry
from lazyfs.read import reader as reader_module
from lazyfs.read.memory import PIECE_MAX, Memory
from lazyfs.read.reader import FETCH_ATTEMPTS, Layer, Reader
from lazyfs.store.chunks import ChunkCache
from tests.support.text import words

FORMATS = ["tar", "gzip", "zstd"]


def _files() -> dict[str, bytes]:
    rng = random.Random(7)
    files = {"big.txt": words(rng, 9 << 20), "noise.bin": rng.randbytes(1_500_000)}
    for i in range(8):
        files[f"small{i}"] = words(rng, 2_000 + 97 * i)
    return files


FILES = _files()


def _tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in FILES.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _zstd_frames(data: bytes, frame: int = 1 << 20) -> bytes:
    c = zstandard.ZstdCompressor(level=3)
    return b"".join(c.compress(data[i:i + frame]) for i in range(0, len(data), frame))


@dataclass
class Built:
    blob: bytes
    digest: str
    content: object
    entries: dict[str, Entry]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Built]:
    tar = _tar()
    blobs = {"tar": tar, "gzip": _gzip(tar), "zstd": _zstd_frames(tar)}
    out = {}
    for name, blob in blobs.items():
        path = tmp_path_factory.mktemp(name) / "blob"
        path.write_bytes(blob)
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        fmt = format_named(name)
        table = fmt.build_from_file(path, digest)
        assert table.lazy
        out[name] = Built(blob, digest, fmt.reader(table), {e.name: e for e in table.entries})
    return out


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


@dataclass
class Source:
    """A blob in memory standing in for the registry: counts requests, and
    fails, corrupts or holds answers when told to."""

    data: bytes
    digest: str
    fail: int = 0
    corrupt: int = 0
    gate: trio.Event | None = None
    requests: int = 0
    spans: list[tuple[int, int]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.data)

    def local_path(self) -> Path | None:
        return None

    async def path(self) -> Path:
        raise LazyfsError("not a local blob")

    async def read_range(self, start: int, end: int) -> bytes:
        parts, _ = await self.read_ranges([(start, end)])
        return parts[0]

    async def read_ranges(self, spans: list[tuple[int, int]]) -> tuple[list[bytes], int]:
        self.requests += 1
        self.spans += spans
        if self.gate is not None:
            await self.gate.wait()
        await trio.sleep(0)
        if self.fail:
            self.fail -= 1
            raise RegistryError("HTTP 500 from the test source")
        parts = [self.data[s:e] for s, e in spans]
        if self.corrupt:
            self.corrupt -= 1
            parts = [bytes([p[0] ^ 1]) + p[1:] for p in parts]
        return parts, 1


def make_reader(b: Built, root: Path | None = None, **kw) -> tuple[Reader, Source]:
    source = Source(b.blob, b.digest)
    layer = Layer(b.digest, b.content, source)
    return Reader([layer], ChunkCache(root, limit=1 << 40), **kw), source


async def read(reader: Reader, b: Built, name: str, offset: int, size: int) -> bytes:
    return await reader.read(0, b.entries[name].data, offset, size)


def expect(name: str, offset: int, size: int) -> bytes:
    return FILES[name][offset:offset + size]


async def together(reader: Reader, b: Built, source: Source, n: int, name: str,
                   offset: int, size: int) -> list[bytes | LazyfsError]:
    """``n`` identical reads started together: the source answers none
    before all of them wait for it. Each read's bytes or error."""
    source.gate = trio.Event()
    out: list[bytes | LazyfsError] = []

    async def one():
        try:
            out.append(await read(reader, b, name, offset, size))
        except LazyfsError as e:
            out.append(e)

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
        await trio.testing.wait_all_tasks_blocked()
        source.gate.set()
    return out


@pytest.fixture(autouse=True)
def no_retry_delay(monkeypatch):
    monkeypatch.setattr(reader_module, "RETRY_DELAY", 0.0)


# --- bytes ---------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_random_reads_return_the_source_bytes(built, fmt, tmp_path):
    b = built[fmt]
    rng = random.Random(fmt)
    reads = []
    for _ in range(150):
        name = rng.choice(sorted(FILES))
        n = len(FILES[name])
        offset = rng.randrange(0, n + 10)
        reads.append((name, offset, rng.choice([1, 100, 4096, 131072, 1 << 20])))

    async def main():
        reader, _ = make_reader(b, tmp_path / "chunks")
        for name, offset, size in reads:
            assert await read(reader, b, name, offset, size) == expect(name, offset, size)
        fresh, source = make_reader(b, tmp_path / "chunks")
        for name, offset, size in reads:
            assert await read(fresh, b, name, offset, size) == expect(name, offset, size)
        assert source.requests == 0

    trio.run(main)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_sequential_read_fetches_each_byte_once(built, fmt):
    """128 KiB reads in order, readahead on: every span is fetched once and
    every piece decoded once, then served from memory."""
    b = built[fmt]
    size = len(FILES["big.txt"])

    async def main():
        async with trio.open_nursery() as nursery:
            reader, source = make_reader(b, nursery=nursery)
            out = []
            for off in range(0, size, 128 << 10):
                out.append(await read(reader, b, "big.txt", off, 128 << 10))
                await trio.sleep(0)
        assert b"".join(out) == FILES["big.txt"]
        assert len(source.spans) == len(set(source.spans))
        assert sum(e - s for s, e in source.spans) <= len(b.blob)
        assert reader.layers[0].stats.readahead_pieces > 0

    trio.run(main)


def test_reads_arriving_slightly_out_of_order_are_still_sequential(built, tmp_path):
    """The kernel sends readahead reads a few at a time and they may arrive
    swapped: such a stream (here over a warm chunk cache) still gets
    readahead."""
    b = built["tar"]
    size = len(FILES["big.txt"])
    step = 128 << 10
    offsets = [off + d for off in range(0, size - step, 2 * step) for d in (step, 0)]

    async def main():
        first, _ = make_reader(b, tmp_path / "chunks")
        for off in range(0, size, step):
            await read(first, b, "big.txt", off, step)
        async with trio.open_nursery() as nursery:
            reader, source = make_reader(b, tmp_path / "chunks", nursery=nursery)
            for off in offsets:
                assert await read(reader, b, "big.txt", off, step) == expect("big.txt", off, step)
                await trio.sleep(0)
        assert source.requests == 0 and reader.layers[0].stats.readahead_pieces > 0

    trio.run(main)


# --- sharing -------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("fail", [0, 1])
def test_concurrent_readers_of_one_piece_share_each_fetch(built, fmt, fail):
    """Ten readers of one piece make one fetch; when it fails, it wakes its
    waiters, who retry with one fetch more between them."""
    b = built[fmt]

    async def main():
        reader, source = make_reader(b)
        source.fail = fail
        got = await together(reader, b, source, 10, "noise.bin", 300_000, 5000)
        assert got == [expect("noise.bin", 300_000, 5000)] * 10
        assert source.requests == 1 + fail
        stats = reader.layers[0].stats
        assert stats.failed_reads == 0 and stats.misses + stats.shared == 10
        if not fail:
            assert (stats.misses, stats.shared) == (1, 9)

    trio.run(main)


def test_two_pieces_of_one_gzip_span_fetch_it_once(built):
    """A shallow read and a deep one of the same span at once: one piece,
    whose compressed span is fetched once."""
    b = built["gzip"]
    (shallow,) = b.content.pieces(b.entries["big.txt"].data, 0, 100)
    (deep,) = b.content.pieces(b.entries["big.txt"].data, 1_800_000, 100)
    assert shallow.key == deep.key

    async def main():
        reader, source = make_reader(b)
        source.gate = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, reader, b, "big.txt", 0, 100)
            nursery.start_soon(read, reader, b, "big.txt", 1_800_000, 100)
            await trio.testing.wait_all_tasks_blocked()
            source.gate.set()
        assert source.requests == 1
        assert await read(reader, b, "big.txt", 1_800_000, 100) == expect("big.txt", 1_800_000, 100)
        assert source.requests == 1

    trio.run(main)


def test_a_cancelled_owner_leaves_its_waiters_a_fetch_of_their_own(built):
    b = built["tar"]

    async def main():
        reader, source = make_reader(b)
        source.gate = trio.Event()
        scope = trio.CancelScope()
        got = []

        async def owner():
            with scope:
                await read(reader, b, "small3", 0, 100)

        async def waiter():
            got.append(await read(reader, b, "small3", 0, 100))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(owner)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            source.gate.set()
        assert scope.cancelled_caught
        assert got == [expect("small3", 0, 100)]
        assert source.requests == 2
        assert reader.layers[0].stats.retries == 0

    trio.run(main)


# --- faults --------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_a_corrupted_answer_is_retried_and_never_returned(built, fmt, tmp_path):
    b = built[fmt]

    async def main():
        reader, source = make_reader(b, tmp_path / "chunks")
        source.corrupt = 1
        assert await read(reader, b, "noise.bin", 10, 3000) == expect("noise.bin", 10, 3000)
        stats = reader.layers[0].stats
        assert source.requests == 2 and stats.verify_failures == 1 and stats.retries == 1

        source.corrupt = 99
        with pytest.raises(LazyfsError):
            await read(reader, b, "big.txt", 8 << 20, 3000)
        assert source.requests == 2 + FETCH_ATTEMPTS
        assert stats.failed_reads == 1 and stats.verify_failures == 1 + FETCH_ATTEMPTS
        source.corrupt = 0
        assert await read(reader, b, "big.txt", 8 << 20, 3000) == expect("big.txt", 8 << 20, 3000)

    trio.run(main)
    fresh, source = make_reader(b, tmp_path / "chunks")
    source.fail = 99

    async def cached():
        assert await read(fresh, b, "noise.bin", 10, 3000) == expect("noise.bin", 10, 3000)
        assert await read(fresh, b, "big.txt", 8 << 20, 3000) == expect("big.txt", 8 << 20, 3000)

    trio.run(cached)
    assert source.requests == 0 and fresh.cache.corrupt == 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_retry_budget_bounds_the_fetches_of_a_failing_read(built, fmt):
    b = built[fmt]

    async def main():
        reader, source = make_reader(b)
        source.fail = 99
        with pytest.raises(RegistryError):
            await read(reader, b, "small1", 0, 100)
        assert source.requests == FETCH_ATTEMPTS
        stats = reader.layers[0].stats
        assert stats.retries == FETCH_ATTEMPTS - 1 and stats.failed_reads == 1

        source.requests = 0
        errors = await together(reader, b, source, 5, "small2", 0, 100)
        assert all(isinstance(e, RegistryError) for e in errors)
        assert len(errors) == 5 and len({id(e) for e in errors}) == 5
        assert source.requests == FETCH_ATTEMPTS

    trio.run(main)


def test_an_error_that_no_retry_can_cure_fails_at_once(built):
    b = built["tar"]

    async def main():
        reader, source = make_reader(b)

        async def refuse(spans):
            source.requests += 1
            raise UnsafeEntry("refused")

        source.read_ranges = refuse
        with pytest.raises(UnsafeEntry):
            await read(reader, b, "small1", 0, 100)
        assert source.requests == 1

    trio.run(main)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_piece_damaged_on_disk_is_deleted_and_fetched_again(built, fmt, tmp_path):
    b = built[fmt]
    root = tmp_path / "chunks"

    async def main():
        reader, _ = make_reader(b, root)
        assert await read(reader, b, "small4", 0, 500) == expect("small4", 0, 500)
        (path,) = [p for p in root.rglob("*") if p.is_file()]
        damaged = bytearray(path.read_bytes())
        damaged[-1] ^= 0xFF
        path.write_bytes(bytes(damaged))

        fresh, source = make_reader(b, root)
        assert await read(fresh, b, "small4", 0, 500) == expect("small4", 0, 500)
        assert fresh.cache.corrupt == 1 and source.requests == 1
        assert ChunkCache(root).load(b.digest, b.content.pieces(b.entries["small4"].data, 0, 500)[0])

    trio.run(main)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_fetched_piece_is_answered_before_it_is_written_and_counted_until_then(
        built, fmt, tmp_path):
    b = built[fmt]
    root = tmp_path / "chunks"
    written = threading.Event()

    async def main():
        async with trio.open_nursery() as nursery:
            reader, source = make_reader(b, root, nursery=nursery)
            store = reader.cache.store

            def slow_store(*args):
                written.wait(10)
                return store(*args)

            reader.cache.store = slow_store
            assert await read(reader, b, "small4", 0, 500) == expect("small4", 0, 500)
            assert not [p for p in root.rglob("*") if p.is_file()], "answered before written"
            assert reader.in_flight.used > 0, "the unwritten piece still counts"
            assert await read(reader, b, "small4", 100, 300) == expect("small4", 100, 300)
            assert source.requests == 1
            written.set()
            await reader.written()
            assert reader.in_flight.used == 0 and [p for p in root.rglob("*") if p.is_file()]
        fresh, again = make_reader(b, root)
        assert await read(fresh, b, "small4", 0, 500) == expect("small4", 0, 500)
        assert again.requests == 0

    trio.run(main)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_write_behind_that_fails_or_cannot_start_leaves_the_reads_and_the_image(
        built, fmt, tmp_path):
    b = built[fmt]

    async def main():
        async with trio.open_nursery() as nursery:
            reader, source = make_reader(b, tmp_path / "a", nursery=nursery)

            def broken(*args):
                raise FileNotFoundError("the layer's directory went with an eviction")

            reader.cache.store = broken
            assert await read(reader, b, "small4", 0, 500) == expect("small4", 0, 500)
            await reader.written()
            assert reader.in_flight.used == 0
            assert await read(reader, b, "small4", 0, 500) == expect("small4", 0, 500)
        closed, _ = make_reader(b, tmp_path / "b", nursery=nursery)  # the image is closing
        assert await read(closed, b, "small5", 0, 500) == expect("small5", 0, 500)
        assert [p for p in (tmp_path / "b").rglob("*") if p.is_file()], "written in the read"
        assert closed.in_flight.used == 0

    trio.run(main)


# --- each cached piece loaded once -----------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_warm_reads_open_each_cached_piece_once(built, fmt, tmp_path):
    b = built[fmt]
    root = tmp_path / "chunks"
    offset, size = 200_000, 4096

    async def main():
        first, _ = make_reader(b, root)
        await read(first, b, "big.txt", offset, size)

        fresh, source = make_reader(b, root)
        got = []

        async def one():
            got.append(await read(fresh, b, "big.txt", offset, size))

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(one)
        for _ in range(10):
            got.append(await read(fresh, b, "big.txt", offset, size))
        assert got == [expect("big.txt", offset, size)] * 20
        assert fresh.cache.loads == 1 and source.requests == 0
        assert fresh.layers[0].stats.hits == 20

    trio.run(main)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_warm_sequential_read_opens_each_piece_once(built, fmt, tmp_path):
    b = built[fmt]
    root = tmp_path / "chunks"
    data = b.entries["big.txt"].data
    size = len(FILES["big.txt"])

    offsets = range(0, size, 128 << 10)
    pieces = {p.key for off in offsets for p in b.content.pieces(data, off, 128 << 10)}

    async def main():
        first, _ = make_reader(b, root)
        for off in offsets:
            await read(first, b, "big.txt", off, 128 << 10)

        fresh, source = make_reader(b, root)
        out = [await read(fresh, b, "big.txt", off, 128 << 10) for off in offsets]
        assert b"".join(out) == FILES["big.txt"]
        assert source.requests == 0 and fresh.cache.loads == len(pieces)

    trio.run(main)


# --- coalescing ------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_warming_many_small_files_takes_one_request(built, fmt):
    b = built[fmt]
    names = [f"small{i}" for i in range(8)]

    async def main():
        reader, source = make_reader(b)
        await reader.warm([(0, b.entries[n].data, 0, len(FILES[n])) for n in names])
        assert source.requests == 1
        before = list(source.spans)
        assert [await read(reader, b, n, 0, len(FILES[n])) for n in names] == [FILES[n] for n in names]
        assert source.requests == 1 and source.spans == before

    trio.run(main)


def test_nearby_pieces_are_fetched_as_one_span(built):
    b = built["tar"]
    data = b.entries["big.txt"].data

    async def main():
        reader, source = make_reader(b)
        assert await reader.read(0, data, 0, 3 << 20) == expect("big.txt", 0, 3 << 20)
        assert source.requests == 1 and len(source.spans) == 1

    trio.run(main)


# --- memory ----------------------------------------------------------------------------

def test_memory_is_bounded_by_bytes_and_keeps_the_largest_pieces():
    m = Memory(10 << 20)
    m.put("a", b"a" * PIECE_MAX)
    m.put("b", b"b" * PIECE_MAX)
    assert m.get("a") is not None and m.nbytes == 2 * PIECE_MAX
    m.put("c", b"c" * PIECE_MAX)
    assert m.get("b") is None and m.get("a") is not None and m.get("c") is not None
    assert m.nbytes <= m.budget
    m.put("huge", b"h" * (m.item_max + 1))
    assert m.get("huge") is None
    m.discard("a")
    assert m.get("a") is None and m.nbytes == PIECE_MAX
    assert Memory().item_max >= PIECE_MAX


def test_read_local_serves_a_blob_on_local_disk(built, tmp_path):
    b = built["gzip"]
    path = tmp_path / "blob"
    path.write_bytes(b.blob)
    blob = FileBlob(path, b.digest)
    reader = Reader([Layer(b.digest, b.content, blob)], ChunkCache(None))
    trio.run(blob.path)
    data = b.entries["big.txt"].data
    assert reader.read_local(0, data, 3 << 20, 50_000) == expect("big.txt", 3 << 20, 50_000)
    assert trio.run(reader.read, 0, data, 5 << 20, 10) == expect("big.txt", 5 << 20, 10)

"""Pieces on disk are served from their open files, each read checking the
blocks it takes: warm reads hold no piece in memory, a damaged block is found
by the read that touches it, and many readers of big files stay within the
reader's memory bounds."""

from __future__ import annotations

import os
import tracemalloc

import pytest
import trio

from lazyfs.formats import Piece
from lazyfs.read.memory import InFlight, Memory
from lazyfs.store.chunks import ChunkCache
from lazyfs.store.piecefile import BLOCK, Damaged, PieceFile, header_size
from tests.unit.test_reader import FILES, built, expect, make_reader, read  # noqa: F401

A = "sha256:" + "a" * 64
READ = 128 << 10


def _piece(size: int) -> Piece:
    return Piece(0, size, "raw", b"p", 0, size, 0)


def test_a_piece_file_checks_only_the_blocks_a_read_takes(tmp_path):
    data = os.urandom(5 * BLOCK + 123)
    cache = ChunkCache(tmp_path)
    f = cache.store(A, _piece(len(data)), data)
    assert isinstance(f, PieceFile) and len(f) == len(data)
    assert f[BLOCK - 10:3 * BLOCK + 7] == data[BLOCK - 10:3 * BLOCK + 7]
    assert f[5 * BLOCK:] == data[5 * BLOCK:]
    assert f.read(len(data) - 1, len(data) + 100) == data[-1:]
    path = cache.path(A, _piece(len(data)))
    assert path.stat().st_size == header_size(len(data)) + len(data)
    with open(path, "r+b") as raw:
        raw.seek(header_size(len(data)) + 4 * BLOCK + 1)
        raw.write(bytes([data[4 * BLOCK + 1] ^ 1]))
    again = cache.open(A, _piece(len(data)))
    assert again[:4 * BLOCK] == data[:4 * BLOCK]
    with pytest.raises(Damaged):
        again[4 * BLOCK:4 * BLOCK + 10]
    assert again.damaged


def test_a_block_moved_inside_a_piece_file_is_damage(tmp_path):
    data = os.urandom(2 * BLOCK)
    cache = ChunkCache(tmp_path)
    cache.store(A, _piece(len(data)), data)
    path = cache.path(A, _piece(len(data)))
    raw = bytearray(path.read_bytes())
    base = header_size(len(data))
    raw[base:base + BLOCK], raw[base + BLOCK:] = raw[base + BLOCK:], raw[base:base + BLOCK]
    path.write_bytes(bytes(raw))
    with pytest.raises(Damaged):
        cache.open(A, _piece(len(data)))[:10]


@pytest.mark.parametrize("fmt", ["tar", "gzip"])
def test_a_damaged_block_is_found_by_the_read_that_touches_it(built, fmt, tmp_path):  # noqa: F811
    b = built[fmt]
    root = tmp_path / "chunks"
    offset = 300_000

    async def main():
        first, _ = make_reader(b, root)
        assert await read(first, b, "big.txt", 0, 600_000) == expect("big.txt", 0, 600_000)
        (piece,) = b.content.pieces(b.entries["big.txt"].data, offset, 1)
        path = first.cache.path(b.digest, piece)
        spot = header_size(piece.skip + piece.length) + piece.skip + offset - piece.content_offset
        raw = bytearray(path.read_bytes())
        raw[spot] ^= 0x40
        path.write_bytes(bytes(raw))

        fresh, source = make_reader(b, root)
        assert await read(fresh, b, "big.txt", 0, READ) == expect("big.txt", 0, READ)
        assert source.requests == 0 and fresh.cache.corrupt == 0
        assert await read(fresh, b, "big.txt", offset, READ) == expect("big.txt", offset, READ)
        assert source.requests == 1 and fresh.cache.corrupt == 1
        assert await read(fresh, b, "big.txt", offset, READ) == expect("big.txt", offset, READ)
        assert source.requests == 1
        assert ChunkCache(root).load(b.digest, piece) is not None

    trio.run(main)


@pytest.mark.parametrize("fmt", ["tar", "gzip", "zstd"])
def test_many_warm_readers_share_one_open_file_per_piece_and_hold_no_memory(
        built, fmt, tmp_path):  # noqa: F811
    b = built[fmt]
    root = tmp_path / "chunks"
    data = b.entries["big.txt"].data
    size = len(FILES["big.txt"])
    offsets = list(range(0, size, READ))
    pieces = {p.key for off in offsets for p in b.content.pieces(data, off, READ)}

    async def main():
        first, _ = make_reader(b, root)
        for off in offsets:
            await read(first, b, "big.txt", off, READ)
        assert first.memory.nbytes == 0 and len(first.files) == len(pieces)

        fresh, source = make_reader(b, root)
        wrong = []

        async def reader(k: int) -> None:
            for off in offsets[k:] + offsets[:k]:
                if await read(fresh, b, "big.txt", off, READ) != expect("big.txt", off, READ):
                    wrong.append(off)

        async with trio.open_nursery() as nursery:
            for k in range(24):
                nursery.start_soon(reader, k)
        assert not wrong
        assert source.requests == 0 and fresh.cache.loads == len(pieces)
        assert fresh.memory.nbytes == 0 and fresh.in_flight.peak == 0

    trio.run(main)


@pytest.mark.parametrize("fmt", ["tar", "gzip"])
def test_many_cold_readers_of_a_big_file_stay_within_the_memory_bounds(
        built, fmt, tmp_path):  # noqa: F811
    """24 readers of the 9 MiB file at once, each from its own place, with
    the chunk cache on disk: the heap grows by no more than what the reader's
    bounds allow (in flight, memory) plus the reads' own answers."""
    b = built[fmt]
    data = b.entries["big.txt"].data
    size = len(FILES["big.txt"])
    offsets = list(range(0, size, READ))
    limit, budget = 4 << 20, 1 << 20

    async def main():
        reader, source = make_reader(b, tmp_path / "chunks", memory_bytes=budget)
        reader.in_flight = InFlight(limit)
        wrong = []

        async def one(k: int) -> None:
            for off in offsets[k * 3:] + offsets[:k * 3]:
                if await read(reader, b, "big.txt", off, READ) != expect("big.txt", off, READ):
                    wrong.append(off)

        tracemalloc.start()
        try:
            async with trio.open_nursery() as nursery:
                for k in range(24):
                    nursery.start_soon(one, k)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert not wrong
        assert reader.in_flight.peak <= limit and reader.in_flight.used == 0
        assert reader.memory.nbytes <= budget and not reader._storing
        print(f"{fmt}: heap peak {peak / 2**20:.1f} MiB, requests {source.requests}")
        assert peak <= limit + budget + 24 * 2 * READ + (2 << 20)

    trio.run(main)

"""``warm-read``: the reader alone, no registry and no FUSE, reading a big
file whose pieces are all in the chunk cache on disk, as a second mount does.

Reads are 128 KiB, as FUSE sends them: one reader in order, then four
interleaved (as the kernel's readahead issues them). Each piece file should
be opened once per read-through (``disk loads`` = pieces), whatever the
number of reads that touch it; the rest is decoding nothing and slicing.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path

import trio
import zstandard

from lazyfs.formats import format_named
from lazyfs.read.reader import Layer, Reader
from lazyfs.store.chunks import ChunkCache

from .common import Run, log
from .synthetic import big_file_tar, cached_blobs

READ = 128 << 10
STREAMS = 4


class _Blob:
    """The layer in memory: a warm read must not ask it for anything."""

    def __init__(self, data: bytes, digest: str):
        self.data, self.digest, self.size, self.requests = data, digest, len(data), 0

    def local_path(self) -> None:
        return None

    async def read_range(self, start: int, end: int) -> bytes:
        self.requests += 1
        return self.data[start:end]


def run(quick: bool) -> Run:
    res = Run("warm-read", quick)
    size = (32 if quick else 200) << 20
    tar, gz = cached_blobs(f"bigfile-{size >> 20}m", lambda: big_file_tar(size))
    blobs = {"tar": tar, "gzip": gz, "zstd": _zstd_frames(tar)}
    with tempfile.TemporaryDirectory(prefix="lazyfs-bench-") as tmp:
        for fmt, blob in blobs.items():
            log(f"warm-read: {fmt}")
            _measure(res, fmt, blob, Path(tmp))
    res.table(f"Warm reads of a {size >> 20} MiB file in {READ >> 10} KiB reads", res.rows, [
        ("format", "format"), ("pattern", "reads"), ("wall_s", "wall s"), ("cpu_s", "CPU s"),
        ("pieces", "pieces"), ("disk_loads", "disk loads"), ("requests", "requests")])
    print(res.tables[-1], flush=True)
    res.save()
    return res


def _measure(res: Run, fmt: str, blob: bytes, tmp: Path) -> None:
    path = tmp / f"{fmt}.blob"
    path.write_bytes(blob)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    table = format_named(fmt).build_from_file(path, digest)
    content = format_named(fmt).reader(table)
    entry = max(table.entries, key=lambda e: e.size)
    root = tmp / f"{fmt}.chunks"

    def fresh() -> tuple[Reader, _Blob]:
        source = _Blob(blob, digest)
        return Reader([Layer(digest, content, source)], ChunkCache(root, limit=1 << 40)), source

    trio.run(_sequential, fresh()[0], entry)
    pieces = {p.key for off in range(0, entry.size, READ)
              for p in content.pieces(entry.data, off, READ)}
    for pattern, reads in (("sequential", _sequential), (f"{STREAMS} interleaved", _interleaved)):
        reader, source = fresh()
        wall, cpu = time.perf_counter(), time.process_time()
        trio.run(reads, reader, entry)
        res.add(format=fmt, pattern=pattern, wall_s=round(time.perf_counter() - wall, 3),
                cpu_s=round(time.process_time() - cpu, 3), pieces=len(pieces),
                disk_loads=reader.cache.loads, requests=source.requests)


async def _sequential(reader: Reader, entry) -> None:
    for off in range(0, entry.size, READ):
        await reader.read(0, entry.data, off, READ)


async def _interleaved(reader: Reader, entry) -> None:
    async def stream(first: int) -> None:
        for off in range(first * READ, entry.size, STREAMS * READ):
            await reader.read(0, entry.data, off, READ)

    async with trio.open_nursery() as nursery:
        for k in range(STREAMS):
            nursery.start_soon(stream, k)


def _zstd_frames(tar: bytes, frame: int = 4 << 20) -> bytes:
    c = zstandard.ZstdCompressor(level=3)
    return b"".join(c.compress(tar[i:i + frame]) for i in range(0, len(tar), frame))

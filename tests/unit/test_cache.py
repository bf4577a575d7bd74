import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lazyfs.store.chunks import (DEFAULT_CACHE_SIZE, ChunkCache, Lease, cache_size_limit, parse_size,
                          prune_chunks)
from lazyfs.errors import UsageError
from lazyfs.read.memory import Memory
from lazyfs.formats import Piece
from lazyfs.store.blobs import Store

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64


def piece(i: int, size: int = 1000) -> Piece:
    return Piece(i * size, (i + 1) * size, "raw", i.to_bytes(4, "little"), 0, size, i * size)


def data(i: int, size: int = 1000) -> bytes:
    return bytes([i % 251]) * size


def pieces_on_disk(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.parent.parent.parent.parent == root]


def test_parse_size():
    assert parse_size("4096") == 4096
    assert parse_size("500M") == 500 << 20
    assert parse_size("10G") == 10 << 30
    assert parse_size("1.5GiB") == int(1.5 * (1 << 30))
    assert parse_size("64k") == 64 << 10
    for bad in ("", "ten", "5X", "-1G"):
        with pytest.raises(UsageError):
            parse_size(bad)


def test_size_limit_from_environment_or_file_system(tmp_path, monkeypatch):
    monkeypatch.setenv("LAZYFS_CACHE_SIZE", "3M")
    assert cache_size_limit(tmp_path) == 3 << 20
    assert ChunkCache(tmp_path / "chunks").limit == 3 << 20
    monkeypatch.delenv("LAZYFS_CACHE_SIZE")
    st = os.statvfs(tmp_path)
    assert cache_size_limit(tmp_path / "not" / "yet") == min(
        DEFAULT_CACHE_SIZE, int(st.f_blocks * st.f_frsize * 0.10))


def test_a_size_larger_than_the_file_system_is_clamped_with_one_warning(tmp_path, monkeypatch,
                                                                         caplog):
    monkeypatch.setenv("LAZYFS_CACHE_SIZE", "1000T")
    st = os.statvfs(tmp_path)
    with caplog.at_level(logging.WARNING, logger="lazyfs.warning"):
        assert cache_size_limit(tmp_path) == st.f_blocks * st.f_frsize
        assert ChunkCache(tmp_path).limit == st.f_blocks * st.f_frsize
    warnings = [r.getMessage() for r in caplog.records if r.name == "lazyfs.warning"]
    assert len(warnings) == 1 and "1000T" in warnings[0] and str(tmp_path) in warnings[0]
    monkeypatch.setenv("LAZYFS_CACHE_SIZE", "1M")
    assert cache_size_limit(tmp_path) == 1 << 20


def test_pieces_round_trip_across_cache_objects(tmp_path):
    root = tmp_path / "chunks"
    ChunkCache(root).store(A, piece(1), data(1))
    other = ChunkCache(root)
    assert other.load(A, piece(1)) == data(1)
    assert other.load(A, piece(2)) is None
    assert other.load(B, piece(1)) is None
    assert other.loads == 1
    memory = Memory()
    memory.put((A, piece(1).key), other.load(A, piece(1)))
    assert memory.get((A, piece(1).key)) == data(1)
    assert memory.get((B, piece(1).key)) is None


@pytest.mark.parametrize("damage", ["truncate", "flip", "extend", "empty", "magic"])
def test_damaged_piece_files_are_detected_deleted_and_never_served(tmp_path, damage):
    cache = ChunkCache(tmp_path / "chunks")
    cache.store(A, piece(3), data(3))
    path = cache.path(A, piece(3))
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[:len(raw) - 100]
    elif damage == "flip":
        raw[-1] ^= 0x01
    elif damage == "extend":
        raw += b"\0"
    elif damage == "empty":
        raw = bytearray()
    else:
        raw[0:4] = b"XXXX"
    path.write_bytes(bytes(raw))
    fresh = ChunkCache(tmp_path / "chunks")
    assert fresh.load(A, piece(3)) is None
    assert fresh.corrupt == 1
    assert not path.exists()


def test_a_piece_file_of_the_older_format_is_refused(tmp_path):
    """Files written with the BLAKE2b header (``LZC1``) are fetched again."""
    import hashlib
    import struct
    cache = ChunkCache(tmp_path / "chunks")
    cache.store(A, piece(1), data(1))
    path = cache.path(A, piece(1))
    h = hashlib.blake2b(path.name.encode(), digest_size=32)
    h.update(data(1))
    path.write_bytes(struct.pack("<4sQ32s", b"LZC1", len(data(1)), h.digest()) + data(1))
    assert cache.load(A, piece(1)) is None and not path.exists()


def test_a_piece_file_under_another_name_is_refused(tmp_path):
    """The header binds the bytes to the piece they were stored for."""
    cache = ChunkCache(tmp_path / "chunks")
    cache.store(A, piece(1), data(1))
    target = cache.path(A, piece(2))
    target.write_bytes(cache.path(A, piece(1)).read_bytes())
    assert cache.load(A, piece(2)) is None
    assert cache.corrupt == 1


def test_size_limit_is_honoured_by_evicting_least_recently_used(tmp_path):
    root = tmp_path / "chunks"
    cache = ChunkCache(root, limit=20_000)
    now = time.time()
    for i in range(10):
        cache.store(A, piece(i), data(i))
        os.utime(cache.path(A, piece(i)), (now - 1000 + i, now - 1000 + i))
    # piece 0 is the oldest; a hit refreshes it (it is older than a minute).
    assert ChunkCache(root, limit=20_000).load(A, piece(0)) == data(0)
    for i in range(10, 20):
        cache.store(A, piece(i), data(i))
    total = sum(p.stat().st_size for p in pieces_on_disk(root))
    assert total <= 20_000
    kept = ChunkCache(root)
    assert kept.load(A, piece(0)) == data(0)
    assert kept.load(A, piece(1)) is None
    assert kept.load(A, piece(19)) == data(19)


def test_hits_touch_at_most_once_a_minute(tmp_path):
    cache = ChunkCache(tmp_path / "chunks")
    cache.store(A, piece(1), data(1))
    path = cache.path(A, piece(1))
    recent = time.time() - 30
    os.utime(path, (recent, recent))
    cache.load(A, piece(1))
    assert path.stat().st_mtime == pytest.approx(recent)
    old = time.time() - 300
    os.utime(path, (old, old))
    cache.load(A, piece(1))
    assert path.stat().st_mtime > time.time() - 5


LEASE_HOLDER = """
import sys, time
from pathlib import Path
from lazyfs.store.chunks import Lease
lease = Lease(Path(sys.argv[1]), [sys.argv[2]])
print("held", flush=True)
time.sleep(60)
"""


def test_layers_leased_by_a_live_process_are_not_evicted_and_stale_leases_are(tmp_path):
    root = tmp_path / "chunks"
    cache = ChunkCache(root, limit=10_000)
    for i in range(5):
        cache.store(B, piece(i), data(i))
    holder = subprocess.Popen([sys.executable, "-c", LEASE_HOLDER, str(root / "leases"), B],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert cache.leased() == {B}
        for i in range(5, 40):
            cache.store(A, piece(i), data(i))
        assert all(cache.load(B, piece(i)) == data(i) for i in range(5))
        assert prune_chunks(Store(tmp_path), all=True).files >= 1
        assert all(cache.load(B, piece(i)) == data(i) for i in range(5))
        assert not [p for p in pieces_on_disk(root) if A.split(":")[1] in str(p)]
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    # The holder died without cleaning up: its lease file remains but is stale.
    assert len(list((root / "leases").iterdir())) == 1
    assert cache.leased() == set()
    assert not list((root / "leases").iterdir())
    result = prune_chunks(Store(tmp_path), all=True)
    assert result.files == 5 and result.bytes_freed > 5000
    assert pieces_on_disk(root) == []


def test_leased_layers_go_last_but_the_limit_holds(tmp_path):
    """A mounted image's pieces are evicted after everyone else's, oldest
    first, rather than never: it can fetch them again, and a cache that kept
    every piece a mount read would have no limit at all."""
    root = tmp_path / "chunks"
    cache = ChunkCache(root, limit=5_000)
    size = len(data(0)) + 48
    with cache.lease([A]):
        for i in range(3):
            cache.store(A, piece(i), data(i))
        for i in range(3, 5):
            cache.store(B, piece(i), data(i))
        assert all(cache.load(A, piece(i)) == data(i) for i in range(3))
        assert cache.load(B, piece(3)) is None and cache.load(B, piece(4)) == data(4)
        for i in range(5, 20):
            cache.store(A, piece(i), data(i))
            assert sum(p.stat().st_size for p in pieces_on_disk(root)) <= 5_000 + size
        assert cache.load(B, piece(4)) is None and cache.load(A, piece(0)) is None
        assert cache.load(A, piece(19)) == data(19)
    assert cache.evict(target=0).files >= 1
    assert pieces_on_disk(root) == []


def test_prune_without_all_keeps_the_cache_under_its_limit(tmp_path, monkeypatch):
    root = tmp_path / "chunks"
    cache = ChunkCache(root, limit=10 ** 9)
    for i in range(10):
        cache.store(A, piece(i), data(i))
    monkeypatch.setenv("LAZYFS_CACHE_SIZE", "5000")
    r = prune_chunks(Store(tmp_path))
    assert r.files >= 5
    assert sum(p.stat().st_size for p in pieces_on_disk(root)) <= 5000


WRITER = """
import sys
from pathlib import Path
from lazyfs.store.chunks import ChunkCache
from lazyfs.formats import Piece
cache = ChunkCache(Path(sys.argv[1]), limit=1 << 40)
blob = bytes(range(256)) * (1 << 16)   # 16 MiB
i = 0
while True:
    cache.store("sha256:" + "c" * 64, Piece(i, i + 1, "raw", b"", 0, len(blob), 0), blob)
    i += 1
"""


def test_a_writer_killed_mid_piece_leaves_nothing_trusted(tmp_path):
    root = tmp_path / "chunks"
    layer_dir = root / "sha256" / "cc" / ("c" * 64)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root)])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            tmps = [p for p in layer_dir.glob(".*.tmp")] if layer_dir.exists() else []
            if tmps and any(p.stat().st_size > 0 for p in tmps if p.exists()):
                break
            time.sleep(0.001)
        else:
            pytest.fail("the writer never started a piece")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    tmps = list(layer_dir.glob(".*.tmp"))
    assert tmps, "the kill should have left a partly written piece behind"
    assert any(p.stat().st_size < 16 << 20 for p in tmps)
    cache = ChunkCache(root, limit=1 << 40)
    finished = [p for p in layer_dir.iterdir() if not p.name.startswith(".")]
    blob = bytes(range(256)) * (1 << 16)
    for i in range(len(finished) + 2):
        got = cache.load("sha256:" + "c" * 64, Piece(i, i + 1, "raw", b"", 0, len(blob), 0))
        assert got is None or got == blob
    assert cache.corrupt == 0
    # The dead writer's tmp file is recognised as abandoned and pruned.
    prune_chunks(Store(tmp_path))
    assert not list(layer_dir.glob(".*.tmp")) if layer_dir.exists() else True

"""Per-layer table files: exact round trip, atomic writes, and distrust on load."""

from __future__ import annotations

import time

import pytest

from lazyfs.formats.entry import Entry, EntryType
from lazyfs.errors import CacheError
from lazyfs.formats.base import LayerTable
from lazyfs.index.layertable import load_layer_table, save_layer_table


def sample() -> LayerTable:
    odd = b"caf\xe9".decode("utf-8", "surrogateescape")
    entries = [
        Entry("./", EntryType.DIR, 0o755, mtime_ns=1_700_000_000_123_456_789),
        Entry("usr/bin/sh", EntryType.FILE, 0o4755, 1000, 1000, "alice", "staff", 123_456,
              -5, data=b"\x00\x01locator\xff", xattrs={"security.capability": b"\x01\x00\x00\x02",
                                                       "user.\u00e9": b""}),
        Entry("bin", EntryType.SYMLINK, 0o777, linkname="usr/bin"),
        Entry("usr/bin/sh2", EntryType.HARDLINK, 0o755, linkname="usr/bin/sh"),
        Entry("dev/null", EntryType.CHAR, 0o666, devmajor=1, devminor=3),
        Entry("dev/sda", EntryType.BLOCK, 0o660, devmajor=8, devminor=2**20),
        Entry("run/p", EntryType.FIFO, 0o600),
        Entry(odd, EntryType.FILE, 0o644, size=2**40, data=b""),
        Entry("x" * 5000, EntryType.FILE, 0, uid=2**32 - 1, data=b"z" * 70000),
    ]
    return LayerTable("gzip", False, "no seek points", b"\x00state\xff" * 10, entries)


def test_round_trip_is_exact(tmp_path):
    table = sample()
    save_layer_table(tmp_path / "t", table)
    assert load_layer_table(tmp_path / "t") == table


def test_empty_table(tmp_path):
    table = LayerTable("tar", True)
    save_layer_table(tmp_path / "sub" / "t", table)
    assert load_layer_table(tmp_path / "sub" / "t") == table


def test_save_replaces_and_leaves_no_temp_files(tmp_path):
    save_layer_table(tmp_path / "t", sample())
    save_layer_table(tmp_path / "t", LayerTable("zstd", True))
    assert load_layer_table(tmp_path / "t") == LayerTable("zstd", True)
    assert [p.name for p in tmp_path.iterdir()] == ["t"]


@pytest.mark.parametrize("damage", [
    lambda b: b[: len(b) // 2],
    lambda b: b[:-1],
    lambda b: b[:10],
    lambda b: b"",
    lambda b: b[:-100] + bytes([b[-100] ^ 1]) + b[-99:],
    lambda b: b[:9] + bytes([b[9] ^ 0x80]) + b[10:],
    lambda b: b"SQLite format 3\0" + b[16:],
], ids=["half", "last-byte", "header-only", "empty", "bit-flip-payload", "bit-flip-digest",
        "foreign"])
def test_damaged_files_are_cache_errors(tmp_path, damage):
    path = tmp_path / "t"
    save_layer_table(path, sample())
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CacheError, match=str(path)):
        load_layer_table(path)


def test_missing_file_is_a_cache_error(tmp_path):
    with pytest.raises(CacheError, match="cannot read layer table"):
        load_layer_table(tmp_path / "nope")


def test_unwritable_place_is_a_cache_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(CacheError, match="cannot write layer table"):
        save_layer_table(tmp_path / "file" / "t", sample())


def test_100k_entries_save_and_load_quickly(tmp_path):
    entries = [Entry(f"usr/share/doc/pkg{i // 50}/file{i}.txt", EntryType.FILE, 0o644,
                     size=i, mtime_ns=1_700_000_000_000_000_000 + i,
                     data=(i * 512).to_bytes(8, "little")) for i in range(100_000)]
    table = LayerTable("gzip", True, "", b"s" * 4096, entries)
    start = time.process_time()
    save_layer_table(tmp_path / "t", table)
    saved = time.process_time()
    loaded = load_layer_table(tmp_path / "t")
    done = time.process_time()
    assert loaded.entries[99_999] == entries[99_999] and len(loaded.entries) == 100_000
    # CPU time, so a busy machine does not make this flaky; typical is ~0.3 s each.
    assert saved - start < 1.5 and done - saved < 1.5

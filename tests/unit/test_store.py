import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from lazyfs.errors import CacheError, DigestMismatch, NotFound
from lazyfs.store.blobs import Store
from lazyfs.store.records import ImageRecord

ROOT = Path(__file__).resolve().parents[2]


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def files_under(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file())


def record(repo="127.0.0.1:5000/app", tag="v1", digest=None, config=None, blobs=(), created="2024-01-01T00:00:00Z"):
    digest = digest or digest_of(repo.encode() + (tag or "").encode())
    config = config or digest_of(b"config" + digest.encode())
    return ImageRecord(repo, tag, digest, digest, config, "application/vnd.oci.image.manifest.v1+json",
                       "linux/amd64", created, 123, time.time(), tuple(blobs) + (digest, config))


# A child process writing one blob slowly; it prints READY once ``half`` is on disk.
WRITER = r"""
import sys, trio
from lazyfs.store.blobs import Store
root, digest, path, pause = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
data = open(path, "rb").read()
async def main():
    store = Store(root)
    async with store.blob_writer(digest, len(data)) as w:
        w.restart()
        half = len(data) // 2
        w.write(data[:half]); w._file.flush()
        print("READY", flush=True)
        await trio.sleep(pause)
        w.write(data[half:])
    print("DONE", flush=True)
trio.run(main)
"""


def spawn_writer(root: Path, digest: str, src: Path, pause: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(root), digest, str(src), str(pause)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)


def test_root_created_private_and_world_writable_root_refused(tmp_path):
    store = Store(tmp_path / "c")
    assert (store.root.stat().st_mode & 0o777) == 0o700
    bad = tmp_path / "bad"
    bad.mkdir()
    bad.chmod(0o777)
    with pytest.raises(CacheError, match="world-writable"):
        Store(bad)


def test_default_root_follows_environment(monkeypatch, tmp_path):
    from lazyfs.store.blobs import default_root
    monkeypatch.setenv("LAZYFS_CACHE_DIR", str(tmp_path / "x"))
    assert default_root() == tmp_path / "x"
    monkeypatch.delenv("LAZYFS_CACHE_DIR")
    expected = Path("/var/cache/lazyfs") if os.geteuid() == 0 else tmp_path / "xdg" / "lazyfs"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_root() == expected


async def test_write_blob_verifies_and_is_read_only(tmp_path):
    store = Store(tmp_path)
    data = os.urandom(300_000)
    d = digest_of(data)
    assert store.blob_path(d) is None

    async def chunks():
        for i in range(0, len(data), 65536):
            yield data[i:i + 65536]

    p = await store.write_blob(d, chunks(), len(data))
    assert p == store.blob_path(d) and p.read_bytes() == data
    assert p == tmp_path / "blobs" / "sha256" / d.split(":")[1]
    assert (p.stat().st_mode & 0o777) == 0o444
    assert files_under(tmp_path / "tmp") == []


async def test_digest_mismatch_leaves_nothing(tmp_path):
    store = Store(tmp_path)
    claimed = digest_of(b"the real content")
    with pytest.raises(DigestMismatch, match=claimed):
        async with store.blob_writer(claimed) as w:
            w.write(b"something else")
    with pytest.raises(DigestMismatch):
        store.put_bytes(claimed, b"tampered")
    assert not store.has_blob(claimed)
    assert files_under(tmp_path / "blobs") == []
    assert files_under(tmp_path / "tmp") == []


async def test_size_mismatch_with_right_hash_is_refused(tmp_path):
    store = Store(tmp_path)
    data = b"abc"
    with pytest.raises(DigestMismatch, match="expected 4"):
        async with store.blob_writer(digest_of(data), 4) as w:
            w.write(data)
    assert not store.has_blob(digest_of(data))


def test_malformed_digest_never_becomes_a_path(tmp_path):
    store = Store(tmp_path)
    for bad in ["sha256:../../etc/passwd", "md5:abc", "sha256:" + "A" * 64, "sha256:abc"]:
        with pytest.raises(CacheError):
            store.blob_path(bad)


def test_sigkilled_writer_leaves_no_blob_and_a_later_write_succeeds(tmp_path):
    data = os.urandom(2_000_000)
    d = digest_of(data)
    src = tmp_path / "src"
    src.write_bytes(data)
    root = tmp_path / "store"
    proc = spawn_writer(root, d, src, pause=60)
    try:
        assert proc.stdout.readline().strip() == "READY"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        proc.stdout.close()
    store = Store(root)
    assert files_under(root / "blobs") == []
    partial = files_under(root / "tmp")
    assert len(partial) == 1 and partial[0].stat().st_size == len(data) // 2

    async def resume():
        async with store.blob_writer(d, len(data)) as w:
            assert w.resume_offset() == len(data) // 2
            w.write(data[w.resume_offset():])
    trio.run(resume)
    assert store.blob_path(d).read_bytes() == data
    assert files_under(root / "tmp") == []


def test_concurrent_writers_of_one_digest(tmp_path):
    data = os.urandom(1_000_000)
    d = digest_of(data)
    src = tmp_path / "src"
    src.write_bytes(data)
    root = tmp_path / "store"
    Store(root)
    procs = [spawn_writer(root, d, src, pause=0.5) for _ in range(2)]
    for p in procs:
        assert p.stdout.readline().strip() == "READY"
    for p in procs:
        assert p.stdout.readline().strip() == "DONE"
        assert p.wait() == 0
        p.stdout.close()
    store = Store(root)
    assert store.blob_path(d).read_bytes() == data
    assert files_under(root / "tmp") == []
    assert files_under(root / "blobs") == [store.blob_path(d)]


def test_prune_keeps_referenced_and_frees_the_rest(tmp_path):
    store = Store(tmp_path)
    kept = [os.urandom(1000) for _ in range(3)]
    loose = os.urandom(5000)
    for b in kept + [loose]:
        store.put_bytes(digest_of(b), b)
    rec = record(blobs=[digest_of(b) for b in kept])
    store.record_image(rec)
    store.index_path("layertable", digest_of(kept[0])).write_bytes(b"k")
    store.index_path("layertable", digest_of(loose)).write_bytes(b"xx")
    # An abandoned tmp file (no lock held) and an old one.
    (tmp_path / "tmp" / f"sha256-{'0' * 64}.999999.abcd.part").write_bytes(b"123")

    result = store.prune()
    assert result.blobs == 1 and result.indexes == 1 and result.tmp == 1
    assert result.bytes_freed == 5000 + 2 + 3
    assert all(store.has_blob(digest_of(b)) for b in kept)
    assert not store.has_blob(digest_of(loose))
    assert store.index_path("layertable", digest_of(kept[0])).exists()

    result = store.prune(all=True)
    assert result.images == 1 and result.blobs == 3 and result.indexes == 1
    assert store.list_images() == []
    assert files_under(tmp_path / "blobs") == []


async def test_prune_spares_a_tmp_file_being_written(tmp_path):
    store = Store(tmp_path)
    data = b"x" * 100
    async with store.blob_writer(digest_of(data)) as w:
        w.write(data[:50])
        assert store.prune().tmp == 0
        assert w.tmp_path.exists()
        w.write(data[50:])
    assert store.has_blob(digest_of(data))


def test_records_list_filter_and_moved_tag(tmp_path):
    store = Store(tmp_path)
    a = record(tag="v1", created="2024-01-01T00:00:00Z")
    b = record(tag="v2", created="2025-01-01T00:00:00Z")
    c = record(repo="docker.io/library/other", tag="latest", created="2023-06-01T00:00:00Z")
    for r in (a, b, c):
        store.record_image(r)
    assert [r.tag for r in store.list_images()] == ["v2", "v1", "latest"]
    assert [r.tag for r in store.list_images("127.0.0.1:5000/app")] == ["v2", "v1"]
    assert [r.tag for r in store.list_images("127.0.0.1:5000/app", "v1")] == ["v1"]
    assert [r.repository for r in store.list_images("docker.io/*")] == ["docker.io/library/other"]

    moved = record(tag="v1", digest=digest_of(b"new"), created="2026-01-01T00:00:00Z")
    store.record_image(moved)
    rows = {(r.tag, r.digest) for r in store.list_images("127.0.0.1:5000/app")}
    assert rows == {("v1", moved.digest), (None, a.digest), ("v2", b.digest)}
    # Re-pulling the same thing does not duplicate it.
    store.record_image(moved)
    assert len(store.list_images("127.0.0.1:5000/app")) == 3
    assert store.find_image("127.0.0.1:5000/app", "v1") .digest == moved.digest
    assert store.find_image("127.0.0.1:5000/app", digest=a.digest).tag is None


def test_openers_of_a_new_store_at_once_all_get_it(tmp_path):
    """Switching a new records file to WAL is not waited for by SQLite when
    another opener is switching it too: without a retry, about one fresh
    store in thirty failed one of its eight openers with "database is locked"."""
    import threading
    failures = []
    for trial in range(150):
        root, go = tmp_path / str(trial), threading.Barrier(8)

        def open_store():
            go.wait()
            try:
                Store(root).list_images()
            except CacheError as e:
                failures.append(str(e))

        threads = [threading.Thread(target=open_store) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == []


def test_remove_image_by_tag_digest_and_id(tmp_path):
    store = Store(tmp_path)
    a, b = record(tag="v1"), record(tag="v2")
    store.record_image(a)
    store.record_image(b)
    assert [r.tag for r in store.remove_image("127.0.0.1:5000/app", tag="v1")] == ["v1"]
    with pytest.raises(NotFound, match="127.0.0.1:5000/app:v1"):
        store.remove_image("127.0.0.1:5000/app", tag="v1")
    assert store.remove_image("127.0.0.1:5000/app", digest=b.digest)[0].tag == "v2"
    store.record_image(a)
    assert store.remove_image(image_id=a.config_digest[7:19])[0].digest == a.digest
    with pytest.raises(NotFound):
        store.remove_image(image_id="zzzz")
    assert store.list_images() == []


async def test_prune_waits_for_a_pull_lease(tmp_path):
    store = Store(tmp_path)
    data = os.urandom(100)
    done = trio.Event()
    result = []

    async def prune_in_thread():
        result.append(await trio.to_thread.run_sync(Store(tmp_path).prune))
        done.set()

    async with trio.open_nursery() as nursery:
        async with store.lease():
            store.put_bytes(digest_of(data), data)
            nursery.start_soon(prune_in_thread)
            await trio.sleep(0.3)
            assert not done.is_set()
            store.record_image(record(blobs=[digest_of(data)]))
        await done.wait()
    assert result[0].blobs == 0 and store.has_blob(digest_of(data))


async def test_blob_writer_keeps_an_interrupted_attempt_for_the_next_writer(tmp_path):
    store = Store(tmp_path)
    data = os.urandom(10_000)
    with pytest.raises(ConnectionError):
        async with store.blob_writer(digest_of(data), len(data)) as w:
            w.write(data[:4000])
            raise ConnectionError("network went away")
    assert not store.has_blob(digest_of(data))
    async with store.blob_writer(digest_of(data), len(data)) as w:
        assert w.resume_offset() == 4000
        w.write(data[4000:])
    assert store.blob_path(digest_of(data)).read_bytes() == data


def test_records_of_an_older_store_gain_an_unknown_unpacked_size(tmp_path):
    import sqlite3
    old_schema = """CREATE TABLE images (repository TEXT NOT NULL, tag TEXT NOT NULL DEFAULT '',
        digest TEXT NOT NULL, manifest_digest TEXT NOT NULL, config_digest TEXT NOT NULL,
        media_type TEXT NOT NULL, platform TEXT NOT NULL, created TEXT NOT NULL,
        size INTEGER NOT NULL, pulled_at REAL NOT NULL, blobs TEXT NOT NULL,
        PRIMARY KEY (repository, tag, digest))"""
    old = record(tag="old")
    with sqlite3.connect(tmp_path / "images.db") as db:
        db.execute(old_schema)
        db.execute("INSERT INTO images VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                   (old.repository, "old", old.digest, old.manifest_digest, old.config_digest,
                    old.media_type, old.platform, old.created, old.size, old.pulled_at, "[]"))
    store = Store(tmp_path)
    assert [(r.tag, r.unpacked_size) for r in store.list_images()] == [("old", None)]
    new = dataclasses.replace(record(tag="new"), unpacked_size=4567)
    store.record_image(new)
    assert store.find_image(new.repository, "new").unpacked_size == 4567


def test_an_image_id_with_several_names_is_removed_only_when_forced(tmp_path):
    store = Store(tmp_path)
    a = record(tag="v1")
    store.record_image(a)
    store.record_image(dataclasses.replace(a, tag="latest"))
    with pytest.raises(CacheError, match="must be forced"):
        store.remove_image(image_id=a.config_digest)
    assert len(store.list_images()) == 2
    removed = store.remove_image(image_id=a.config_digest[7:19], force=True)
    assert sorted(r.tag for r in removed) == ["latest", "v1"]
    assert store.list_images() == []


def test_a_relative_store_root_survives_a_change_of_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = Store("cache")
    monkeypatch.chdir("/")
    assert store.root == tmp_path / "cache"
    assert (store.root / "blobs").is_dir()


def test_a_new_writer_cannot_be_adopted_before_it_holds_its_lock(tmp_path, monkeypatch):
    """A second writer of the same digest arriving between the first one's
    open and its lock must not take the first one's file over."""
    import fcntl
    store = Store(tmp_path)
    d = digest_of(b"x")
    real, arrived = fcntl.flock, []

    def flock(fd, op):
        if op == fcntl.LOCK_EX and not arrived:
            arrived.append(True)
            arrived.append(store._claim_tmp(d))
        return real(fd, op | fcntl.LOCK_NB)  # a test that fails must not hang

    monkeypatch.setattr(fcntl, "flock", flock)
    first_path, first = store._claim_tmp(d)
    second_path, second = arrived[1]
    assert first_path != second_path and first_path.exists() and second_path.exists()
    first.close()
    second.close()

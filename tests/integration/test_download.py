"""stream_blob against the real registry, through proxies that delay, count,
corrupt or ignore Range."""

from __future__ import annotations

import dataclasses
import os
import uuid

import pytest
import trio

from lazyfs.registry.download import DownloadProgress, Fallback, fetch_blob, stream_blob
from lazyfs.errors import DigestMismatch, RegistryError
from lazyfs.manifest import Descriptor
from lazyfs.reference import parse_reference
from lazyfs.registry.client import RegistryClient, RegistryOptions
from lazyfs.store.blobs import Store
from lazyfs.testing.push import OCI_LAYER_GZIP, push_blob, sha256
from tests.support.faultproxy import fault_proxy
from tests.support.servers import Request, forward, serve

KIB = 1 << 10
CHUNK = 256 * KIB
SIZE = 3_000_000 + 17


@pytest.fixture
async def client(docker_config):
    async with RegistryClient(RegistryOptions(backoff=0.01, max_retries=1)) as c:
        yield c


@pytest.fixture(scope="module")
def blob() -> bytes:
    return os.urandom(SIZE)


@pytest.fixture
def pushed(registry, blob) -> str:
    repo = f"download/{uuid.uuid4().hex[:10]}"
    with registry.client() as c:
        push_blob(c, repo, blob)
    return repo


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "store")


def desc_of(data: bytes) -> Descriptor:
    return Descriptor(OCI_LAYER_GZIP, sha256(data), len(data))


def ref_to(host: str, repo: str):
    return parse_reference(f"{host}/{repo}:v1")


class Collect:
    """A consumer that keeps every piece it was handed, optionally slowly."""

    def __init__(self, delay: float = 0.0, fail_at: int | None = None):
        self.pieces: list[bytes] = []
        self.delay, self.fail_at = delay, fail_at

    def __call__(self, data: bytes) -> None:
        if self.fail_at is not None and len(self.pieces) == self.fail_at:
            raise ValueError("consumer gave up")
        if self.delay:
            import time
            time.sleep(self.delay)
        self.pieces.append(bytes(data))

    @property
    def data(self) -> bytes:
        return b"".join(self.pieces)


def in_blobs(store: Store) -> list[str]:
    return [p.name for p in (store.root / "blobs").rglob("*") if p.is_file()]


def in_tmp(store: Store) -> list:
    return list((store.root / "tmp").iterdir())


async def test_pieces_arrive_once_in_order_and_the_blob_is_stored(client, registry, pushed,
                                                                   blob, store):
    got = Collect()
    progress = DownloadProgress()
    async with fault_proxy(registry.host) as proxy:
        path = await stream_blob(client, ref_to(proxy.host, pushed), desc_of(blob), store, got,
                                 chunk=CHUNK, parallel=4, progress=progress)
    assert got.data == blob
    assert [len(p) for p in got.pieces] == [CHUNK] * (SIZE // CHUNK) + [SIZE % CHUNK]
    assert path == store.blob_path(sha256(blob)) and path.read_bytes() == blob
    assert (progress.received, progress.consumed, progress.done, progress.path) == \
        (SIZE, SIZE, True, path)
    ranges = sorted(s.range for s in proxy.seen if s.kind == "range")
    assert ranges == sorted(f"bytes={o}-{min(o + CHUNK, SIZE) - 1}" for o in range(0, SIZE, CHUNK))
    assert proxy.count("blob") == 0 and in_tmp(store) == []


async def test_requests_overlap_and_stay_within_the_window(client, registry, pushed, blob,
                                                          store):
    """A delaying server sees ``parallel`` requests at once, and a slow consumer
    holds the downloads back to ``parallel + 2`` pieces ahead of it."""
    progress = DownloadProgress()
    now, peak, ahead = 0, 0, []
    upstream = forward(registry.host)

    async def delaying(req: Request):
        nonlocal now, peak
        if "range" in req.headers:
            start = int(req.headers["range"].removeprefix("bytes=").split("-")[0])
            ahead.append((start - progress.consumed) // CHUNK)
            now += 1
            peak = max(peak, now)
        try:
            await trio.sleep(0.03)
            return await upstream(req)
        finally:
            now -= "range" in req.headers

    got = Collect(delay=0.05)
    async with serve(delaying) as srv:
        await stream_blob(client, ref_to(srv.host, pushed), desc_of(blob), store, got,
                          chunk=CHUNK, parallel=3, progress=progress)
    assert got.data == blob
    assert peak == 3
    assert max(ahead) == 3 + 1, "at most parallel + 2 pieces held: one consuming, one waiting"


async def test_range_ignored_midway_streams_the_rest_without_repeating_bytes(
        client, registry, pushed, blob, store):
    upstream = forward(registry.host)
    cutoff = 4 * CHUNK

    async def ignores_late_ranges(req: Request):
        rng = req.headers.get("range", "")
        if rng and int(rng.removeprefix("bytes=").split("-")[0]) >= cutoff:
            await trio.sleep(0.2)
            req = Request(req.method, req.target,
                          {k: v for k, v in req.headers.items() if k != "range"}, req.body)
        return await upstream(req)

    got = Collect()
    fallback = Fallback()
    async with serve(ignores_late_ranges) as srv:
        await stream_blob(client, ref_to(srv.host, pushed), desc_of(blob), store, got,
                          chunk=CHUNK, parallel=2, fallback=fallback)
        plain = [r for r in srv.seen("/v2/download/") if "range" not in r.headers]
    assert got.data == blob
    assert [len(p) for p in got.pieces[:4]] == [CHUNK] * 4, "ranges consumed before the 200"
    assert len(plain) == 1
    assert "HTTP 200, not 206" in fallback.reason
    assert (fallback.pulled_bytes, fallback.pull_reason) == (SIZE, fallback.reason)
    assert store.blob_path(sha256(blob)).read_bytes() == blob


async def test_server_ignoring_every_range_falls_back_to_one_stream(client, registry, pushed,
                                                                    blob, store):
    got = Collect()
    fallback = Fallback()
    async with fault_proxy(registry.host) as proxy:
        proxy.arm("range", "ignore_range", times=None)
        await stream_blob(client, ref_to(proxy.host, pushed), desc_of(blob), store, got,
                          chunk=CHUNK, parallel=4, fallback=fallback)
        assert proxy.count("blob") == 1
        ranges = proxy.count("range")
        # The registry is now known to ignore Range: the next pull streams at once.
        (store.root / "blobs" / "sha256" / sha256(blob)[7:]).unlink()
        await stream_blob(client, ref_to(proxy.host, pushed), desc_of(blob), store, Collect(),
                          chunk=CHUNK, fallback=fallback)
        assert (proxy.count("range"), proxy.count("blob")) == (ranges, 2)
    assert got.data == blob and fallback.reason
    assert fallback.pulled_bytes == 2 * SIZE


@pytest.mark.parametrize("fault, error, message", [
    ({"action": "flip"}, DigestMismatch, "content hashes to"),
    ({"action": "status", "status": 503, "times": None}, RegistryError, "HTTP 503"),
], ids=["wrong-bytes", "registry-error"])
async def test_failures_leave_nothing_in_blobs_or_tmp(client, registry, pushed, blob, store,
                                                     fault, error, message):
    """Wrong bytes are a digest mismatch; what get_range raises after its
    retries propagates as it is (here once a short retry deadline passes)."""
    client.options = dataclasses.replace(client.options, retry_deadline=2.0)
    async with fault_proxy(registry.host) as proxy:
        proxy.arm("range", **fault)
        with pytest.raises(error, match=message):
            await stream_blob(client, ref_to(proxy.host, pushed), desc_of(blob), store,
                              Collect(), chunk=CHUNK, parallel=4)
    assert in_blobs(store) == [] and in_tmp(store) == []


async def test_a_failing_consumer_stops_the_download_and_leaves_a_resumable_prefix(
        client, registry, pushed, blob, store):
    got = Collect(fail_at=3)
    progress = DownloadProgress()
    ref = ref_to(registry.host, pushed)
    with pytest.raises(ValueError, match="consumer gave up"):
        await stream_blob(client, ref, desc_of(blob), store, got, chunk=CHUNK, parallel=4,
                          progress=progress)
    assert in_blobs(store) == []
    [tmp] = in_tmp(store)
    kept = tmp.read_bytes()
    assert len(kept) == 4 * CHUNK and blob.startswith(kept), "ahead-of-order bytes cut off"
    await fetch_blob(client, ref, desc_of(blob), store)
    assert store.blob_path(sha256(blob)).read_bytes() == blob


async def test_cancelled_midway_leaves_nothing_in_blobs_and_a_prefix_in_tmp(
        client, registry, pushed, blob, store):
    upstream = forward(registry.host)

    async def stalls_third_range(req: Request):
        if req.headers.get("range", "").startswith(f"bytes={2 * CHUNK}-"):
            await trio.sleep(10)
        return await upstream(req)

    progress = DownloadProgress()
    async with serve(stalls_third_range) as srv:
        with trio.move_on_after(1) as scope:
            await stream_blob(client, ref_to(srv.host, pushed), desc_of(blob), store,
                              Collect(), chunk=CHUNK, parallel=4, progress=progress)
    assert scope.cancelled_caught and not progress.done
    assert progress.consumed == 2 * CHUNK and progress.received > 3 * CHUNK
    assert in_blobs(store) == []
    [tmp] = in_tmp(store)
    assert tmp.read_bytes() == blob[:2 * CHUNK], "pieces fetched ahead of the gap are cut off"


async def test_small_blob_is_one_plain_request(client, registry, store):
    small = os.urandom(1000)
    repo = f"download/{uuid.uuid4().hex[:10]}"
    with registry.client() as c:
        push_blob(c, repo, small)
    got = Collect()
    async with fault_proxy(registry.host) as proxy:
        await stream_blob(client, ref_to(proxy.host, repo), desc_of(small), store, got,
                          chunk=CHUNK)
        assert [s.kind for s in proxy.seen if s.kind not in ("ping",)] == ["blob"]
    assert got.pieces == [small]


async def test_stored_blob_is_consumed_from_disk_without_requests(client, registry, pushed,
                                                                  blob, store):
    async with fault_proxy(registry.host) as proxy:
        ref = ref_to(proxy.host, pushed)
        first = await stream_blob(client, ref, desc_of(blob), store, chunk=CHUNK)
        proxy.reset_counts()
        got = Collect()
        progress = DownloadProgress()
        again = await stream_blob(client, ref, desc_of(blob), store, got, chunk=CHUNK,
                                  progress=progress)
        assert proxy.count() == 0
    assert again == first and got.data == blob and progress.consumed == SIZE
    assert len(got.pieces) == -(-SIZE // CHUNK)


async def test_stored_blob_of_another_size_than_described_is_refused(client, registry, pushed,
                                                                     blob, store):
    ref = ref_to(registry.host, pushed)
    await stream_blob(client, ref, desc_of(blob), store, chunk=CHUNK)
    lying = Descriptor(OCI_LAYER_GZIP, sha256(blob), SIZE + 1)
    with pytest.raises(DigestMismatch, match="says 3000018 bytes"):
        await stream_blob(client, ref, lying, store)

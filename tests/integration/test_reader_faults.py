"""The lazy read path against a real registry behind a misbehaving proxy.

Every image here is indexed once (the gzip and tar formats need the whole
blob for that), then its layer blobs are removed from the store, so reads
must go to the registry by range, the way they do on a machine that has the
index but not the layer.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import uuid
from pathlib import Path

import pytest
import trio

from lazyfs.store.chunks import prune_chunks
from lazyfs.errors import LazyfsError, RangeNotSupported
from lazyfs.image import OpenOptions, open_image_async
from lazyfs.read.memory import OPEN_FILES, Lru, Memory
from lazyfs.read.reader import FETCH_ATTEMPTS
from lazyfs.read.stats import write_stats
from lazyfs.reference import parse_reference
from lazyfs.registry.client import RegistryClient, RegistryOptions
from lazyfs.store.blobs import Store
from lazyfs.testing.push import OCI_LAYER_GZIP, OCI_LAYER_TAR, push_image
from tests.support.faultproxy import fault_proxy
from tests.support.images import gzip_bytes, make_tar
from tests.support.servers import Request, Response, serve, with_ping
from tests.support.text import words

OPTIONS = RegistryOptions(timeout=1.0, connect_timeout=1.0, max_retries=1, backoff=0.01)


def _files() -> dict[str, bytes]:
    rng = random.Random(5)
    files = {"etc/": None, "data/": None,
             "etc/small.txt": words(rng, 9_000),
             "data/big.bin": words(rng, 12 << 20),
             "data/mid.bin": rng.randbytes(300_000)}
    for i in range(8):
        files[f"etc/f{i}"] = words(rng, 3_000 + i)
    return files


FILES = _files()


class Prepared:
    def __init__(self, host: str, repo: str, template: Path, layer: str, size: int):
        self.host, self.repo, self.template, self.layer, self.size = host, repo, template, layer, size

    def store(self, tmp_path: Path) -> Store:
        dst = tmp_path / "store"
        shutil.copytree(self.template, dst)
        return Store(dst)


@pytest.fixture(scope="module")
def images(registry, tmp_path_factory) -> dict[str, Prepared]:
    tar = make_tar(FILES)
    out = {}
    for fmt, blob, media_type in (("gzip", gzip_bytes(tar), OCI_LAYER_GZIP),
                                  ("tar", tar, OCI_LAYER_TAR)):
        repo = f"faults/{fmt}-{uuid.uuid4().hex[:8]}"
        with registry.client() as c:
            pushed = push_image(c, repo, "v1", [blob], layer_media_type=media_type)
        template = tmp_path_factory.mktemp(f"store-{fmt}")
        layer = json.loads(pushed.manifest)["layers"][0]["digest"]

        async def index() -> None:
            async with open_image_async(f"{registry.host}/{repo}:v1", store=Store(template)):
                pass

        trio.run(index)
        (template / "blobs" / "sha256" / layer.split(":")[1]).unlink()
        out[fmt] = Prepared(registry.host, repo, template, layer, len(blob))
    return out


@pytest.fixture(params=["gzip", "tar"])
def image(request, images) -> Prepared:
    return images[request.param]


def opened(proxy, image: Prepared, store: Store, **kw):
    return open_image_async(f"{proxy.host}/{image.repo}:v1",
                            OpenOptions(registry=OPTIONS, **kw), store=store)


async def read(img, path: str, offset: int = 0, size: int | None = None) -> bytes:
    node = img.index.resolve(path)
    return await img.read(node, offset, node.size if size is None else size)


def expect(path: str, offset: int = 0, size: int | None = None) -> bytes:
    data = FILES[path.lstrip("/")]
    return data[offset:] if size is None else data[offset:offset + size]


def pieces_on_disk(store: Store, layer: str) -> list[Path]:
    d = store.root / "chunks" / "sha256" / layer[7:9] / layer[7:]
    return [p for p in d.iterdir() if not p.name.startswith(".")] if d.is_dir() else []


def layer_stats(img) -> dict:
    return img.stats()["layers"][0]


# --- the happy path ------------------------------------------------------------

async def test_reads_fetch_little_and_a_second_open_fetches_nothing(registry, image, tmp_path,
                                                                   docker_config):
    store = image.store(tmp_path)
    async with fault_proxy(registry.host) as proxy:
        async with opened(proxy, image, store) as img:
            assert await read(img, "/etc/small.txt") == expect("/etc/small.txt")
            assert await read(img, "/data/big.bin", 3 << 20, 100_000) == \
                expect("/data/big.bin", 3 << 20, 100_000)
            s = layer_stats(img)
        ranged = proxy.bytes_sent("range", "multirange")
        assert proxy.count("blob", path=image.layer) == 0
        assert s["mode"] == "lazy" and s["range_bytes"] == ranged
        assert 0 < ranged < image.size / 2
        assert s["cache_misses"] >= 2 and s["requests"] == proxy.count("range", "multirange")
        assert pieces_on_disk(store, image.layer)

        proxy.reset_counts()
        async with opened(proxy, image, store) as img:
            assert await read(img, "/etc/small.txt") == expect("/etc/small.txt")
            assert await read(img, "/data/big.bin", 3 << 20, 100_000) == \
                expect("/data/big.bin", 3 << 20, 100_000)
            s = layer_stats(img)
        assert proxy.count("range", "multirange", "blob", path=image.layer) == 0
        assert s["bytes_fetched"] == 0 and s["cache_misses"] == 0 and s["cache_hits"] >= 2


# --- faults that one more try gets past -------------------------------------------

TRANSIENT = {
    "stall-before-headers": dict(action="stall", seconds=2.5),
    "stall-mid-body": dict(action="stall", seconds=2.5, at=0.5),
    "reset-mid-body": dict(action="reset", at=0.3),
    "truncated-body": dict(action="truncate"),
    "wrong-content-range": dict(action="wrong_range"),
    "flipped-bytes": dict(action="flip"),
    "503-retry-after": dict(action="status", status=503, retry_after="0"),
    "429-retry-after": dict(action="status", status=429, retry_after="1"),
}


@pytest.mark.parametrize("fault", sorted(TRANSIENT))
async def test_a_passing_fault_is_retried_and_the_read_succeeds(registry, image, tmp_path,
                                                               docker_config, fault):
    store = image.store(tmp_path)
    async with fault_proxy(registry.host) as proxy:
        async with opened(proxy, image, store) as img:
            proxy.arm(("range", "multirange"), times=1, **TRANSIENT[fault])
            got = await read(img, "/data/big.bin", 1 << 20, 50_000)
            s = layer_stats(img)
    assert got == expect("/data/big.bin", 1 << 20, 50_000)
    assert [x.fault for x in proxy.seen if x.kind == "range"][:2] == \
        [TRANSIENT[fault]["action"], ""]
    assert s["verify_failures"] == (1 if fault == "flipped-bytes" else 0)
    assert s["failed_reads"] == 0
    # What was cached is right: served again with the registry refusing everything.
    async with fault_proxy(registry.host) as proxy:
        async with opened(proxy, image, store) as img:
            proxy.arm(("range", "multirange", "blob"), "status", status=500, times=None)
            assert await read(img, "/data/big.bin", 1 << 20, 50_000) == \
                expect("/data/big.bin", 1 << 20, 50_000)
            assert img.reader.cache.corrupt == 0
        assert proxy.count("range", "multirange", "blob", path=image.layer) == 0


# --- faults that last: the read fails, nothing is cached, the next read works -------

PERSISTENT = {
    "reset-mid-body": dict(action="reset", at=0.5),
    "truncated-body": dict(action="truncate"),
    "wrong-content-range": dict(action="wrong_range"),
    "flipped-bytes": dict(action="flip"),
    "500": dict(action="status", status=500),
}


@pytest.mark.parametrize("fault", sorted(PERSISTENT))
async def test_a_lasting_fault_fails_the_read_caches_nothing_and_passes(registry, image, tmp_path,
                                                                        docker_config, fault):
    store = image.store(tmp_path)
    async with fault_proxy(registry.host) as proxy:
        async with opened(proxy, image, store) as img:
            proxy.arm(("range", "multirange"), times=None, **PERSISTENT[fault])
            with pytest.raises(LazyfsError) as info:
                await read(img, "/data/big.bin", 2 << 20, 10_000)
            assert "\n" not in str(info.value)
            assert pieces_on_disk(store, image.layer) == []
            s = layer_stats(img)
            assert s["failed_reads"] == 1 and s["retries"] >= 1
            if fault == "flipped-bytes":
                assert s["verify_failures"] >= 2
            proxy.clear()
            assert await read(img, "/data/big.bin", 2 << 20, 10_000) == \
                expect("/data/big.bin", 2 << 20, 10_000)
        assert pieces_on_disk(store, image.layer)
        proxy.reset_counts()
        async with opened(proxy, image, store) as img:
            assert await read(img, "/data/big.bin", 2 << 20, 10_000) == \
                expect("/data/big.bin", 2 << 20, 10_000)
        assert proxy.count("range", "multirange", "blob", path=image.layer) == 0


@pytest.mark.parametrize("fault", ["500", "503", "reset-mid-body"])
async def test_a_failing_read_sends_one_request_per_reader_attempt(registry, images, tmp_path,
                                                                   docker_config, fault):
    """The reader's attempts are the one retry budget of a read: the client,
    however many retries it allows itself elsewhere, sends a range once."""
    image = images["tar"]
    store = image.store(tmp_path)
    lasting = {"500": dict(action="status", status=500),
               "503": dict(action="status", status=503, retry_after="0"),
               "reset-mid-body": dict(action="reset", at=0.5)}[fault]
    options = RegistryOptions(timeout=1.0, connect_timeout=1.0, max_retries=3, backoff=0.01)
    async with fault_proxy(registry.host) as proxy:
        async with open_image_async(f"{proxy.host}/{image.repo}:v1",
                                    OpenOptions(registry=options), store=store) as img:
            proxy.arm(("range", "multirange"), times=None, **lasting)
            with pytest.raises(LazyfsError):
                await read(img, "/data/big.bin", 2 << 20, 10_000)
        assert 1 <= proxy.count("range", "multirange") <= FETCH_ATTEMPTS


# --- fallback to whole pulls ---------------------------------------------------------

async def test_registry_ignoring_range_makes_one_whole_pull_for_all_readers(
        registry, images, tmp_path, docker_config):
    image = images["gzip"]
    store = image.store(tmp_path)
    names = ["/etc/small.txt", "/data/mid.bin"] + [f"/etc/f{i}" for i in range(8)]
    async with fault_proxy(registry.host) as proxy:
        proxy.arm(("range", "multirange"), "ignore_range", times=None)
        async with opened(proxy, image, store) as img:
            got = {}

            async def one(name):
                got[name] = await read(img, name)

            async with trio.open_nursery() as nursery:
                for name in names:
                    nursery.start_soon(one, name)
            assert got == {n: expect(n) for n in names}
            s = layer_stats(img)
            before = proxy.count()
            assert await read(img, "/data/big.bin", 5 << 20, 10) == expect("/data/big.bin", 5 << 20, 10)
            assert proxy.count() == before
    assert proxy.count("blob", path=image.layer) == 1
    assert s["mode"] == "full pull" and "HTTP 200" in s["reason"]
    assert s["pulled_bytes"] == image.size and s["bytes_fetched"] >= image.size
    assert s["verify_failures"] == 0
    assert store.blob_path(image.layer) is not None


async def test_full_pull_option_reads_no_ranges(registry, image, tmp_path, docker_config):
    store = image.store(tmp_path)
    async with fault_proxy(registry.host) as proxy:
        async with opened(proxy, image, store, full_pull=True) as img:
            assert await read(img, "/etc/f3") == expect("/etc/f3")
            s = layer_stats(img)
    assert proxy.count("range", "multirange") == 0 and proxy.count("blob", path=image.layer) == 1
    assert s["mode"] == "full pull" and "--full-pull" in s["reason"]
    assert s["pulled_bytes"] == image.size


async def test_prefetch_pulls_in_the_background_while_reads_use_ranges(
        registry, image, tmp_path, docker_config):
    store = image.store(tmp_path)
    async with fault_proxy(registry.host) as proxy:
        proxy.arm("blob", "stall", seconds=0.8, at=0.05)
        async with opened(proxy, image, store, prefetch=True) as img:
            assert await read(img, "/etc/small.txt") == expect("/etc/small.txt")
            assert proxy.count("range") == 1
            with trio.fail_after(20):
                while img.prefetching.get(image.layer) != "done":
                    await trio.sleep(0.05)
            before = proxy.count()
            assert await read(img, "/data/big.bin", 4 << 20, 1000) == \
                expect("/data/big.bin", 4 << 20, 1000)
            assert proxy.count() == before
            s = layer_stats(img)
    assert s["mode"] == "lazy" and s["pull_reason"] == "prefetch"
    assert s["pulled_bytes"] == image.size and s["local"] is True


# --- sharing, readahead, stats -------------------------------------------------------

async def test_identical_concurrent_reads_share_one_fetch_even_when_it_fails(
        registry, images, tmp_path, docker_config):
    image = images["tar"]
    store = image.store(tmp_path)
    async with fault_proxy(registry.host) as proxy:
        async with opened(proxy, image, store) as img:
            results = []

            async def one():
                results.append(await read(img, "/data/big.bin", 100, 1000))

            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(one)
            assert proxy.count("range") == 1
            proxy.arm("range", "reset", at=0.5, times=1)
            results.clear()

            async def other():
                results.append(await read(img, "/data/big.bin", 3 << 20, 1000))

            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(other)
    assert results == [expect("/data/big.bin", 3 << 20, 1000)] * 10
    ranges = [x for x in proxy.seen if x.kind == "range"]
    assert [x.fault for x in ranges] == ["", "reset", ""]


async def test_sequential_reads_trigger_readahead(registry, image, tmp_path, docker_config):
    store = image.store(tmp_path)
    size = len(FILES["data/big.bin"])
    async with fault_proxy(registry.host) as proxy:
        async with opened(proxy, image, store) as img:
            node = img.index.resolve("/data/big.bin")
            out = []
            for off in range(0, size, 128 << 10):
                out.append(await img.read(node, off, 128 << 10))
                await trio.sleep(0)
            s = layer_stats(img)
    assert b"".join(out) == FILES["data/big.bin"]
    assert s["readahead_pieces"] > 0
    assert s["range_bytes"] <= image.size * 1.05, s
    assert s["requests"] <= 16, s


async def test_write_stats_is_atomic_json(registry, images, tmp_path, docker_config):
    image = images["gzip"]
    store = image.store(tmp_path)
    async with fault_proxy(registry.host) as proxy:
        async with opened(proxy, image, store) as img:
            await read(img, "/etc/f1")
            target = tmp_path / "stats.json"
            write_stats(target, img)
            assert json.loads(target.read_text()) == img.stats()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    doc = json.loads(target.read_text())
    assert doc["open_seconds"] > 0 and doc["layers"][0]["format"] == "gzip"
    assert doc["layers"][0]["requests"] == 1


# --- multi-range requests ----------------------------------------------------------------

async def test_get_ranges_uses_multi_range_and_never_takes_a_200(registry, images, docker_config):
    image = images["tar"]
    blob = make_tar(FILES)
    spans = [(0, 10), (100, 200), (150, 160), (5000, 5100), (len(blob) - 5, len(blob))]
    want = [blob[s:e] for s, e in spans]
    async with RegistryClient(OPTIONS) as client:
        ref = parse_reference(f"{registry.host}/{image.repo}:v1")
        assert await client.get_ranges(ref, image.layer, spans) == want
        assert client.multi_range(ref) is True
    async with fault_proxy(registry.host) as proxy:
        proxy.arm("multirange", "ignore_range", times=None)
        async with RegistryClient(OPTIONS) as client:
            ref = parse_reference(f"{proxy.host}/{image.repo}:v1")
            assert await client.get_ranges(ref, image.layer, spans) == want
            assert client.multi_range(ref) is False
            assert await client.get_ranges(ref, image.layer, spans) == want
        # The spans go as given, one by one twice: merging them is the reader's choice.
        assert proxy.count("multirange") == 1 and proxy.count("range") == 2 * len(spans)
        proxy.arm("range", "ignore_range", times=None)
        async with RegistryClient(OPTIONS) as client:
            ref = parse_reference(f"{proxy.host}/{image.repo}:v1")
            with pytest.raises(RangeNotSupported):
                await client.get_ranges(ref, image.layer, spans)


async def test_warming_scattered_files_takes_one_multi_range_request(registry, image, tmp_path,
                                                                     docker_config):
    store = image.store(tmp_path)
    names = ["/etc/small.txt"] + [f"/etc/f{i}" for i in range(8)]
    async with fault_proxy(registry.host) as proxy:
        async with opened(proxy, image, store) as img:
            await img.warm([img.index.resolve(n) for n in names])
            assert proxy.count("multirange") == 1 and proxy.count("range") == 0
            assert [await read(img, n) for n in names] == [expect(n) for n in names]
            s = layer_stats(img)
    assert proxy.count("range", "multirange") == 1
    assert s["requests"] == 1 and s["range_bytes"] < image.size / 2


async def test_an_open_image_keeps_its_pieces_from_prune_but_not_past_the_limit(
        registry, images, tmp_path, docker_config, monkeypatch):
    """``prune --all`` spares what an open image uses; the size limit does
    not (its pieces go last, and are fetched again when read once the reader
    has let go of the files it had open)."""
    image = images["tar"]
    store = image.store(tmp_path)
    async with fault_proxy(registry.host) as proxy:
        async with opened(proxy, image, store) as img:
            assert await read(img, "/data/mid.bin") == expect("/data/mid.bin")
            await img.reader.written()
            kept = pieces_on_disk(store, image.layer)
            assert kept
            assert prune_chunks(store, all=True).files == 0
            assert pieces_on_disk(store, image.layer) == kept
            monkeypatch.setenv("LAZYFS_CACHE_SIZE", "1")
            assert prune_chunks(store).files == len(kept)
            assert pieces_on_disk(store, image.layer) == []
            proxy.reset_counts()
            img.reader.memory, img.reader.files = Memory(), Lru(OPEN_FILES)
            assert await read(img, "/data/mid.bin") == expect("/data/mid.bin")
            assert proxy.count("range", "multirange") > 0


# --- redirect targets ---------------------------------------------------------------------

@pytest.mark.parametrize("query, reused", [
    ("", True),
    ("?X-Amz-Date=20300101T000000Z&X-Amz-Expires=3600", True),
    ("?X-Amz-Date=20200101T000000Z&X-Amz-Expires=3600", False),
    ("?Expires=1000", False),
])
async def test_blob_redirect_targets_are_reused_until_they_expire(docker_config, query, reused):
    blob = bytes(range(256)) * 40
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    refuse = []

    async def cdn(req: Request) -> Response:
        if refuse:
            return Response(403, {}, b"expired")
        start, _, last = req.headers["range"].removeprefix("bytes=").partition("-")
        s, e = int(start), int(last) + 1
        return Response(206, {"content-range": f"bytes {s}-{e - 1}/{len(blob)}"}, blob[s:e])

    async with serve(cdn) as cdn_srv:
        async def registry_handler(req: Request) -> Response:
            return Response(307, {"location": f"{cdn_srv.url}/b/{digest}{query}"})

        async with serve(with_ping(registry_handler)) as reg:
            async with RegistryClient(OPTIONS) as client:
                ref = parse_reference(f"{reg.host}/r/x:v1")
                for i in range(3):
                    assert await client.get_range(ref, digest, i * 100, i * 100 + 50) == \
                        blob[i * 100:i * 100 + 50]
                assert len(reg.seen("/v2/r/")) == (1 if reused else 3)
                assert len(cdn_srv.requests) == 3
                refuse.append(True)
                with pytest.raises(LazyfsError):
                    await client.get_range(ref, digest, 0, 10)
                refuse.clear()
                assert await client.get_range(ref, digest, 0, 10) == blob[:10]

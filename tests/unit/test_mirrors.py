"""Mirrors from hosts.toml in front of a registry, both in memory: order,
capabilities, skipping a failing mirror, single-range mirrors, and a 200
answered to a Range request taken as data."""

from __future__ import annotations

import functools
import random
from dataclasses import replace

import httpx
import pytest

from lazyfs.image import OpenOptions, open_image_async
from lazyfs.reference import parse_reference
from lazyfs.registry import RegistryClient
from lazyfs.store.blobs import Store
from lazyfs.testing import MemoryRegistry, build_layer

BIG = random.Random(3).randbytes(300_000)
PAD = random.Random(4).randbytes(70_000)
FILES = {"etc/": None, "etc/hostname": "box\n", "usr/": None, "usr/big.bin": BIG}
for i in range(6):
    FILES[f"etc/f{i}"] = f"file {i}\n" * 50
    FILES[f"usr/pad{i}"] = PAD[i:]


class Router(httpx.AsyncBaseTransport):
    """Several memory registries on one transport, each answering its own hosts."""

    def __init__(self, *registries: MemoryRegistry) -> None:
        self.registries = registries

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.netloc.decode()
        for r in self.registries:
            if host in (r.host, r.token_host, r.storage_host):
                return await r.handle_async_request(request)
        raise httpx.ConnectError(f"no such host: {host}", request=request)


@functools.cache
def estargz_layer():
    return build_layer("estargz", FILES, chunk_size=16384)


@pytest.fixture
def fleet(tmp_path):
    upstream, mirror = MemoryRegistry("upstream.test"), MemoryRegistry("mirror.test")
    layer = estargz_layer()
    pushed = upstream.push_image("app/one", "v1", [layer])
    mirror.push_image("app/one", "v1", [layer])
    return upstream, mirror, layer, pushed


def configure(tmp_path, text: str) -> str:
    root = tmp_path / "certs.d"
    (root / "upstream.test").mkdir(parents=True)
    (root / "upstream.test" / "hosts.toml").write_text(text)
    return str(root)


def options(tmp_path, upstream, mirror, text: str, **kw):
    return replace(upstream.options(hosts_dir=configure(tmp_path, text), **kw),
                   transport=Router(upstream, mirror))


async def read_all(ref, opts, store, names=("/usr/big.bin", "/etc/hostname")):
    async with open_image_async(ref, OpenOptions(registry=opts), store=store) as img:
        got = {}
        for name in names:
            node = img.index.resolve(name)
            got[name] = await img.read(node, 0, node.size)
        return got, img.stats()


async def test_a_mirror_serves_every_blob_and_the_upstream_resolves_tags(fleet, tmp_path):
    upstream, mirror, layer, pushed = fleet
    opts = options(tmp_path, upstream, mirror, '''
server = "https://upstream.test"
[host."https://mirror.test"]
  capabilities = ["pull"]
  [host."https://mirror.test".header]
    x-fleet = "yes"
''')
    got, stats = await read_all(pushed.ref, opts, Store(tmp_path / "cache"))
    assert got["/usr/big.bin"] == BIG and got["/etc/hostname"] == b"box\n"
    # The tag is resolved where "resolve" is allowed, everything by digest at the mirror.
    assert upstream.count("manifest") == 1 and upstream.count("range") == 0
    assert upstream.count("multirange") == upstream.count("blob") == 0
    assert mirror.count("range") + mirror.count("multirange") > 0
    assert all(r.headers.get("x-fleet") == "yes" for r in mirror.requests)
    assert stats["mirrors"][0]["host"] == "mirror.test"
    assert stats["layers"][0]["mode"] == "lazy"


async def test_a_dead_mirror_is_skipped_and_shown(fleet, tmp_path):
    upstream, mirror, layer, pushed = fleet
    opts = options(tmp_path, upstream, mirror, '''
[host."https://gone.test"]
[host."https://mirror.test"]
''')
    mirror.fault("status", kind=("range", "multirange"), status=503, times=None)
    got, stats = await read_all(pushed.ref, opts, Store(tmp_path / "cache"))
    assert got["/usr/big.bin"] == BIG
    states = {m["host"]: m for m in stats["mirrors"]}
    assert states["gone.test"]["state"] == "skipped"
    assert "cannot reach registry gone.test" in states["gone.test"]["last_failure"]
    assert states["mirror.test"]["state"] == "skipped"
    assert "HTTP 503" in states["mirror.test"]["last_failure"]
    # Skipped: one failing range request, then every range at the upstream.
    assert mirror.count("range") + mirror.count("multirange") == 1
    assert upstream.count("range") + upstream.count("multirange") > 0


async def test_no_directory_means_the_registry_alone(fleet, tmp_path):
    upstream, mirror, layer, pushed = fleet
    opts = replace(upstream.options(hosts_dir=str(tmp_path / "none")),
                   transport=Router(upstream, mirror))
    got, stats = await read_all(pushed.ref, opts, Store(tmp_path / "cache"))
    assert got["/usr/big.bin"] == BIG and not mirror.requests and "mirrors" not in stats


async def test_a_mirror_refusing_multi_range_is_asked_single_ranges_from_then_on(fleet, tmp_path):
    upstream, mirror, layer, pushed = fleet
    opts = options(tmp_path, upstream, mirror, '[host."https://mirror.test"]\n')
    mirror.fault("status", kind="multirange", status=501, times=None)
    names = [f"/etc/f{i}" for i in range(6)]
    async with open_image_async(pushed.ref, OpenOptions(registry=opts),
                                store=Store(tmp_path / "cache")) as img:
        nodes = [img.index.resolve(n) for n in names]
        await img.warm(nodes[:3])
        await img.warm(nodes[3:])
        assert [await img.read(n, 0, n.size) for n in nodes] == \
            [FILES[n[1:]].encode() for n in names]
        stats = img.stats()
    assert mirror.count("multirange") == 1, "refused once, then never asked again"
    assert "HTTP 501" in stats["mirrors"][0]["single_range"]
    assert stats["mirrors"][0]["state"] == "in use"
    assert upstream.count("range") + upstream.count("multirange") == 0


async def test_a_mirror_filling_itself_answers_200_and_the_layer_stays_lazy(fleet, tmp_path):
    upstream, mirror, layer, pushed = fleet
    opts = options(tmp_path, upstream, mirror, '[host."https://mirror.test"]\n')
    # The first range request of the blob is answered whole, as distribution's
    # proxy mode answers while it fetches the blob.
    mirror.fault("ignore_range", kind=("range", "multirange"), digest=layer.digest, times=1)
    store = Store(tmp_path / "cache")
    async with open_image_async(pushed.ref, OpenOptions(registry=opts), store=store) as img:
        node = img.index.resolve("/etc/hostname")
        assert await img.read(node, 0, node.size) == b"box\n"
        node = img.index.resolve("/usr/big.bin")
        assert await img.read(node, 1000, 5000) == BIG[1000:6000]
        s = img.stats()["layers"][0]
    assert s["mode"] == "lazy" and not s["reason"]
    assert mirror.count("blob", digest=layer.digest) == 0 and upstream.count("range") == 0
    # The TOC lies at the end of the blob: that first whole answer was kept, verified.
    assert store.blob_path(layer.digest) is not None
    assert s["pulled_bytes"] == layer.size and "kept" in s["pull_reason"]


async def test_a_registry_answering_200_once_keeps_ranges_and_uses_the_bytes(tmp_path):
    registry = MemoryRegistry()
    layer = estargz_layer()
    pushed = registry.push_image("app/tar", "v1", [layer])
    store = Store(tmp_path / "cache")
    async with open_image_async(pushed.ref, OpenOptions(registry=registry.options()),
                                store=store) as img:
        registry.fault("ignore_range", kind=("range", "multirange"), digest=layer.digest,
                       times=1)
        node = img.index.resolve("/etc/hostname")
        assert await img.read(node, 0, node.size) == b"box\n"
        node = img.index.resolve("/usr/big.bin")
        assert await img.read(node, 200_000, 1000) == BIG[200_000:201_000]
        s = img.stats()["layers"][0]
    assert s["mode"] == "lazy" and s["pulled_bytes"] == 0
    assert registry.count("blob", digest=layer.digest) == 0
    assert store.blob_path(layer.digest) is None
    [whole] = [r for r in registry.seen(digest=layer.digest) if r.fault == "ignore_range"]
    assert whole.sent < layer.size, "the rest of the 200 was left unread"


async def test_a_mirror_sending_bad_bytes_is_skipped_and_the_read_succeeds(fleet, tmp_path):
    upstream, mirror, layer, pushed = fleet
    opts = options(tmp_path, upstream, mirror, '[host."https://mirror.test"]\n')
    store = Store(tmp_path / "cache")
    async with open_image_async(pushed.ref, OpenOptions(registry=opts), store=store) as img:
        bad = bytearray(layer.blob)
        at = layer.blob.index(BIG[:64])
        bad[at:at + 4000] = bytes(4000)  # the mirror's copy rots after the TOC was read
        mirror.blobs[layer.digest] = bytes(bad)
        node = img.index.resolve("/usr/big.bin")
        assert await img.read(node, 0, 3000) == BIG[:3000]
        s = img.stats()
    [m] = s["mirrors"]
    assert m["state"] == "skipped" and m["last_failure"]
    assert s["layers"][0]["verify_failures"] >= 1
    assert upstream.count("range") >= 1


async def test_override_path_moves_the_api_root(fleet, tmp_path):
    upstream, mirror, layer, pushed = fleet
    opts = options(tmp_path, upstream, mirror, '''
[host."https://mirror.test/custom/api"]
  override_path = true
''')
    async with RegistryClient(opts) as client:
        raw, _, digest = await client.get_manifest(parse_reference(pushed.by_digest))
    assert digest == pushed.digest
    # No ping of a moved API root; the mirror lacks the path, the upstream answers.
    assert [r.url.path for r in mirror.requests] == [
        f"/custom/api/app/one/manifests/{pushed.digest}"]
    assert upstream.count("manifest") == 1


def test_stats_table_tells_each_mirrors_state():
    from lazyfs.cli.statstable import render_stats
    doc = {"reference": "r", "digest": "d", "layers": [], "mirrors": [
        {"host": "cache:5000", "requests": 3, "failures": 1, "state": "skipped",
         "skipped_for_seconds": 20.2, "last_failure": "HTTP 503"},
        {"host": "spegel:30020", "requests": 7, "failures": 0, "state": "in use",
         "single_range": "a multi-range request was answered with HTTP 501"}]}
    text = render_stats(doc)
    assert "mirror cache:5000: 3 answers, skipped for 20s more after 1 failures (HTTP 503)" in text
    assert ("mirror spegel:30020: 7 answers; single ranges only (a multi-range request was "
            "answered with HTTP 501)") in text


async def test_a_mirror_redirecting_to_storage_is_followed_like_a_registry(tmp_path):
    upstream = MemoryRegistry("upstream.test")
    mirror = MemoryRegistry("mirror.test", redirect=True, storage_host="storage.mirror.test",
                            token_host="auth.mirror.test")
    layer = estargz_layer()
    pushed = upstream.push_image("app/one", "v1", [layer])
    mirror.push_image("app/one", "v1", [layer])
    opts = options(tmp_path, upstream, mirror, '[host."https://mirror.test"]\n')
    got, stats = await read_all(pushed.ref, opts, Store(tmp_path / "cache"))
    assert got["/usr/big.bin"] == BIG
    storage = [r for r in mirror.requests if r.host == "storage.mirror.test"]
    redirects = [r for r in mirror.requests if r.host == "mirror.test" and r.status == 307]
    assert storage and redirects and len(redirects) < len(storage), "the target is reused"
    assert upstream.count("range") + upstream.count("multirange") == 0
    assert stats["mirrors"][0]["state"] == "in use"

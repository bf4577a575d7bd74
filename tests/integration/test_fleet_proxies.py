"""What sits between a fleet and its registry besides a pull-through cache:
a forward proxy from the environment (plain HTTP and CONNECT), and a mirror
that takes one range per request (as Spegel, or GHCR's 501 to multi-range)."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import httpx
import pytest

from lazyfs.errors import RegistryUnreachable
from lazyfs.image import OpenOptions, open_image_async
from lazyfs.registry import RegistryClient
from lazyfs.registry.client import RegistryOptions
from lazyfs.reference import parse_reference
from lazyfs.store.blobs import Store
from lazyfs.testing.httpproxy import HttpProxy
from lazyfs.testing import build_layer
from lazyfs.testing.push import push_image, push_oci_layout
from lazyfs.testing.realregistry import free_port, start_registry
from tests.support.faultproxy import fault_proxy

GOLDEN = Path(__file__).parents[1] / "data" / "estargz-ctr-remote"
NAME = "registry.fleet.test"
"""A name no resolver knows: only the proxy can reach it."""
WARM = ["/etc/hostname", "/data/sparse", "/data/xattr-file", "/usr/share/words.txt",
        "/etc/empty", "/data/hostname-hard"]


@pytest.fixture(scope="module")
def golden(registry) -> str:
    with registry.client() as c:
        return push_oci_layout(c, "fleet/proxied", GOLDEN)


def certs_for(tmp_path: Path, host: str, files: dict[str, str]) -> Path:
    name, _, port = host.rpartition(":")
    d = tmp_path / "certs.d" / f"{name}_{port}_"
    d.mkdir(parents=True)
    for fname, text in files.items():
        (d / fname).write_text(text)
    return tmp_path / "certs.d"


async def read_some(ref: str, opts: RegistryOptions, store: Store) -> dict:
    async with open_image_async(ref, OpenOptions(registry=opts), store=store) as img:
        nodes = [img.index.resolve(n) for n in WARM]
        await img.warm(nodes)
        got = {n.ino: await img.read(n, 0, n.size) for n in nodes}
        big = img.index.resolve("/usr/bin/big")
        got["big"] = await img.read(big, 1 << 20, 200_000)
        return {"data": got, "stats": img.stats()}


async def test_http_proxy_from_the_environment_carries_every_request(
        registry, golden, tmp_path, monkeypatch, docker_config):
    proxy = HttpProxy({NAME: "127.0.0.1"})
    host = f"{NAME}:{registry.host.rpartition(':')[2]}"
    certs = certs_for(tmp_path, host, {"hosts.toml": f'[host."http://{host}"]\n'})
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost,.example.com")
    try:
        direct = await read_some(f"{registry.host}/{golden}", RegistryOptions(),
                                 Store(tmp_path / "direct"))
        assert not proxy.forwarded, "loopback is never proxied"
        proxied = await read_some(f"{host}/{golden}", RegistryOptions(hosts_dir=str(certs)),
                                  Store(tmp_path / "proxied"))
        assert proxied["data"] == direct["data"]
        assert proxy.forwarded and set(proxy.forwarded) == {host}
        monkeypatch.setenv("NO_PROXY", "fleet.test")
        async with RegistryClient(RegistryOptions(hosts_dir=str(certs))) as client:
            with pytest.raises(RegistryUnreachable):
                await client.get_manifest(parse_reference(f"{host}/{golden}"))
    finally:
        proxy.close()


def _certificate(where: Path) -> tuple[Path, Path]:
    cert, key = where / "registry.crt", where / "registry.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={NAME}", "-addext", f"subjectAltName=DNS:{NAME}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


async def test_https_through_a_connect_proxy_with_the_ca_from_certs_d(
        tmp_path, monkeypatch, docker_config):
    cert, key = _certificate(tmp_path)
    port = free_port()
    tls = start_registry(tmp_path / "tls-registry", port=port, tls=(cert, key))
    proxy = HttpProxy({NAME: "127.0.0.1"})
    try:
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=False) as c:
            repo = push_oci_layout(c, "fleet/tls", GOLDEN)
        host = f"{NAME}:{port}"
        ref = f"{host}/{repo}"
        monkeypatch.setenv("HTTPS_PROXY", proxy.address)
        # Without the CA the registry is not trusted...
        bare = tmp_path / "bare"
        bare.mkdir()
        async with RegistryClient(RegistryOptions(hosts_dir=str(bare))) as client:
            with pytest.raises(RegistryUnreachable, match="not trusted"):
                await client.get_manifest(parse_reference(ref))
        # ...with it in docker's layout (a *.crt file, no hosts.toml) it is.
        certs = certs_for(tmp_path, host, {"ca.crt": cert.read_text()})
        got = await read_some(ref, RegistryOptions(hosts_dir=str(certs)), Store(tmp_path / "s"))
        assert got["stats"]["layers"][0]["mode"] == "lazy"
        assert proxy.connects and set(proxy.connects) == {host} and not proxy.forwarded
    finally:
        proxy.close()
        tls.stop()


@pytest.fixture(scope="module")
def scattered(registry) -> str:
    """An eStargz image whose small files lie far apart in the blob, so one
    read of them all is a multi-range request."""
    rng = random.Random(17)
    entries = {"etc/": None}
    for i in range(12):
        entries[f"etc/small{i}"] = f"small file {i}\n" * 20
        entries[f"pad/p{i}"] = rng.randbytes(100_000)
    layer = build_layer("estargz", entries)
    with registry.client() as c:
        push_image(c, "fleet/scattered", "v1", [layer.blob], layer_media_type=layer.media_type,
                   layer_annotations=[layer.annotations], diff_ids=[layer.diff_id])
    return "fleet/scattered:v1"


async def read_scattered(ref: str, opts: RegistryOptions, store: Store) -> dict:
    async with open_image_async(ref, OpenOptions(registry=opts), store=store) as img:
        nodes = [img.index.resolve(f"/etc/small{i}") for i in range(12)]
        await img.warm(nodes[:6])
        await img.warm(nodes[6:])
        data = [await img.read(n, 0, n.size) for n in nodes]
        pad = img.index.resolve("/pad/p5")
        data.append(await img.read(pad, 50_000, 20_000))
        return {"data": data, "stats": img.stats()}


async def test_a_single_range_mirror_costs_what_a_multi_range_registry_does(
        registry, scattered, tmp_path, docker_config):
    async with fault_proxy(registry.host) as counted:
        direct = await read_scattered(f"{counted.host}/{scattered}", RegistryOptions(),
                                      Store(tmp_path / "direct"))
        multi_bytes = counted.bytes_sent("range", "multirange")
        assert counted.count("multirange") == 2
    async with fault_proxy(registry.host) as mirror:
        mirror.arm("multirange", "status", status=501, times=None)
        certs = certs_for(tmp_path, registry.host,
                          {"hosts.toml": f'[host."http://{mirror.host}"]\n'
                                         '  capabilities = ["pull", "resolve"]\n'})
        single = await read_scattered(f"{registry.host}/{scattered}",
                                      RegistryOptions(hosts_dir=str(certs)),
                                      Store(tmp_path / "single"))
        single_bytes = mirror.bytes_sent("range", "multirange")
        refused = mirror.count("multirange")
    assert single["data"] == direct["data"]
    [state] = single["stats"]["mirrors"]
    assert "HTTP 501" in state["single_range"] and state["state"] == "in use"
    assert refused == 1, "asked once, then single ranges only"
    assert single["stats"]["layers"][0]["mode"] == "lazy"
    assert single_bytes <= 1.2 * multi_bytes, (single_bytes, multi_bytes)


async def test_a_200_to_a_range_request_is_used_and_ranges_go_on(
        registry, scattered, tmp_path, docker_config):
    """Over a real connection: the bytes needed are taken from the front of
    the whole blob, the connection is dropped, the layer stays lazy."""
    async with fault_proxy(registry.host) as proxy:
        ref = f"{proxy.host}/{scattered}"
        store = Store(tmp_path / "s")
        async with open_image_async(ref, OpenOptions(registry=RegistryOptions()),
                                    store=store) as img:
            proxy.arm(("range", "multirange"), "ignore_range", times=1)
            first = img.index.resolve("/etc/small0")
            assert await img.read(first, 0, first.size) == b"small file 0\n" * 20
            later = img.index.resolve("/etc/small9")
            assert await img.read(later, 0, later.size) == b"small file 9\n" * 20
            s = img.stats()["layers"][0]
        whole = [r for r in proxy.seen if r.fault == "ignore_range"]
        assert len(whole) == 1 and whole[0].status == 200
        assert proxy.count("blob") == 1, "only the config, never the layer whole"
        assert s["mode"] == "lazy" and s["pulled_bytes"] == 0 and not s["reason"]
        assert store.blob_path(s["digest"]) is None

"""A fleet behind a pull-through cache, configured the containerd way.

The real distribution registry in proxy mode (``proxy: remoteurl:``) stands
in front of the test registry, named in a ``hosts.toml``; a counting proxy
in front of the test registry sees everything the fleet costs it. Each
"host" is a fresh cache and a real mount of the same eStargz image.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import trio

from lazyfs.testing.proxy import TcpProxy
from lazyfs.testing.push import push_oci_layout
from lazyfs.testing.realregistry import start_registry
from tests.support.climount import lazyfs, lazyfs_env, mounted
from tests.support.faultproxy import fault_proxy

pytestmark = pytest.mark.slow

GOLDEN = Path(__file__).parents[1] / "data" / "estargz-ctr-remote"
READ = ["etc/hostname", "usr/bin/big", "usr/share/words.txt"]


def _layer_digest() -> str:
    index = json.loads((GOLDEN / "index.json").read_text())
    digest = index["manifests"][0]["digest"].partition(":")[2]
    manifest = json.loads((GOLDEN / "blobs" / "sha256" / digest).read_bytes())
    return manifest["layers"][0]["digest"]


LAYER = _layer_digest()


def _expected() -> dict[str, bytes]:
    blob = (GOLDEN / "blobs" / "sha256" / LAYER.partition(":")[2]).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tf:
        return {name: tf.extractfile(name).read() for name in READ}


EXPECTED = _expected()


@pytest.fixture(scope="module")
def golden(registry) -> str:
    with registry.client() as c:
        return push_oci_layout(c, "fleet/estargz", GOLDEN)


def hosts_dir(tmp_path: Path, upstream: str, mirror: str) -> Path:
    """``certs.d`` as containerd (or Spegel) writes it for the upstream's name."""
    root = tmp_path / "certs.d"
    name, _, port = upstream.rpartition(":")
    d = root / f"{name}_{port}_"
    d.mkdir(parents=True)
    (d / "hosts.toml").write_text(f'server = "http://{upstream}"\n\n'
                                  f'[host."http://{mirror}"]\n'
                                  '  capabilities = ["pull", "resolve"]\n')
    return root


def host_env(tmp_path: Path, name: str, certs: Path) -> dict:
    env = lazyfs_env(tmp_path / name)
    env["LAZYFS_HOSTS_DIR"] = str(certs)
    return env


async def read_files(mnt: Path) -> dict[str, bytes]:
    def cat(name: str) -> bytes:
        return subprocess.run(["cat", str(mnt / name)], check=True, capture_output=True,
                              timeout=120).stdout
    return {name: await trio.to_thread.run_sync(cat, name) for name in READ}


def stats(mnt: Path, env: dict) -> dict:
    return json.loads(lazyfs("stats", "--json", str(mnt), env=env).stdout)


async def filled(mirror, digest: str, limit: float = 30) -> None:
    """Wait until the pull-through cache has the blob in its own storage."""
    hexd = digest.partition(":")[2]
    data = mirror.root / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256" / \
        hexd[:2] / hexd / "data"
    deadline = time.monotonic() + limit
    while not data.exists():
        assert time.monotonic() < deadline, "the mirror never stored the blob"
        await trio.sleep(0.1)


async def test_the_second_host_reads_everything_from_the_pull_through_cache(
        registry, golden, tmp_path):
    async with fault_proxy(registry.host) as upstream:
        mirror = await trio.to_thread.run_sync(lambda: start_registry(
            tmp_path / "mirror", proxy_remote=f"http://{upstream.host}"))
        try:
            certs = hosts_dir(tmp_path, upstream.host, mirror.host)
            ref = f"{upstream.host}/{golden}"
            one = host_env(tmp_path, "one", certs)
            async with mounted(ref, tmp_path / "mnt1", one) as m:
                assert await read_files(m) == EXPECTED
                first = stats(m, one)
            await filled(mirror, LAYER)
            served = upstream.bytes_sent(path=LAYER)
            whole_gets = upstream.count("blob", path=LAYER)

            # The second host names the directory with the option instead.
            two = lazyfs_env(tmp_path / "two")
            async with mounted(ref, tmp_path / "mnt2", two, "--hosts-dir", str(certs)) as m:
                assert await read_files(m) == EXPECTED
                second = stats(m, two)
        finally:
            mirror.stop()
    # Nothing of the layer ever reached the fleet from the upstream directly:
    # its only readers were the cache filling itself (distribution 2.8 opens
    # the blob upstream twice on a miss: once to store, once to pass on).
    assert upstream.count("range", "multirange") == 0
    assert 1 <= whole_gets <= 2 and served <= 2 * first["layers"][0]["size"]
    # The second host cost the upstream no byte of the layer.
    assert upstream.bytes_sent(path=LAYER) == served
    assert upstream.count("blob", path=LAYER) == whole_gets
    for doc in (first, second):
        [m] = doc["mirrors"]
        assert m["host"] == mirror.host and m["state"] == "in use" and m["requests"] > 0
        assert doc["layers"][0]["mode"] == "lazy"
    # The first host met the cache filling itself (a 200 with the whole,
    # small, blob, kept); the second read ranges it already holds.
    assert first["layers"][0]["pulled_bytes"] == first["layers"][0]["size"]
    assert second["layers"][0]["pulled_bytes"] == 0 and second["layers"][0]["range_bytes"] > 0


async def test_a_mirror_killed_mid_read_hands_over_to_the_upstream(registry, golden, tmp_path):
    mirror = await trio.to_thread.run_sync(lambda: start_registry(
        tmp_path / "mirror", proxy_remote=f"http://{registry.host}"))
    slow = TcpProxy(mirror.host, rate=24_000)
    try:
        # Fill the cache first, so the host reads ranges from it.
        with mirror.client() as c:
            assert c.get(f"/v2/fleet/estargz/blobs/{LAYER}").status_code == 200
        await filled(mirror, LAYER)
        async with fault_proxy(registry.host) as upstream:
            certs = hosts_dir(tmp_path, upstream.host, slow.host)
            env = host_env(tmp_path, "three", certs)
            async with mounted(f"{upstream.host}/{golden}", tmp_path / "mnt", env) as m:
                before = slow.bytes_down
                got: dict[str, bytes] = {}

                async def read_words() -> None:
                    got["words"] = await trio.to_thread.run_sync(lambda: subprocess.run(
                        ["cat", str(m / "usr/share/words.txt")], check=True,
                        capture_output=True, timeout=120).stdout)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read_words)
                    while slow.bytes_down < before + 8000:
                        await trio.sleep(0.02)
                    # The cache's machine goes away: its process and its connections.
                    mirror.proc.kill()
                    slow.close()
                    assert "words" not in got, "killed in the middle of the read"
                assert got["words"] == EXPECTED["usr/share/words.txt"]
                assert await read_files(m) == EXPECTED
                doc = stats(m, env)
    finally:
        mirror.stop()
        slow.close()
    [state] = doc["mirrors"]
    assert state["state"] == "skipped" and "cut short" in state["last_failure"]
    assert doc["fuse"]["errors"] == 0 and doc["layers"][0]["failed_reads"] == 0
    assert upstream.count("range", "multirange") > 0

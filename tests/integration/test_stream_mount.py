"""First mount of a gzip image: usable before its layers are indexed.

The registry sits behind the fault proxy, which can hold back the requests
for one layer (or the later part of it) until the test lets them through;
meanwhile the mount must answer what is already certain and wait for the
rest, and afterwards show exactly the image.
"""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import random
import subprocess
import tarfile
import time

import pytest
import trio

from lazyfs.testing.push import push_image, sha256
from tests.support.climount import lazyfs, lazyfs_env, mounted
from tests.support.faultproxy import fault_proxy

pytestmark = pytest.mark.slow

MTIME = 1_700_000_000
BIG = random.Random(11).randbytes(24 << 20)
"""Incompressible, so the base layer spans several download chunks."""


def _tar(entries: list[tuple]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, data, mode in entries:
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.mtime = kind, mode, MTIME
            if kind == tarfile.SYMTYPE:
                ti.linkname = data.decode()
                tf.addfile(ti)
            elif kind == tarfile.REGTYPE:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


DIR, REG, SYM = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE
BASE = _tar([("./", DIR, b"", 0o755), ("etc", DIR, b"", 0o755),
             ("etc/os-release", REG, b"ID=lazyfs\n", 0o644),
             ("etc/hostname", REG, b"base\n", 0o644),
             ("usr", DIR, b"", 0o755), ("usr/lib", DIR, b"", 0o755),
             ("usr/lib/big.bin", REG, BIG, 0o644),
             ("usr/lib/tail.txt", REG, b"the end\n", 0o644),
             ("lib", SYM, b"usr/lib", 0o777)])
MIDDLE = _tar([("etc", DIR, b"", 0o755), ("etc/.wh.hostname", REG, b"", 0o644),
               ("etc/app.conf", REG, b"mode=fast\n", 0o600)])
TOP = _tar([("etc", DIR, b"", 0o755), ("etc/motd", REG, b"hello\n", 0o644)])
LAYERS = [gzip.compress(t, mtime=0) for t in (BASE, MIDDLE, TOP)]
BASE_DIGEST = sha256(LAYERS[0])


@pytest.fixture(scope="module")
def pushed(registry):
    with registry.client() as c:
        push_image(c, "stream/three", "v1", LAYERS)
    return "stream/three:v1"


async def _run(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return await trio.to_thread.run_sync(
        lambda: subprocess.run(argv, capture_output=True, timeout=timeout))


def _stats(mnt, env) -> dict:
    return json.loads(lazyfs("stats", "--json", str(mnt), env=env).stdout)


async def _until_indexed(mnt, env, limit: float = 60) -> dict:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        doc = await trio.to_thread.run_sync(_stats, mnt, env)
        if doc.get("index") != "indexing":
            return doc
        await trio.sleep(0.1)
    raise AssertionError("the image was not indexed in time")


class Pending:
    """A command run in a thread, to see whether it has finished yet."""

    def __init__(self, nursery, *argv: str):
        self.result: subprocess.CompletedProcess | None = None
        nursery.start_soon(self._go, argv)

    async def _go(self, argv) -> None:
        self.result = await _run(*argv)


async def test_the_top_layers_answer_while_the_base_layer_is_held(registry, pushed, tmp_path):
    env = lazyfs_env(tmp_path)
    mnt = tmp_path / "mnt"
    async with fault_proxy(registry.host) as proxy:
        gate = trio.Event()
        proxy.arm(("blob", "range"), "hold", times=None, path=BASE_DIGEST, gate=gate)
        ref = f"{proxy.host}/{pushed}"
        started = time.monotonic()
        async with mounted(ref, mnt, env) as m:
            assert time.monotonic() - started < 20
            motd = await _run("cat", str(m / "etc/motd"))
            assert motd.stdout == b"hello\n"
            conf = await _run("stat", "-c", "%a %s", str(m / "etc/app.conf"))
            assert conf.stdout == b"600 10\n"
            gone = await _run("cat", str(m / "etc/hostname"))
            assert b"No such file" in gone.stderr
            assert (await trio.to_thread.run_sync(_stats, m, env))["index"] == "indexing"
            text = await trio.to_thread.run_sync(lambda: lazyfs("stats", str(m), env=env).stdout)
            assert "index being built in the background (2 of 3 layers done)" in text
            assert "being indexed: " in text
            async with trio.open_nursery() as nursery:
                lower = Pending(nursery, "cat", str(m / "etc/os-release"))
                listing = Pending(nursery, "ls", str(m / "etc"))
                missing = Pending(nursery, "stat", str(m / "etc/nothing"))
                await trio.sleep(1.5)
                assert (lower.result, listing.result, missing.result) == (None, None, None)
                gate.set()
            assert lower.result.stdout == b"ID=lazyfs\n"
            assert listing.result.stdout.split() == [b"app.conf", b"motd", b"os-release"]
            assert b"No such file" in missing.result.stderr
            doc = await _until_indexed(m, env)
            assert doc["index"] == "ready" and doc["index_seconds"] > 0
            text = await trio.to_thread.run_sync(lambda: lazyfs("stats", str(m), env=env).stdout)
            assert "index built in " in text
            assert (await _run("sha256sum", str(m / "lib/big.bin"))).stdout.split()[0] \
                == sha256(BIG).partition(":")[2].encode()
            assert (await _run("cat", str(m / "lib/tail.txt"))).stdout == b"the end\n"
            assert os.stat(m / "etc/motd").st_ino < 1 << 60
    again = await trio.to_thread.run_sync(
        lambda: lazyfs("ls", f"{registry.host}/{pushed}", "/etc", env=env).stdout)
    assert again.split() == ["app.conf", "motd", "os-release"]


@pytest.mark.parametrize("early", [True, False])
async def test_early_reads_serve_a_file_before_its_layer_is_complete(registry, pushed,
                                                                     tmp_path, early):
    env = lazyfs_env(tmp_path)
    async with fault_proxy(registry.host) as proxy:
        gate = trio.Event()
        proxy.arm("range", "hold", times=None, path=BASE_DIGEST, gate=gate,
                  from_offset=1 << 20)
        ref = f"{proxy.host}/{pushed}"
        extra = ("--early-reads",) if early else ()
        async with mounted(ref, tmp_path / "mnt", env, *extra) as m:
            async with trio.open_nursery() as nursery:
                first = Pending(nursery, "cat", str(m / "etc/os-release"))
                tail = Pending(nursery, "cat", str(m / "usr/lib/tail.txt"))
                await trio.sleep(2)
                if early:
                    assert first.result is not None and first.result.stdout == b"ID=lazyfs\n"
                    layer = (await trio.to_thread.run_sync(_stats, m, env))["layers"][0]
                    assert layer["indexing"]["state"] == "indexing"
                else:
                    assert first.result is None
                assert tail.result is None
                gate.set()
            assert first.result.stdout == b"ID=lazyfs\n"
            assert tail.result.stdout == b"the end\n"


async def test_a_layer_that_fails_its_digest_is_never_served(registry, pushed, tmp_path):
    env = lazyfs_env(tmp_path)
    async with fault_proxy(registry.host) as proxy:
        proxy.arm(("blob", "range"), "flip", times=None, path=BASE_DIGEST, from_offset=0)
        ref = f"{proxy.host}/{pushed}"
        async with mounted(ref, tmp_path / "mnt", env) as m:
            assert (await _run("cat", str(m / "etc/motd"))).stdout == b"hello\n"
            bad = await _run("cat", str(m / "etc/os-release"))
            assert bad.returncode != 0 and bad.stdout == b""
            assert os.strerror(errno.EIO).encode() in bad.stderr
            doc = await _until_indexed(m, env)
            assert doc["index"].startswith("failed:") and BASE_DIGEST in doc["index"]
            assert doc["layers"][0]["indexing"]["state"].startswith("failed:")
    stored = list((tmp_path / "cache").glob("blobs/sha256/*"))
    assert BASE_DIGEST.partition(":")[2] not in {p.name for p in stored}


async def test_a_registry_that_ignores_range_is_asked_once_then_streamed(registry, pushed, tmp_path):
    env = lazyfs_env(tmp_path)
    async with fault_proxy(registry.host) as proxy:
        proxy.arm(("range", "multirange"), "ignore_range", times=None)
        async with mounted(f"{proxy.host}/{pushed}", tmp_path / "mnt", env) as m:
            assert (await _run("cat", str(m / "etc/os-release"))).stdout == b"ID=lazyfs\n"
            doc = await _until_indexed(m, env)
            assert doc["index"] == "ready"
            assert (await _run("cat", str(m / "usr/lib/tail.txt"))).stdout == b"the end\n"
        # one range request finds out, then one plain stream; no parallel 200s
        assert proxy.count("range", path=BASE_DIGEST) == 1
        assert proxy.count("blob", path=BASE_DIGEST) == 1


@pytest.mark.parametrize("flags", [("--push-index",), ("--wait-index", "--push-index")])
async def test_push_index_lets_a_fresh_machine_mount_without_a_full_pass(registry, pushed,
                                                                         tmp_path, flags):
    first = lazyfs_env(tmp_path / "one")
    ref = f"{registry.host}/stream/pushed:v1"
    with registry.client() as c:
        push_image(c, "stream/pushed", "v1", LAYERS)
    async with mounted(ref, tmp_path / "mnt1", first, *flags) as m:
        doc = await _until_indexed(m, first)
        for _ in range(100):
            if doc.get("published_index"):
                break
            await trio.sleep(0.1)
            doc = await trio.to_thread.run_sync(_stats, m, first)
        assert doc["published_index"].startswith("sha256:")
    second = lazyfs_env(tmp_path / "two")
    async with fault_proxy(registry.host) as proxy:
        async with mounted(f"{proxy.host}/stream/pushed:v1", tmp_path / "mnt2", second) as m:
            assert (await _run("cat", str(m / "etc/os-release"))).stdout == b"ID=lazyfs\n"
            doc = await trio.to_thread.run_sync(_stats, m, second)
            assert doc.get("index") is None
        assert proxy.bytes_sent(path=BASE_DIGEST) < len(LAYERS[0]) // 4


async def test_a_refused_index_push_leaves_the_mount_serving(registry, pushed, tmp_path):
    env = lazyfs_env(tmp_path)
    async with fault_proxy(registry.host) as proxy:
        proxy.arm("other", "status", times=None, status=403)
        async with mounted(f"{proxy.host}/{pushed}", tmp_path / "mnt", env, "--push-index") as m:
            doc = await _until_indexed(m, env)
            await trio.sleep(0.5)
            doc = await trio.to_thread.run_sync(_stats, m, env)
            assert doc["index"] == "ready" and "published_index" not in doc
            assert proxy.count("other") >= 1
            assert (await _run("cat", str(m / "etc/app.conf"))).stdout == b"mode=fast\n"


async def test_a_range_cut_short_while_indexing_is_asked_for_again(registry, pushed, tmp_path):
    env = lazyfs_env(tmp_path)
    async with fault_proxy(registry.host) as proxy:
        proxy.arm("range", "truncate", path=BASE_DIGEST, from_offset=1)
        async with mounted(f"{proxy.host}/{pushed}", tmp_path / "mnt", env) as m:
            doc = await _until_indexed(m, env)
            assert doc["index"] == "ready"
            assert (await _run("sha256sum", str(m / "usr/lib/big.bin"))).stdout.split()[0] \
                == sha256(BIG).partition(":")[2].encode()
        assert [s.fault for s in proxy.seen].count("truncate") == 1


async def test_an_index_failed_by_an_outage_recovers_on_the_next_access(registry, pushed,
                                                                        tmp_path):
    env = dict(lazyfs_env(tmp_path), LAZYFS_RETRY_DEADLINE="2")
    async with fault_proxy(registry.host) as proxy:
        proxy.arm(("blob", "range"), "status", times=None, path=BASE_DIGEST, status=503)
        async with mounted(f"{proxy.host}/{pushed}", tmp_path / "mnt", env) as m:
            bad = await _run("cat", str(m / "etc/os-release"))
            assert bad.returncode != 0 and os.strerror(errno.EIO).encode() in bad.stderr
            doc = await _until_indexed(m, env)
            assert doc["index"].startswith("failed:") and "HTTP 503" in doc["index"]
            assert "the next lookup or read starts it again" in doc["index"]
            proxy.clear()
            good = await _run("cat", str(m / "etc/os-release"))
            assert good.stdout == b"ID=lazyfs\n"
            doc = await _until_indexed(m, env)
            assert doc["index"] == "ready" and doc["index_attempts"] == 2
            text = await trio.to_thread.run_sync(lambda: lazyfs("stats", str(m), env=env).stdout)
            assert "index built in " in text

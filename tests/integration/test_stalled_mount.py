"""A mount whose registry stalls: reads fail within their deadline, stalled
requests do not hold back the other reads of the mount, and a reader killed
while it waits goes away at once.

A real registry behind the fault proxy, a real mount, ``cat`` as the reader.
The image is eStargz, so each read is a range request of its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from contextlib import asynccontextmanager

import pytest
import trio

from lazyfs.testing import build_layer
from lazyfs.testing.push import push_image
from tests.support.climount import cli_mount, lazyfs_env
from tests.support.faultproxy import fault_proxy

pytestmark = pytest.mark.slow

STALLED = {f"s/f{i}": bytes([97 + i]) * 300_000 for i in range(8)}
FREE = {"ok/hello": b"hello\n" * 1000}


@pytest.fixture(scope="module")
def pushed(registry):
    layers = [build_layer("estargz", {"s/": None, **STALLED}, chunk_size=1 << 20),
              build_layer("estargz", {"ok/": None, **FREE})]
    repo = f"stall/img-{uuid.uuid4().hex[:8]}"
    with registry.client() as c:
        push_image(c, repo, "v1", [la.blob for la in layers],
                   layer_media_type=layers[0].media_type,
                   layer_annotations=[la.annotations for la in layers],
                   diff_ids=[la.diff_id for la in layers])
    return f"{repo}:v1", layers[0].digest


@asynccontextmanager
async def mounted(registry, ref, tmp_path, **env_extra):
    env = dict(lazyfs_env(tmp_path), **env_extra)
    async with fault_proxy(registry.host) as proxy:
        cm = cli_mount(f"{proxy.host}/{ref}", tmp_path / "mnt", env)
        mnt = await trio.to_thread.run_sync(cm.__enter__)
        try:
            yield proxy, mnt
        finally:
            await trio.to_thread.run_sync(cm.__exit__, None, None, None)


async def _cat(path) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = await trio.to_thread.run_sync(
        lambda: subprocess.run(["cat", str(path)], capture_output=True, timeout=120))
    return done, time.monotonic() - started


async def test_stalled_reads_fail_within_their_deadline_and_block_no_other_read(
        registry, pushed, tmp_path):
    ref, stalled_layer = pushed
    async with mounted(registry, ref, tmp_path, LAZYFS_READ_DEADLINE="4") as (proxy, mnt):
        proxy.arm(("range", "multirange"), "stall", times=None, seconds=600,
                  path=stalled_layer)
        results: dict[str, tuple] = {}

        async def stalled(name: str) -> None:
            results[name] = await _cat(mnt / name)

        async with trio.open_nursery() as nursery:
            for name in STALLED:
                nursery.start_soon(stalled, name)
            await trio.sleep(1.0)
            free, took = await _cat(mnt / "ok/hello")
            assert free.returncode == 0 and free.stdout == FREE["ok/hello"]
            assert not results, "the free read waited until the stalled ones had failed"
        for name, (done, took) in results.items():
            assert done.returncode != 0 and b"Input/output error" in done.stderr, name
            # the kernel asks again once after a failed readahead: twice the deadline
            assert took < 14, f"{name}: failed after {took:.1f} s, past twice its 4 s deadline"
        proxy.clear()
        done, _ = await _cat(mnt / "s/f2")
        assert done.stdout == STALLED["s/f2"], "the mount recovers once the registry answers"


DIRECT_READ = ["dd", "if={}", "iflag=direct", "bs=65536", "count=1"]
"""A buffered read (cat) waits for its page killably, and leaves at once on
its own; an O_DIRECT read waits for the daemon's answer itself,
uninterruptibly, even once killed."""


async def test_a_reader_killed_while_waiting_goes_away_at_once(registry, pushed, tmp_path):
    ref, stalled_layer = pushed
    async with mounted(registry, ref, tmp_path, LAZYFS_READ_DEADLINE="300") as (proxy, mnt):
        proxy.arm(("range", "multirange"), "stall", times=None, seconds=600,
                  path=stalled_layer)
        reader = subprocess.Popen([a.format(mnt / "s/f1") for a in DIRECT_READ],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await trio.sleep(1.5)
            assert reader.poll() is None, "the reader should be waiting on the registry"
            os.kill(reader.pid, signal.SIGKILL)
            killed = time.monotonic()
            while reader.poll() is None and time.monotonic() - killed < 10:
                await trio.sleep(0.05)
            gone = time.monotonic() - killed
            assert reader.poll() is not None, "the killed reader is still waiting"
            assert gone < 3, f"the killed reader lingered {gone:.1f} s"
        finally:
            if reader.poll() is None:
                reader.kill()
            proxy.clear()
        done, _ = await _cat(mnt / "s/f1")
        assert done.stdout == STALLED["s/f1"]

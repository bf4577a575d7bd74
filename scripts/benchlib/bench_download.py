"""``download``: a whole gzip layer as parallel range requests against one stream.

The base layer of the Debian gzip image (51 MB), from a local registry
behind a delaying proxy (``benchlib.proxy``: a fixed delay per request and
per new connection), optionally with a per-connection bandwidth cap. The proxies run in a child process, so their
threads do not share the measuring interpreter's GIL. Modes:

* ``stream_blob`` with the defaults (8 MiB pieces, 6 in flight), what a first
  mount of an unindexed gzip image uses, with and without the streaming
  index build as its consumer;
* ``stream_blob`` with one piece in flight;
* ``fetch_blob`` (one GET into the store, what ``lazyfs pull`` does), the
  baseline the others are compared with.

Each mode starts from an empty store and a fresh client (a new connection).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .common import BENCH_DIR, PYTHON, REPO, Run, log
from .lazy import push_debian
from .registry import running_registry

VARIANT = "bookworm-python"
CHUNK = 8 << 20
MODES = ("parallel-6", "parallel-6+index", "parallel-1", "fetch_blob")
LABELS = {
    "parallel-6": "stream_blob, 8 MiB × 6 in flight",
    "parallel-6+index": "stream_blob, 8 MiB × 6, streaming index build",
    "parallel-1": "stream_blob, 8 MiB × 1",
    "fetch_blob": "fetch_blob (one GET, to the store)",
}
CAP = 50_000_000
"""Per-connection cap, bytes/s: a far registry or CDN edge often gives one
TCP stream some tens of MB/s however fast the link."""
QUIET_LOAD = 1.0


def run(quick: bool) -> Run:
    res = Run("download", quick)
    reps = 1 if quick else 3
    delays = (0.02,) if quick else (0.0, 0.02, 0.05)
    caps = (0, CAP)
    res.note(f"load before waiting: {os.getloadavg()[0]:.2f}")
    if not quick:
        waited = wait_quiet()
        res.note(f"waited {waited:.0f} s for the 1-minute load to fall below {QUIET_LOAD}; "
                 f"load at start {os.getloadavg()[0]:.2f}")
    with running_registry("download") as (reg, _):
        img = push_debian(reg.host, VARIANT, "gzip")
        if isinstance(img, str):
            res.add(error=img)
            res.save()
            return res
        desc = _base_layer(img)
        for delay in delays:
            for cap in caps:
                with proxied(reg.host, delay, cap) as host:
                    ref = img.ref.replace(reg.host, host, 1)
                    for mode in MODES:
                        res.add(**_measure(ref, desc, mode, delay, cap, reps))
    _speedups(res)
    res.table(f"Downloading the {_mb(desc.size)} MB base layer (median of {reps}, seconds)",
              res.rows, [("delay_ms", "delay ms"), ("cap", "per-connection cap"),
                         ("label", "mode"), ("s", "seconds"), ("mb_s", "MB/s"),
                         ("vs_single", "× faster than one GET"), ("runs", "runs"),
                         ("error", "error")])
    res.save({"layer": desc.digest, "layer_bytes": desc.size, "reps": reps,
              "load_end": os.getloadavg()[0]})
    return res


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f}"


def _base_layer(img):
    from lazyfs.manifest import Descriptor
    from lazyfs.testing import debian
    tag = debian.default_tag(img.layout, VARIANT)
    first = debian.layer_infos(img.layout, tag)[0]
    return Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", first.digest, first.size)


def _measure(ref: str, desc, mode: str, delay: float, cap: int, reps: int) -> dict:
    import trio

    from lazyfs.errors import LazyfsError
    row = {"delay_ms": int(delay * 1000), "cap": f"{cap / 1e6:.0f} MB/s" if cap else "none",
           "mode": mode, "label": LABELS[mode]}
    times = []
    for _ in range(reps):
        work = BENCH_DIR / "work" / "download"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            times.append(trio.run(_one, ref, desc, mode, work))
        except (LazyfsError, OSError) as e:  # recorded in the table, the other modes still run
            row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
            break
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if times:
        s = statistics.median(times)
        row.update(s=s, mb_s=desc.size / s / 1e6, runs=", ".join(f"{t:.2f}" for t in times))
    log(f"download {row['delay_ms']} ms cap {row['cap']} {mode}: {row.get('s')}")
    return row


async def _one(ref_text: str, desc, mode: str, work: Path) -> float:
    import trio

    from lazyfs.registry.download import stream_blob
    from lazyfs.formats.gzip import StreamIndexer
    from lazyfs.registry.download import fetch_blob
    from lazyfs.reference import parse_reference
    from lazyfs.registry.client import RegistryClient
    from lazyfs.store.blobs import Store

    ref = parse_reference(ref_text)
    store = Store(work / "store")
    async with RegistryClient() as client:
        t = time.perf_counter()
        if mode == "fetch_blob":
            await fetch_blob(client, ref, desc, store)
        elif mode == "parallel-6+index":
            indexer = StreamIndexer(desc.digest)
            await stream_blob(client, ref, desc, store, indexer.feed, chunk=CHUNK, parallel=6)
            indexer.finish()
        else:
            parallel = int(mode.rpartition("-")[2])
            await stream_blob(client, ref, desc, store, chunk=CHUNK, parallel=parallel)
        return time.perf_counter() - t


def _speedups(res: Run) -> None:
    single = {(r["delay_ms"], r["cap"]): r.get("s") for r in res.rows
              if r.get("mode") == "fetch_blob"}
    for row in res.rows:
        base = single.get((row.get("delay_ms"), row.get("cap")))
        if base and row.get("s"):
            row["vs_single"] = base / row["s"]


# -- shared with bench_stream ------------------------------------------------------------


def wait_quiet(limit_s: float = 600, below: float = QUIET_LOAD) -> float:
    """Wait (up to ``limit_s``) for the 1-minute load average to fall below
    ``below``; the seconds waited. Other work shares this machine's 2 cores."""
    t = time.monotonic()
    while os.getloadavg()[0] >= below and time.monotonic() - t < limit_s:
        time.sleep(10)
    return time.monotonic() - t


class proxied:
    """``with proxied(upstream, delay, cap) as host``: the registry behind a
    delay (seconds per request and per connection) and, if ``cap``, a
    per-connection bandwidth cap (bytes/s), served by a child process."""

    def __init__(self, upstream: str, delay: float, cap: int = 0):
        self.upstream, self.delay, self.cap = upstream, delay, cap
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> str:
        if not self.delay and not self.cap:
            return self.upstream
        env = dict(os.environ, PYTHONPATH=f"{REPO / 'scripts'}:{REPO}")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "benchlib.bench_download", "--proxy", self.upstream,
             str(self.delay), str(self.cap)],
            cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        host = self.proc.stdout.readline().strip()
        if not host:
            self.__exit__()
            raise RuntimeError("the proxy process did not start")
        return host

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


def _serve_proxies(upstream: str, delay: float, cap: int) -> None:
    """The child's side: print the proxy's address, serve until stdin closes."""
    from .proxy import TcpProxy
    with TcpProxy(upstream, delay=delay, rate=cap or None) as proxy:
        print(proxy.host, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--proxy":
        _serve_proxies(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))

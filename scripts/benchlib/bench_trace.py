"""``trace``: a container start with and without a first-read trace.

``chroot MNT python3 -c 'import json, sqlite3, email'`` on bookworm-python
(eStargz), every run from an empty cache, the registry behind a delaying
proxy (``benchlib.proxy``: each request and each new connection waits
``DELAY``, i.e. a registry 25 ms away one way; this kernel has no
``sch_netem``, so ``tc netem`` in a network namespace is not available):

* none: no trace anywhere (the mount records one);
* local: the trace recorded by a "none" run, copied into the empty cache;
* registry: ``lazyfs trace push`` after the "none" runs, then an empty cache
  whose mount pulls it;
* other command: ``python3 -c 'import asyncio, unittest, xml.dom.minidom'``
  with no trace and with the import trace (its reads differ).

Time is the command's wall time once the mount is up; bytes and requests are
the registry's access log for the layer blobs, from the mount to the end of
replay. The median of ``REPEAT`` runs is reported. One timeline per case is
drawn with ``lazyfs stats --timeline``.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .common import BENCH_DIR, PYTHON, REPO, Run, log, ratio
from .lazy import layer_sizes, push_debian
from .mounting import bench_env, mount_stats, mounted
from .proxy import DelayProxy
from .registry import running_registry
from .reglog import Cursor

VARIANT, FORMAT = "bookworm-python", "estargz"
DELAY = 0.05
"""Seconds per request through the proxy: 25 ms each way."""
START = "import json, sqlite3, email"
OTHER = "import asyncio, unittest, xml.dom.minidom"
REPEAT = 3
PICTURES = REPO / "docs" / "benchmarks"


def run(quick: bool) -> Run:
    res = Run("trace", quick)
    repeat = 1 if quick else REPEAT
    res.note(f"registry {int(DELAY * 1000)} ms per request away through a TCP proxy "
             "(no sch_netem in this kernel); every run from an empty cache")
    with delayed_image(res) as found:
        if found is None:
            return res
        bench = _Bench(*found)
        cases = [("none", START, None), ("other, none", OTHER, None)]
        rows = {name: bench.repeat(name, cmd, trace, repeat) for name, cmd, trace in cases}
        recorded = bench.kept_trace("none")
        rows["local"] = bench.repeat("local", START, recorded, repeat)
        rows["other, local trace"] = bench.repeat("other, local trace", OTHER, recorded, repeat)
        bench.push_trace("none")
        rows["registry"] = bench.repeat("registry", START, None, repeat)
    for name, row in rows.items():
        baseline = rows["other, none"] if name.startswith("other") else rows["none"]
        row["time_vs_none"] = ratio(row["seconds"], baseline["seconds"])
        row["bytes_vs_need"] = ratio(row["bytes"], baseline["bytes"])
        row["total_vs_none"] = ratio(row["total_s"], baseline["total_s"])
        res.add(**row)
    res.table(f"Start of `python3 -c '{START}'` on {VARIANT} ({FORMAT}), "
              f"{int(DELAY * 1000)} ms per request", res.rows, [
                  ("case", "case"), ("command", "command"), ("seconds", "command s"),
                  ("time_vs_none", "time / no trace"), ("mount_s", "mount s"),
                  ("total_vs_none", "mount + command / no trace"),
                  ("bytes_mib", "MiB fetched"), ("bytes_vs_need", "bytes / no trace"),
                  ("requests", "blob requests"), ("replayed", "ranges replayed"),
                  ("runs", "runs (s)")])
    res.save({"delay_s": DELAY})
    return res


@contextmanager
def delayed_image(res: Run) -> Iterator[tuple[str, Path, Cursor, frozenset[str]] | None]:
    """The image pushed to a fresh registry behind the proxy: its reference
    through the proxy, an empty work directory, the registry's log cursor and
    the layer digests; ``None`` (saved as the run's error) if it cannot be pushed."""
    work = BENCH_DIR / "work" / res.name
    shutil.rmtree(work, ignore_errors=True)
    with running_registry(res.name) as (reg, cursor):
        img = push_debian(reg.host, VARIANT, FORMAT)
        if isinstance(img, str):
            res.add(case="all", error=img)
            res.save()
            yield None
            return
        with DelayProxy(reg.host, DELAY) as proxy:
            yield (img.ref.replace(reg.host, proxy.host, 1), work, cursor,
                   frozenset(layer_sizes(img.layout, VARIANT)))


def seed_trace(cache: Path, trace: Path | None) -> None:
    """An empty cache holding only ``trace``, if any."""
    if trace is not None:
        dest = cache / "indexes" / "traces" / trace.name
        dest.parent.mkdir(parents=True, mode=0o700)
        shutil.copy(trace, dest)


def replayed(stats_of: Callable[[], dict | None], timeout: float = 120) -> dict:
    """The image's stats once its replay is over."""
    deadline = time.monotonic() + timeout
    while True:
        stats = stats_of() or {}
        state = stats.get("trace", {}).get("replay", {}).get("state")
        if state not in ("looking", "running") or time.monotonic() > deadline:
            return stats
        time.sleep(0.1)


class _Bench:
    def __init__(self, ref: str, work: Path, cursor, layers: frozenset[str]):
        self.ref, self.work, self.cursor, self.layers = ref, work, cursor, layers

    def _dir(self, name: str, i: int) -> Path:
        return self.work / f"{name.replace(', ', '-').replace(' ', '-')}-{i}"

    def repeat(self, name: str, command: str, trace: Path | None, n: int) -> dict:
        runs = [self.once(name, command, trace, i, picture=(i == n - 1)) for i in range(n)]
        mid = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
        row = dict(mid, case=name, command=command.replace("import ", ""),
                   runs=" ".join(f"{r['seconds']:.2f}" for r in runs))
        row["seconds"] = statistics.median(r["seconds"] for r in runs)
        row["total_s"] = statistics.median(r["seconds"] + r["mount_s"] for r in runs)
        log(f"{name}: {row['runs']} s, {row['bytes_mib']:.1f} MiB, {row['requests']} requests")
        return row

    def once(self, name: str, command: str, trace: Path | None, i: int, picture: bool) -> dict:
        where = self._dir(name, i)
        shutil.rmtree(where, ignore_errors=True)
        cache = where / "cache"
        seed_trace(cache, trace)
        env = bench_env(cache, where / "run")
        self.cursor.mark()
        with mounted(self.ref, where / "mnt", env) as m:
            t = time.perf_counter()
            r = subprocess.run(["chroot", str(m.mountpoint), "python3", "-c", command],
                               capture_output=True, text=True, timeout=600)
            seconds = time.perf_counter() - t
            if r.returncode != 0:
                raise RuntimeError(f"{command} failed: {r.stderr.strip()[-300:]}")
            stats = replayed(lambda: mount_stats(m.mountpoint))
            if picture:
                PICTURES.mkdir(exist_ok=True)
                out = PICTURES / f"trace-{where.name[:-2]}.png"
                subprocess.run([PYTHON, "-m", "lazyfs", "stats", "--timeline", str(out),
                                str(m.mountpoint)], env=env, check=True, cwd=REPO)
        served = self.cursor.served(self.layers)
        replay = stats.get("trace", {}).get("replay", {})
        return {"seconds": seconds, "mount_s": m.seconds, "bytes": served.blob_bytes,
                "bytes_mib": served.blob_bytes / 2**20, "requests": served.blob_requests,
                "replayed": replay.get("done", 0),
                "trace_source": replay.get("source", "")}

    def kept_trace(self, name: str) -> Path:
        return next((self._dir(name, 0) / "cache" / "indexes" / "traces").iterdir())

    def push_trace(self, name: str) -> None:
        where = self._dir(name, 0)
        subprocess.run([PYTHON, "-m", "lazyfs", "trace", "push", self.ref], check=True,
                       env=bench_env(where / "cache", where / "run"), cwd=REPO,
                       capture_output=True)


"""``trace-ctr``: the start of ``bench_trace`` through the containerd snapshotter.

``ctr-remote image rpull`` + ``ctr run --rm … python3 -c 'import json,
sqlite3, email'`` of bookworm-python (eStargz) with ``lazyfs serve
--containerd-socket`` as the snapshotter, the registry behind the same
delaying proxy as ``bench_trace``. Every run has a fresh containerd and a
fresh service whose cache is empty but for the trace of the case:

* none: no trace anywhere (the service records one from the container's
  reads through its per-layer directories);
* local: the trace the first "none" run's service kept, copied into the cache;
* registry: that trace pushed with ``lazyfs trace push``, and an empty cache.

Timed: rpull, run, and both. Bytes and requests are the registry's access
log for the layer blobs, from the rpull to the end of the replay. The
median of ``REPEAT`` runs is reported, with the load average at its start.
The last "registry" run's timeline is drawn with ``lazyfs stats --timeline``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from lazyfs.fs.operations import STATS_XATTR
from lazyfs.testing.containerd import start_containerd

from .bench_snapshotter import case_env, lazyfs_cli, serve_snapshotter
from .bench_trace import (DELAY, FORMAT, PICTURES, REPEAT, START, VARIANT, delayed_image,
                          replayed, seed_trace)
from .common import REPO, Run, log, ratio


def run(quick: bool) -> Run:
    res = Run("trace-ctr", quick)
    repeat = 1 if quick else REPEAT
    res.note(f"registry {int(DELAY * 1000)} ms per request away through a TCP proxy; "
             "fresh containerd and lazyfs serve per run")
    with delayed_image(res) as found:
        if found is None:
            return res
        bench = _Bench(*found)
        rows = {"none": bench.repeat("none", None, repeat)}
        rows["local"] = bench.repeat("local", bench.kept_trace("none"), repeat)
        lazyfs_cli(bench.work / "none-0", "trace", "push", bench.ref)
        rows["registry"] = bench.repeat("registry", None, repeat)
    for row in rows.values():
        row["run_vs_none"] = ratio(row["run_s"], rows["none"]["run_s"])
        row["total_vs_none"] = ratio(row["total_s"], rows["none"]["total_s"])
        row["bytes_vs_need"] = ratio(row["bytes"], rows["none"]["bytes"])
        res.add(**row)
    res.table(f"`ctr run … python3 -c '{START}'` on {VARIANT} ({FORMAT}) through the lazyfs "
              f"snapshotter, {int(DELAY * 1000)} ms per request", res.rows, [
                  ("case", "case"), ("rpull_s", "rpull s"), ("run_s", "run s"),
                  ("run_vs_none", "run / no trace"), ("total_s", "rpull + run s"),
                  ("total_vs_none", "total / no trace"), ("bytes_mib", "MiB fetched"),
                  ("bytes_vs_need", "bytes / no trace"), ("requests", "blob requests"),
                  ("trace_source", "trace from"), ("replayed", "ranges replayed"),
                  ("recorded", "ranges recorded"), ("runs", "runs: total s"),
                  ("load", "load")])
    res.save({"delay_s": DELAY})
    return res


class _Bench:
    def __init__(self, ref: str, work: Path, cursor, layers: frozenset[str]):
        self.ref, self.work, self.cursor, self.layers = ref, work, cursor, layers

    def repeat(self, name: str, trace: Path | None, n: int) -> dict:
        runs = [self.once(name, trace, i, picture=(name == "registry" and i == n - 1))
                for i in range(n)]
        row = dict(sorted(runs, key=lambda r: r["total_s"])[len(runs) // 2], case=name,
                   runs=" ".join(f"{r['total_s']:.2f}" for r in runs),
                   load=" ".join(f"{r['load']:.1f}" for r in runs))
        for key in ("rpull_s", "run_s", "total_s"):
            row[key] = statistics.median(r[key] for r in runs)
        log(f"ctr {name}: {row['runs']} s, {row['bytes_mib']:.1f} MiB, {row['requests']} "
            f"requests, load {row['load']}")
        return row

    def once(self, name: str, trace: Path | None, i: int, picture: bool) -> dict:
        case = self.work / f"{name}-{i}"
        shutil.rmtree(case, ignore_errors=True)
        case.mkdir(parents=True)
        seed_trace(case / "cache", trace)
        load = os.getloadavg()[0]
        with ExitStack() as stack:
            sock = stack.enter_context(serve_snapshotter(case))
            ctd = stack.enter_context(start_containerd(case / "containerd", snapshotter="lazyfs",
                                                       proxy_snapshotters={"lazyfs": sock}))
            self.cursor.mark()
            t0 = time.perf_counter()
            ctd.ctr("image", "rpull", "--plain-http", self.ref, timeout=600)
            t1 = time.perf_counter()
            ctd.ctr("run", "--rm", self.ref, "bench", "python3", "-c", START, timeout=600)
            t2 = time.perf_counter()
            image_dir = case / "store" / self.ref
            stats = replayed(lambda: json.loads(os.getxattr(image_dir, STATS_XATTR)))
            if picture:
                PICTURES.mkdir(exist_ok=True)
                subprocess.run([sys.executable, "-m", "lazyfs", "stats", "--timeline",
                                str(PICTURES / f"trace-ctr-{name}.png"), str(image_dir)],
                               env=case_env(case), check=True, cwd=REPO)
        served = self.cursor.served(self.layers)
        traced = stats.get("trace", {})
        return {"rpull_s": t1 - t0, "run_s": t2 - t1, "total_s": t2 - t0, "load": load,
                "bytes": served.blob_bytes, "bytes_mib": served.blob_bytes / 2**20,
                "requests": served.blob_requests, "recorded": traced.get("recorded", 0),
                "replayed": traced.get("replay", {}).get("done", 0),
                "trace_source": traced.get("replay", {}).get("source", "") or "-"}

    def kept_trace(self, name: str) -> Path:
        """The trace the first ``name`` run's service kept when it stopped."""
        return next((self.work / f"{name}-0" / "cache" / "indexes" / "traces").iterdir())


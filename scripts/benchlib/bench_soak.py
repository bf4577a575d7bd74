"""``soak``: many readers for minutes against a registry that misbehaves.

A real registry behind ``chaos.ChaosProxy``, one image (a gzip layer
indexed by the first mount, an eStargz layer read by range), mounted with a
cache far smaller than the image so pieces keep being evicted and fetched
again. Once the mount is ready, a tenth of the blob requests (ranges and
whole blobs) get a fault, chosen at random: a stall before the headers or
part-way, a reset mid-body, a truncated or bit-flipped body, a shifted
Content-Range, a 503 with Retry-After. ``READERS`` threads read random
ranges of random files for ``SECONDS`` (``$SOAK_READERS`` and
``$SOAK_SECONDS`` change both; each range first dropped from the
page cache, so every read reaches the daemon) and compare every byte with
the file's content.

Reported: reads, mismatches (must be 0), failed reads (EIO), short reads
(a prefix of the right bytes: the kernel returns what it has when a later
page of the range failed), the slowest
read against the read deadline, the daemon's resident memory (sampled, and
its peak) against the budget in ``docs/security.md``, the faults
injected, and what ``lazyfs stats`` counted (retries, timeouts, failed reads).
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

from lazyfs.testing import build_layer
from lazyfs.testing.push import OCI_LAYER_GZIP, push_image

from .chaos import ChaosProxy
from .common import BENCH_DIR, Run, log, rss_mib
from .mounting import bench_env, mount_stats, mounted
from .registry import running_registry

READERS = int(os.environ.get("SOAK_READERS", "64"))
SECONDS = int(os.environ.get("SOAK_SECONDS", "300"))
QUICK_SECONDS = 45
FAULT_RATE = 0.10
READ_DEADLINE = 20.0
FIRST_BYTE = 5.0
CACHE_SIZE = "32M"
RSS_BUDGET_MIB = 100
"""The daemon's documented memory budget (``docs/security.md``)."""
SIZES = (4096, 32 << 10, 128 << 10)


def run(quick: bool) -> Run:
    res = Run("soak", quick)
    seconds = QUICK_SECONDS if quick else SECONDS
    work = BENCH_DIR / "work" / "soak"
    shutil.rmtree(work, ignore_errors=True)
    files, layers = _image(quick)
    with running_registry("soak") as (reg, _):
        with reg.client() as c:
            push_image(c, "soak/img", "v1", [la.blob for la in layers],
                       layer_media_type=OCI_LAYER_GZIP,
                       layer_annotations=[la.annotations for la in layers],
                       diff_ids=[la.diff_id for la in layers])
        with ChaosProxy(reg.host, FAULT_RATE) as chaos:
            env = bench_env(work / "cache", work / "run")
            env.update(LAZYFS_READ_DEADLINE=str(READ_DEADLINE),
                       LAZYFS_FIRST_BYTE_TIMEOUT=str(FIRST_BYTE), LAZYFS_CACHE_SIZE=CACHE_SIZE)
            with mounted(f"{chaos.host}/soak/img:v1", work / "mnt", env) as m:
                _until_indexed(m.mountpoint)
                log(f"soak: {READERS} readers for {seconds}s, faults on "
                    f"{FAULT_RATE:.0%} of blob requests")
                chaos.enabled = True
                row = _soak(m.mountpoint, m.pid, files, seconds)
                chaos.enabled = False
                row["faults"] = dict(chaos.counts)
                row["requests"] = chaos.requests
                row["stats"] = _stats_totals(mount_stats(m.mountpoint))
    res.add(**row)
    _tables(res, row, sum(map(len, files.values())))
    res.save()
    return res


def _image(quick: bool) -> tuple[dict[str, bytes], list]:
    rng = random.Random(1515)
    scale = 3 if quick else 1

    def content(n: int) -> bytes:
        half = rng.randbytes(n // 2)
        return half + bytes(rng.choices(b"abcdefgh \n", k=n - len(half)))

    def sizes(count: int) -> list[int]:
        return [int(2 ** rng.uniform(10, 20.5)) for _ in range(count // scale)]

    gz = {f"gz/{i}": content(n) for i, n in enumerate(sizes(300))}
    es = {f"es/{i}": content(n) for i, n in enumerate(sizes(450))}
    layers = [build_layer("gzip", {"gz/": None, **gz}),
              build_layer("estargz", {"es/": None, **es}, chunk_size=256 << 10)]
    return {**gz, **es}, layers


def _until_indexed(mnt: Path, limit: float = 300) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        doc = mount_stats(mnt) or {}
        if doc.get("index") in (None, "ready"):
            return
        time.sleep(0.2)
    raise RuntimeError("the image was not indexed in time")


def _soak(mnt: Path, pid: int | None, files: dict[str, bytes], seconds: float) -> dict:
    names = sorted(files)
    stop = time.monotonic() + seconds
    lock = threading.Lock()
    tally: Counter[str] = Counter()
    latencies: list[float] = []
    rss: list[float] = []
    problems: list[str] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop:
            name = rng.choice(names)
            data = files[name]
            size = min(rng.choice(SIZES), len(data))
            offset = rng.randrange(len(data) - size + 1)
            started = time.monotonic()
            outcome = "ok"
            try:
                fd = os.open(mnt / name, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, offset, size, os.POSIX_FADV_DONTNEED)
                    got = os.pread(fd, size, offset)
                finally:
                    os.close(fd)
                want = data[offset:offset + size]
                if len(got) < len(want) and want.startswith(got):
                    outcome = "short"
                elif got != want:
                    outcome = "mismatch"
                    problems.append(f"{name} @{offset}+{size}: {len(got)} bytes, "
                                    f"first wrong at {_first_difference(got, want)}")
            except OSError as e:
                outcome = "eio" if e.errno == errno.EIO else f"errno {e.errno}"
            took = time.monotonic() - started
            with lock:
                tally[outcome] += 1
                tally["bytes"] += size if outcome == "ok" else 0
                latencies.append(took)

    def sample() -> None:
        while time.monotonic() < stop and pid:
            with contextlib.suppress(OSError):
                rss.append(rss_mib(pid)[0])
            time.sleep(0.5)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(READERS)]
    threads.append(threading.Thread(target=sample))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    peak = rss_mib(pid)[1] if pid else None
    over = sum(1 for x in latencies if x > READ_DEADLINE + 5)
    over_twice = sum(1 for x in latencies if x > 2 * READ_DEADLINE + 5)
    return {"readers": READERS, "seconds": seconds, "reads": len(latencies),
            "mib_read": round(tally["bytes"] / 2**20, 1), "mismatches": tally["mismatch"],
            "eio": tally["eio"], "short": tally["short"], "other_errors": sum(v for k, v in tally.items()
                                                       if k.startswith("errno")),
            "p50_s": _pct(latencies, 0.5), "p99_s": _pct(latencies, 0.99),
            "max_s": round(latencies[-1], 2) if latencies else None,
            "over_deadline": over, "over_twice_deadline": over_twice,
            "read_deadline_s": READ_DEADLINE,
            "rss_p50_mib": _pct(sorted(rss), 0.5), "rss_max_sampled_mib": max(rss, default=None),
            "rss_peak_mib": round(peak, 1) if peak else None, "rss_budget_mib": RSS_BUDGET_MIB,
            "within_budget": None if not peak else ("yes" if peak <= RSS_BUDGET_MIB else "NO"),
            "problems": problems[:20]}


def _first_difference(got: bytes, want: bytes) -> int:
    return next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)


def _stats_totals(doc: dict | None) -> dict:
    totals: Counter[str] = Counter()
    for layer in (doc or {}).get("layers", []):
        for key in ("requests", "bytes_fetched", "retries", "timeouts", "failed_reads",
                    "verify_failures"):
            totals[key] += int(layer.get(key) or 0)
    return dict(totals)


def _tables(res: Run, row: dict, image_bytes: int) -> None:
    res.table(f"Soak: {row['readers']} readers, {row['seconds']} s, faults on "
              f"{FAULT_RATE:.0%} of blob requests (image {image_bytes / 2**20:.0f} MiB, "
              f"cache {CACHE_SIZE})", [row],
              [("reads", "reads"), ("mib_read", "MiB read"), ("mismatches", "mismatches"),
               ("eio", "EIO"), ("short", "short reads"), ("p50_s", "p50 s"), ("p99_s", "p99 s"), ("max_s", "max s"),
               ("over_deadline", f"over {READ_DEADLINE:g}+5 s"),
               ("over_twice_deadline", f"over 2x{READ_DEADLINE:g}+5 s"),
               ("rss_p50_mib", "RSS p50 MiB"), ("rss_peak_mib", "RSS peak MiB"),
               ("rss_budget_mib", "budget MiB"), ("within_budget", "peak within")])
    res.note(f"faults injected: {row['faults']} of {row['requests']} blob requests")
    res.note(f"daemon counted: {row['stats']}")

"""``seq-read``: sequential MB/s of one big file, cold and warm.

One image holds a single 200 MB file of barely compressible data, in gzip
and uncompressed form. It is read through ``Image.read`` (1 MiB pieces),
through the mount with ``dd bs=1M``, from an unpacked copy on local disk,
and from the FUSE ceiling (``benchlib.ceiling``: the same size from memory).

Mount passes: cold (empty store, fresh mount), warm (store kept, fresh
mount, so the kernel's page cache for the file is empty and every byte goes
through FUSE and the chunk cache), and page cache (a second ``dd`` on the
warm mount, which lazyfs allows with ``keep_cache``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

from .common import BENCH_DIR, PYTHON, REPO, Run, log, ratio
from .lazy import run_probe
from .mounting import bench_env, is_mounted, mounted, unmount
from .registry import running_registry
from .synthetic import big_file_tar, cached_blobs, push_synthetic

PATH = "data/big.bin"


def run(quick: bool) -> Run:
    res = Run("seq-read", quick)
    size = (50 if quick else 200) * 10**6
    name = f"big-{size // 10**6}mb"
    work = BENCH_DIR / "work" / "seq-read"
    shutil.rmtree(work, ignore_errors=True)
    try:
        ceiling = _ceiling(work / "ceiling", size)
        local = _local(work / "local", name, size)
        res.add(source="FUSE ceiling (pyfuse3, from memory)", **ceiling)
        res.add(source="unpacked copy on local disk", **local)
        with running_registry("seq") as (reg, _):
            images = push_synthetic(reg, "big", name, lambda: big_file_tar(size),
                                    fmts=("gzip", "tar"))
            for fmt, img in images.items():
                res.add(**_api(img.ref, fmt, work / f"api-{fmt}"))
                res.add(**_mount(img.ref, fmt, work / f"mnt-{fmt}", size))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    top = max(ceiling.get("cold_mb_s") or 0, ceiling.get("warm_mb_s") or 0) or None
    for row in res.rows:
        row["vs_ceiling"] = ratio(row.get("warm_mb_s"), top)
    res.table(f"Sequential read of a {size // 10**6} MB file, MB/s", res.rows, [
        ("source", "source"), ("cold_mb_s", "cold"), ("warm_mb_s", "warm"),
        ("page_cache_mb_s", "page cache"), ("vs_ceiling", "warm / best FUSE ceiling pass"),
        ("error", "error")])
    res.save({"size": size})
    return res


def _dd(path: Path) -> float:
    t = time.perf_counter()
    r = subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], capture_output=True,
                       text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(f"dd {path}: {r.stderr.strip()[-200:]}")
    return time.perf_counter() - t


def _ceiling(work: Path, size: int) -> dict:
    mp = work / "mnt"
    mp.mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'scripts'}:{REPO}")
    proc = subprocess.Popen([PYTHON, "-m", "benchlib.ceiling", str(mp), str(size)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, text=True)
    try:
        if proc.stdout.readline().strip() != "ready":
            return {"error": "the ceiling filesystem did not mount"}
        first, second = _dd(mp / "big.bin"), _dd(mp / "big.bin")
        log(f"ceiling: {size / first / 1e6:.0f} / {size / second / 1e6:.0f} MB/s")
        return {"cold_mb_s": size / first / 1e6, "warm_mb_s": size / second / 1e6}
    finally:
        unmount(mp, proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


def _local(work: Path, name: str, size: int) -> dict:
    work.mkdir(parents=True)
    cached_blobs(name, lambda: big_file_tar(size))
    with tarfile.open(BENCH_DIR / "cache" / f"{name}.tar") as tf:
        tf.extract(PATH, work, filter="data")
    f = work / PATH
    first, second = _dd(f), _dd(f)
    return {"cold_mb_s": size / first / 1e6, "warm_mb_s": size / second / 1e6,
            "note": "just written, so in the page cache either way"}


def _api(ref: str, fmt: str, store: Path) -> dict:
    row = {"source": f"Image.read, {fmt} layer"}
    p = run_probe({"ref": ref, "store": str(store), "seq": "/" + PATH, "passes": 2})
    shutil.rmtree(store, ignore_errors=True)
    if "error" in p:
        return {**row, "error": p["error"]}
    cold, warm = p["seq"]
    log(f"Image.read {fmt}: {cold['mb_s']:.0f} / {warm['mb_s']:.0f} MB/s")
    return {**row, "cold_mb_s": cold["mb_s"], "warm_mb_s": warm["mb_s"],
            "open_s": p["open_s"]}


def _mount(ref: str, fmt: str, work: Path, size: int) -> dict:
    row: dict = {"source": f"lazyfs mount + dd bs=1M, {fmt} layer"}
    env = bench_env(work / "store", work / "run")
    mp = work / "mnt"
    try:
        with mounted(ref, mp, env):
            cold = _dd(mp / PATH)
        with mounted(ref, mp, env):
            warm = _dd(mp / PATH)
            cached = _dd(mp / PATH)
    except RuntimeError as e:
        return {**row, "error": str(e)[:300]}
    finally:
        if is_mounted(mp):
            unmount(mp, None)
    log(f"mount {fmt}: {size / cold / 1e6:.0f} / {size / warm / 1e6:.0f} / "
        f"{size / cached / 1e6:.0f} MB/s")
    return {**row, "cold_mb_s": size / cold / 1e6, "warm_mb_s": size / warm / 1e6,
            "page_cache_mb_s": size / cached / 1e6}

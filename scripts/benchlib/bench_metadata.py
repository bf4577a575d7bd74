"""``metadata``: walking and stat-ing a many-file image through the mount.

``find MNT | wc -l`` and ``ls -lR MNT`` on a fresh mount (every entry goes
through FUSE once) and again (the kernel's entry and attribute caches
answer), ``stat`` latency of single files cold and cached, and the daemon's
memory afterwards.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from pathlib import Path

from .common import BENCH_DIR, Run, log, rss_mib
from .mounting import bench_env, mounted
from .registry import running_registry
from .synthetic import PER_DIR, many_files_tar, push_synthetic

RSS_TARGET_MIB = 100
"""The daemon's budget (docs/security.md), checked against its peak RSS."""
STATS = 2000


def run(quick: bool) -> Run:
    res = Run("metadata", quick)
    files = 20_000 if quick else 100_000
    work = BENCH_DIR / "work" / "metadata"
    shutil.rmtree(work, ignore_errors=True)
    try:
        with running_registry("metadata") as (reg, _):
            img = push_synthetic(reg, "many", f"many-{files}", lambda: many_files_tar(files),
                                 entries=files)["gzip"]
            env = bench_env(work / "store", work / "run")
            mp = work / "mnt"
            with mounted(img.ref, mp, env):
                # The first mount indexes the layer in the background and
                # keeps the index only once it is complete: a walk waits for
                # it. The walks are timed on a second mount, which loads it.
                _timed_shell(f"find {mp} -maxdepth 1 | wc -l")
            with mounted(img.ref, mp, env) as m:
                _walks(res, mp, quick)
                _stats(res, mp, files)
                rss = rss_mib(m.pid) if m.pid else (None, None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res.table(f"Metadata on a {files:,}-file image (mounted, index already built)", res.rows, [
        ("what", "what"), ("entries", "entries"), ("s", "seconds"),
        ("per_s", "entries/s"), ("us", "µs each")])
    peak = rss[1] if rss[1] is not None else rss[0]
    daemon = {"rss_mib": rss[0], "hwm_mib": rss[1], "target": f"<= {RSS_TARGET_MIB} MiB",
              "met": peak is not None and peak <= RSS_TARGET_MIB, "mount_s": m.seconds}
    res.table("Daemon memory after the walks", [daemon], [
        ("rss_mib", "RSS MiB"), ("hwm_mib", "peak RSS MiB"), ("target", "target"),
        ("met", "met"), ("mount_s", "mount s (index loaded)")])
    res.save({"files": files, "daemon": daemon})
    return res


def _timed_shell(cmd: str) -> tuple[float, str]:
    t = time.perf_counter()
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=900)
    s = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{cmd}: {r.stderr.strip()[-200:]}")
    return s, r.stdout.strip()


def _walks(res: Run, mp: Path, quick: bool) -> None:
    for label in ("find, first", "find, again"):
        s, out = _timed_shell(f"find {mp} | wc -l")
        n = int(out)
        res.add(what=label, entries=n, s=s, per_s=n / s)
        log(f"{label}: {n} entries in {s:.3f}s")
    s, out = _timed_shell(f"find {mp} -printf '%m %s\\n' | wc -l")
    res.add(what="find -printf (lstat each)", entries=n, s=s, per_s=n / s)
    for label in ("ls -lR, after find", "ls -lR, again")[:2 if quick else 1]:
        s, out = _timed_shell(f"ls -lR {mp} | wc -l")
        res.add(what=label, entries=n, s=s, per_s=n / s)
        log(f"{label}: {s:.3f}s")


def _stats(res: Run, mp: Path, files: int) -> None:
    """Files not touched by the walks above would need a new mount; instead a
    fresh mount's worth is simulated by dropping the kernel's dentries, which
    only root may do and which is refused in some sandboxes."""
    rnd = random.Random(7)
    picks = [rnd.randrange(files) for _ in range(STATS)]
    paths = [mp / f"d{i // PER_DIR:03d}" / f"f{i:06d}" for i in picks]
    dropped = _drop_dentries()
    t = time.perf_counter()
    for p in paths:
        os.stat(p)
    first = (time.perf_counter() - t) / len(paths)
    t = time.perf_counter()
    for p in paths:
        os.stat(p)
    again = (time.perf_counter() - t) / len(paths)
    t = time.perf_counter()
    for p in paths:
        _no_xattr(p)
    xattr = (time.perf_counter() - t) / len(paths)
    label = "stat, dentries dropped" if dropped else "stat, after the walks"
    res.add(what=label, entries=len(paths), s=first * len(paths), per_s=1 / first,
            us=first * 1e6)
    res.add(what="stat, again", entries=len(paths), s=again * len(paths), per_s=1 / again,
            us=again * 1e6)
    res.add(what="getxattr of an absent name (ls -l asks two per file)", entries=len(paths),
            s=xattr * len(paths), per_s=1 / xattr, us=xattr * 1e6)


def _no_xattr(path: Path) -> None:
    try:
        os.getxattr(path, "system.posix_acl_access", follow_symlinks=False)
    except OSError:
        pass


def _drop_dentries() -> bool:
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")
        return True
    except OSError:
        return False

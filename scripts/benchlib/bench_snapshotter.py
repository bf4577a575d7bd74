"""``snapshotter``: ``ctr run … python3 -c pass`` of debian-py through the lazyfs
snapshotter (``ctr-remote image rpull`` + ``ctr run``) against ``ctr image
pull`` + ``ctr run`` with containerd's overlayfs snapshotter.

Each measurement is cold: a fresh containerd (empty content store), a fresh
``lazyfs serve --containerd-socket`` (empty cache and snapshotter state),
already running before the clock starts. Timed: from the pull command to the container's exit.
Bytes: what the registry served for the image's layers (its access log),
through a delaying proxy when a delay is asked for. The gzip image's index
is published beforehand (``lazyfs index push``), as a registry serving
lazyfs users would have it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from lazyfs.testing.containerd import start_containerd

from .common import BENCH_DIR, REPO, Run, log, ratio
from .lazy import image_bytes, layer_sizes, push_debian
from .proxy import DelayProxy
from .registry import running_registry

VARIANT = "bookworm-python"
FORMATS = ("estargz", "gzip")
COMMAND = ("python3", "-c", "pass")


def run(quick: bool) -> Run:
    res = Run("snapshotter", quick)
    delays = (0.0,) if quick else (0.0, 0.025)
    reps = 1 if quick else 2
    work = BENCH_DIR / "work" / "snapshotter"
    shutil.rmtree(work, ignore_errors=True)
    with running_registry("snapshotter") as (reg, cursor):
        images = {}
        for fmt in FORMATS:
            img = push_debian(reg.host, VARIANT, fmt)
            if isinstance(img, str):
                res.note(f"{fmt}: {img}")
                continue
            if fmt == "gzip":
                lazyfs_cli(work / "indexer", "index", "push", "-q", img.ref)
            images[fmt] = img
        for delay in delays:
            for fmt, img in images.items():
                total = image_bytes(img.layout, VARIANT)
                layers = frozenset(layer_sizes(img.layout, VARIANT))
                for rep in range(reps):
                    row = {"format": fmt, "delay_ms": int(delay * 1000), "rep": rep + 1,
                           "image_mib": round(total / 2**20, 1)}
                    for mode in ("lazyfs", "overlayfs"):
                        with ExitStack() as stack:
                            host = reg.host
                            if delay:
                                host = stack.enter_context(DelayProxy(reg.host, delay)).host
                            ref = img.ref.replace(reg.host, host, 1)
                            case = work / f"{fmt}-{int(delay * 1000)}ms-{rep}-{mode}"
                            load = os.getloadavg()[0]
                            cursor.mark()
                            out = _measure(mode, ref, case, stack)
                            served = cursor.served(layers)
                            row[f"{mode}_s"] = out.get("total_s")
                            row[f"{mode}_pull_s"] = out.get("pull_s")
                            row[f"{mode}_run_s"] = out.get("run_s")
                            row[f"{mode}_mib"] = round(served.blob_bytes / 2**20, 2)
                            row[f"{mode}_pct"] = round(100 * served.blob_bytes / total, 1)
                            row[f"{mode}_requests"] = served.requests
                            row[f"{mode}_load"] = round(load, 2)
                            if "error" in out:
                                row[f"{mode}_error"] = out["error"]
                                res.note(f"{fmt} {mode}: {out['error']}")
                        shutil.rmtree(case, ignore_errors=True)
                    row["speedup"] = ratio(row.get("overlayfs_s"), row.get("lazyfs_s"))
                    log(f"{fmt} delay {row['delay_ms']} ms: lazyfs {row.get('lazyfs_s')} s "
                        f"({row['lazyfs_pct']}%), overlayfs {row.get('overlayfs_s')} s")
                    res.add(**row)
    res.table("ctr run python3 -c pass of debian-py: lazyfs snapshotter vs overlayfs "
              "(seconds, MiB of layers fetched, load average at the start)", res.rows, [
        ("format", "format"), ("delay_ms", "delay ms"), ("rep", "run"),
        ("image_mib", "image MiB"),
        ("lazyfs_pull_s", "rpull"), ("lazyfs_run_s", "run"), ("lazyfs_s", "lazyfs total"),
        ("lazyfs_mib", "lazyfs MiB"), ("lazyfs_pct", "lazyfs % of image"),
        ("overlayfs_pull_s", "pull+unpack"), ("overlayfs_run_s", "run"),
        ("overlayfs_s", "overlayfs total"), ("overlayfs_mib", "overlayfs MiB"),
        ("speedup", "overlayfs / lazyfs"), ("lazyfs_load", "load")])
    res.save({"variant": VARIANT, "command": " ".join(COMMAND)})
    return res


def _measure(mode: str, ref: str, case: Path, stack: ExitStack) -> dict:
    case.mkdir(parents=True)
    if mode == "lazyfs":
        sock = stack.enter_context(serve_snapshotter(case))
        ctd = stack.enter_context(start_containerd(case / "containerd", snapshotter="lazyfs",
                                                   proxy_snapshotters={"lazyfs": sock}))
        pull = ("image", "rpull", "--plain-http", ref)
    else:
        ctd = stack.enter_context(start_containerd(case / "containerd", snapshotter="overlayfs"))
        pull = ("image", "pull", "--plain-http", ref)
    try:
        t0 = time.perf_counter()
        ctd.ctr(*pull, timeout=600)
        t1 = time.perf_counter()
        ctd.ctr("run", "--rm", ref, "bench", *COMMAND, timeout=600)
        t2 = time.perf_counter()
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        return {"error": str(e).strip().splitlines()[-1][:300]}
    return {"pull_s": t1 - t0, "run_s": t2 - t1, "total_s": t2 - t0}


@contextmanager
def serve_snapshotter(case: Path):
    """``lazyfs serve --containerd-socket`` with a fresh state and cache; its socket."""
    sockdir = tempfile.mkdtemp(prefix="lazyfs-bench-sn-")
    sock = os.path.join(sockdir, "s.sock")
    root = case / "store"
    root.mkdir()
    with open(case / "serve.log", "wb") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "lazyfs", "serve", "--no-control-socket",
                                 "--containerd-socket", sock, "--containerd-state",
                                 str(case / "state"), str(root)], env=case_env(case), cwd=REPO,
                                stdout=logf, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not (os.path.exists(sock) and os.path.ismount(root)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"lazyfs serve did not start: {case / 'serve.log'}")
            time.sleep(0.05)
        yield sock
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        subprocess.run(["umount", "-l", str(root)], capture_output=True)
        shutil.rmtree(sockdir, ignore_errors=True)


def case_env(case: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), LAZYFS_CACHE_DIR=str(case / "cache"),
                XDG_RUNTIME_DIR=str(case / "run"))


def lazyfs_cli(case: Path, *args: str) -> None:
    case.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "lazyfs", *args], env=case_env(case), check=True,
                   capture_output=True, timeout=900)

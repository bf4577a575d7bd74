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

For eStargz two more columns: the floor this run's reads allow (the TOCs and
every chunk a read asked for, each whole: ``wherebytes``), and the same
``python3`` start through stargz-store v0.12 (``peerstart``: its layer
directories stacked by overlayfs, the command chrooted in them), bytes from
the same registry log. The first eStargz run's bytes are also listed file
by file.
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

from . import peer, wherebytes
from .common import BENCH_DIR, REPO, Run, log, ratio
from .lazy import image_bytes, layer_sizes, push_debian
from .peerstart import peer_start
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
    where_files: list[dict] = []
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
                            out = _measure(mode, ref, case, stack, keep_stats=fmt == "estargz")
                            served = cursor.served(layers)
                            row[f"{mode}_s"] = out.get("total_s")
                            row[f"{mode}_pull_s"] = out.get("pull_s")
                            row[f"{mode}_run_s"] = out.get("run_s")
                            row[f"{mode}_mib"] = round(served.blob_bytes / 2**20, 2)
                            row[f"{mode}_pct"] = round(100 * served.blob_bytes / total, 2)
                            row[f"{mode}_requests"] = served.requests
                            row[f"{mode}_load"] = round(load, 2)
                            if "error" in out:
                                row[f"{mode}_error"] = out["error"]
                                res.note(f"{fmt} {mode}: {out['error']}")
                            if "stats" in out:
                                files = _where(row, img.layout, out["stats"], case,
                                               served.blob_bytes)
                                if not where_files:
                                    where_files = files
                        shutil.rmtree(case, ignore_errors=True)
                    if fmt == "estargz":
                        _peer(row, reg.host, img, delay, cursor, total)
                    row["speedup"] = ratio(row.get("overlayfs_s"), row.get("lazyfs_s"))
                    log(f"{fmt} delay {row['delay_ms']} ms: lazyfs {row.get('lazyfs_s')} s "
                        f"({row['lazyfs_pct']}%), overlayfs {row.get('overlayfs_s')} s"
                        + (f", stargz-store {row['peer_pct']}%" if "peer_pct" in row else ""))
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
    estargz = [r for r in res.rows if "floor_pct" in r]
    res.table("eStargz bytes: lazyfs, the floor its reads allow, stargz-store (MiB, % of image)",
              estargz, [
        ("delay_ms", "delay ms"), ("rep", "run"), ("lazyfs_mib", "lazyfs MiB"),
        ("lazyfs_pct", "lazyfs %"), ("tocs_mib", "TOCs MiB"), ("kept_mib", "chunks kept MiB"),
        ("other_mib", "other MiB"), ("floor_mib", "floor MiB"),
        ("floor_pct", "floor %"), ("peer_mib", "stargz-store MiB"), ("peer_pct", "stargz-store %"),
        ("peer_s", "stargz-store start s")])
    if where_files:
        res.table("eStargz, first run: the chunks kept, file by file (compressed bytes)",
                  where_files, [("layer", "layer"), ("path", "file"), ("chunks", "chunks"),
                                ("bytes", "bytes"), ("pct", "% of image")])
    res.save({"variant": VARIANT, "command": " ".join(COMMAND), "estargz_files": where_files})
    return res


def _where(row: dict, layout: Path, stats: dict, case: Path, served: int) -> list[dict]:
    """The row's floor columns; the run's chunks file by file."""
    b = wherebytes.breakdown(layout, VARIANT, stats, case / "cache", served)
    s = b.summary()
    for key in ("tocs", "kept", "other", "floor"):
        row[f"{key}_mib"] = None if s[key] is None else round(s[key] / 2**20, 2)
    row["floor_pct"] = s["floor_pct"]
    row["where"] = s
    return b.files()


def _peer(row: dict, registry_host: str, img, delay: float, cursor, total: int) -> None:
    """The same start through stargz-store, into the row's ``peer_*`` columns."""
    if why := peer.available():
        row["peer_error"] = why
        return
    layers = list(layer_sizes(img.layout, VARIANT))
    with ExitStack() as stack:
        host = registry_host
        if delay:
            host = stack.enter_context(DelayProxy(registry_host, delay)).host
        try:
            out = peer_start(host, img.ref.replace(registry_host, host, 1), layers, COMMAND,
                             cursor)
        except (RuntimeError, subprocess.CalledProcessError, OSError) as e:
            row["peer_error"] = str(e)[:300]
            return
    row["peer_s"] = round(out["total_s"], 3)
    row["peer_mib"] = round(out["blob_bytes"] / 2**20, 2)
    row["peer_pct"] = round(100 * out["blob_bytes"] / total, 2)
    row["peer_requests"] = out["requests"]
    if "error" in out:
        row["peer_error"] = out["error"]


def _measure(mode: str, ref: str, case: Path, stack: ExitStack,
             keep_stats: bool = False) -> dict:
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
    out = {"pull_s": t1 - t0, "run_s": t2 - t1, "total_s": t2 - t0}
    if mode == "lazyfs" and keep_stats:
        try:
            out["stats"] = wherebytes.read_stats(case / "store")
        except (OSError, ValueError) as e:
            out["error"] = f"no stats: {e}"
    return out


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

"""``serve``: store mode against stargz-store, and the CLI answered by a warm service.

Side by side in one run, on bookworm-python (eStargz, 4 layers) and
bookworm (eStargz, the same three lower layers):

* store: ``lazyfs serve`` already running with an empty cache; the time from
  starting ``cat ROOT/REF/etc/os-release`` to its end, and the layer bytes
  the registry served. The peer, stargz-store v0.12 (store mode, background
  fetch off, verification off as it always is in store mode), reads the
  same file from the layer holding it, whose digest it is told. Rounds
  alternate which of the two goes first.
* shared: then ``cat`` of the same file in bookworm, whose layers the first
  image already brought: what that fetches (the target is nothing).
* cli: ``lazyfs cat REF /etc/os-release`` answered by the warm service
  against the same command alone (same warm cache); medians of several runs.

Bytes are counted by the registry's own access log (layer blobs only).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

from . import peer
from .common import BENCH_DIR, REPO, Run, log, ratio
from .lazy import layer_sizes, push_debian
from .mounting import bench_env
from .registry import running_registry

READ = "etc/os-release"
SETTLE_S = 1.0
"""Both services are given this long after they answer before the timed
read: "already running" means past its start, not during it (lazyfs serve
is still starting the process that keeps its mount for a successor)."""
ROUNDS = 3
CLI_RUNS = 7
PYTHON = sys.executable


def run(quick: bool) -> Run:
    res = Run("serve", quick)
    res.note(f"load average at start: {_load()}")
    rounds = 1 if quick else ROUNDS
    with running_registry("serve") as (reg, cursor):
        py = push_debian(reg.host, "bookworm-python", "estargz")
        base = push_debian(reg.host, "bookworm", "estargz")
        if isinstance(py, str) or isinstance(base, str):
            res.note(f"cannot build the images: {py if isinstance(py, str) else base}")
            res.save()
            return res
        layers = layer_sizes(py.layout, "bookworm-python")
        layers.update(layer_sizes(base.layout, "bookworm"))
        holder = _layer_holding(py, READ)
        why = peer.available()
        if why:
            res.note(f"peer not measured: {why}")
        for i in range(rounds):
            order = ("lazyfs", "peer") if i % 2 == 0 else ("peer", "lazyfs")
            row = {"round": i + 1}
            for who in order:
                if who == "lazyfs":
                    row.update(_lazyfs_store(py, base, cursor, layers, i))
                elif not why:
                    row.update(_peer_store(reg.host, py, holder, cursor, layers, i))
            row["faster"] = ratio(row.get("peer_s"), row.get("lazyfs_s"))
            res.add(**row)
            log(f"serve round {i + 1}: lazyfs {row.get('lazyfs_s')} s "
                f"peer {row.get('peer_s')} s")
        cli = _warm_cli(py, cursor, rounds=3 if quick else CLI_RUNS)
    res.note(f"load average at end: {_load()}")
    _tables(res, cli, sum(layers[d] for d in layer_sizes(py.layout, "bookworm-python")))
    res.save({"cli": cli})
    return res


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _layer_holding(img, path: str) -> str:
    """The digest of the topmost layer with ``path`` (the peer reads layers apart)."""
    from lazyfs.store.blobs import Store
    from lazyfs.sync import open_image
    work = BENCH_DIR / "work" / "serve-holder"
    shutil.rmtree(work, ignore_errors=True)
    try:
        with open_image(img.ref, store=Store(work)) as image:
            inner = image.image
            return inner.layers[inner.index.resolve("/" + path).layer].desc.digest
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def running_service(work: Path, cache: Path | None = None) -> Iterator[tuple[Path, dict]]:
    """``cache``: a cache kept from before (default: a new one under ``work``)."""
    shutil.rmtree(work, ignore_errors=True)
    root, sock = work / "root", work / "control.sock"
    root.mkdir(parents=True)
    env = bench_env(cache or work / "cache", work / "run")
    with open(work / "serve.log", "wb") as log_file:
        proc = subprocess.Popen([PYTHON, "-m", "lazyfs", "serve", "--control-socket", str(sock),
                                 str(root)], env=env, cwd=REPO, stdout=log_file,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() or not _mounted(root):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"lazyfs serve did not start: "
                                   f"{(work / 'serve.log').read_text()[-400:]}")
            time.sleep(0.05)
        yield root, dict(env, LAZYFS_SOCKET=str(sock))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if _mounted(root):
            subprocess.run(["fusermount3", "-uz", str(root)], check=False)
        shutil.rmtree(work, ignore_errors=True)


def _mounted(path: Path) -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


def _timed_cat(path: Path) -> tuple[float, bytes]:
    t = time.perf_counter()
    out = subprocess.run(["cat", str(path)], capture_output=True, check=True, timeout=120).stdout
    return time.perf_counter() - t, out


def _served(cursor, layers: dict[str, int]) -> int:
    time.sleep(0.2)  # the registry logs a request just after answering it
    return cursor.served(frozenset(layers)).blob_bytes


def _lazyfs_store(py, base, cursor, layers: dict[str, int], i: int) -> dict:
    with running_service(BENCH_DIR / "work" / f"serve-{i}") as (root, _):
        time.sleep(SETTLE_S)
        cursor.mark()
        seconds, text = _timed_cat(root / py.host / f"{py.repo}:{py.tag}" / READ)
        fetched = _served(cursor, layers)
        cursor.mark()
        _, again = _timed_cat(root / base.host / f"{base.repo}:{base.tag}" / READ)
        shared = _served(cursor, layers)
    assert b"bookworm" in text and again == text
    return {"lazyfs_s": seconds, "lazyfs_kib": fetched / 1024, "shared_kib": shared / 1024}


def _peer_store(host: str, py, holder: str, cursor, layers: dict[str, int], i: int) -> dict:
    with peer.running_stargz_store(host, f"serve-{i}") as store:
        time.sleep(SETTLE_S)
        cursor.mark()
        seconds, text = _timed_cat(store.layer_path(py.ref, holder, READ))
        fetched = _served(cursor, layers)
    assert b"bookworm" in text
    return {"peer_s": seconds, "peer_kib": fetched / 1024}


def _warm_cli(py, cursor, rounds: int) -> dict:
    with running_service(BENCH_DIR / "work" / "serve-cli") as (root, env):
        alone = dict(env, LAZYFS_SOCKET=str(root.parent / "nobody.sock"))
        argv = [PYTHON, "-m", "lazyfs", "cat", py.ref, "/" + READ]
        first = subprocess.run(argv, env=env, capture_output=True, check=True).stdout
        subprocess.run(argv, env=alone, capture_output=True, check=True)  # both warm
        times: dict[str, list[float]] = {"served": [], "alone": []}
        for _ in range(rounds):
            for name, e in (("served", env), ("alone", alone)):
                t = time.perf_counter()
                out = subprocess.run(argv, env=e, capture_output=True, check=True).stdout
                times[name].append(time.perf_counter() - t)
                assert out == first
        bare = []
        for _ in range(rounds):
            t = time.perf_counter()
            subprocess.run([PYTHON, "-c", "pass"], check=True)
            bare.append(time.perf_counter() - t)
    out = {name: statistics.median(v) for name, v in times.items()}
    out["bare_python"] = statistics.median(bare)
    out["ratio"] = ratio(out["served"], out["alone"])
    return out


def _tables(res: Run, cli: dict, image_bytes: int) -> None:
    res.table("store mode: cold first read of /etc/os-release, service already running",
              res.rows, [("round", "round"), ("lazyfs_s", "lazyfs s"),
                         ("peer_s", "stargz-store s"), ("faster", "peer / lazyfs"),
                         ("lazyfs_kib", "lazyfs KiB"), ("peer_kib", "stargz-store KiB"),
                         ("shared_kib", "2nd image, shared layers: KiB")])
    res.note(f"image (bookworm-python eStargz) is {image_bytes / 2**20:.1f} MiB of layers")
    res.table("lazyfs cat REF /etc/os-release, warm", [cli],
              [("served", "asked the service s"), ("alone", "alone s"),
               ("ratio", "served / alone"), ("bare_python", "python -c pass s")])

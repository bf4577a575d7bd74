"""``peer``: lazyfs beside stargz-store v0.12, every row in one run.

Both read the same blobs from one bench registry (plain HTTP, loopback):

* the Debian image with python3 (``bookworm-python``, eStargz made by
  ``ctr-remote``): ``mount`` → first ``cat`` of a bottom-layer file
  (``/etc/os-release``) and of a top-layer file, cold; a second mount with
  the index cached (lazyfs; blob bytes counted by the registry's log);
  ``find`` and ``ls -lR`` once the tree has been walked once (warm); the
  cold first read again with the registry behind a proxy 50 ms and
  200 Mbit/s away (``benchlib.proxy``), beside ``skopeo copy`` + ``umoci
  unpack`` over the same link (not with ``--quick``);
* one eStargz layer holding a 200 MB file (4 MiB chunks, as ``ctr-remote``
  cuts them): ``dd`` cold, then warm (lazyfs: a second mount on the kept
  cache; stargz-store: the same store), the page cache dropped before each
  warm pass with ``--drop-caches`` (else stargz-store's file gets a
  ``posix_fadvise`` that may not empty it: the note says which), with the
  daemon's CPU time for the warm pass and its peak RSS;
* the FUSE ceiling: a trivial pyfuse3 filesystem serving the same size
  from memory.

stargz-store is started fresh (empty root) for each cold phase, outside the
timing: it mounts nothing per image, and resolves an image at its first
lookup, which is inside the timing. Its content verification is off in store
mode and background fetching is switched off (see ``benchlib.peer``).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

from lazyfs.testing import build_layer
from lazyfs.testing.manifests import image as built_image
from lazyfs.testing.push import push_blob, push_manifest

from . import peer
from .fullpull import full_pull
from .common import BENCH_DIR, Run, drop_caches, log, ratio, rss_mib
from .lazy import push_debian
from .bench_serve import running_service
from .mounting import bench_env, mounted
from .proxy import TcpProxy
from .registry import running_registry

VARIANT = "bookworm-python"
BOTTOM = "etc/os-release"
TOP = "usr/lib/python3.11/os.py"
BIG = "data/big.bin"


def run(quick: bool) -> Run:
    res = Run("peer", quick)
    size = (50 if quick else 200) * 10**6
    why = peer.available()
    if why:
        res.note(why)
    work = BENCH_DIR / "work" / "peer"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        with running_registry("peer") as (reg, cursor):
            deb = push_debian(reg.host, VARIANT, "estargz")
            big_ref, big_digest = _push_big(reg, size)
            if isinstance(deb, str):
                res.note(f"debian image: {deb}")
            else:
                digests = _layer_digests(deb)
                _first_reads(res, deb.ref, digests, work, cursor, why is None)
                _tree_walks(res, deb.ref, digests, work, why is None)
                _far_away(res, deb.ref, digests, work, why is None, quick)
            _big_reads(res, big_ref, big_digest, size, work, why is None)
        _ceiling(res, size, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for row in res.rows:
        row["ratio"] = _ratio(row)
    res.table("lazyfs beside stargz-store v0.12 (one run)", res.rows, [
        ("what", "what"), ("lazyfs", "lazyfs"), ("stargz", "stargz-store"), ("unit", "unit"),
        ("ratio", "lazyfs / stargz-store"), ("load", "load (1 min)"), ("note", "note")])
    res.save({"size": size})
    return res


def _ratio(row: dict) -> float | None:
    """lazyfs over stargz-store as the row's unit reads: for times and
    sizes below 1 is better for lazyfs, for rates above 1 is."""
    return ratio(row.get("lazyfs"), row.get("stargz"))


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _add(res: Run, what: str, unit: str, lazy=None, stargz=None, note: str = "") -> dict:
    row = res.add(what=what, unit=unit, lazyfs=lazy, stargz=stargz, load=_load(), note=note)
    log(f"{what}: lazyfs {lazy} stargz-store {stargz} {unit}")
    return row


# -- images ---------------------------------------------------------------------------------

def _layer_digests(img) -> list[str]:
    from lazyfs.testing import debian
    tag = debian.default_tag(img.layout, VARIANT)
    return [i.digest for i in debian.layer_infos(img.layout, tag)]


def _push_big(reg, size: int) -> tuple[str, str]:
    """One eStargz layer with /etc/os-release and a ``size``-byte file."""
    rnd = random.Random(20240101)
    block = 1 << 16
    filler = b"lazyfs benchmark data " * (block // 4 // 22 + 1)
    data = b"".join(rnd.randbytes(block * 3 // 4) + filler[:block // 4]
                    for _ in range(size // block + 1))[:size]
    layer = build_layer("estargz", {"etc/": None, "etc/os-release": "ID=bench\n",
                                    "data/": None, BIG: data}, chunk_size=4 << 20)
    img = built_image([layer])
    with reg.client() as c:
        push_blob(c, "bench/big", img.config)
        push_blob(c, "bench/big", layer.blob)
        push_manifest(c, "bench/big", "estargz", img.manifest, img.media_type)
    log(f"pushed the {size // 10**6} MB eStargz image")
    return f"{reg.host}/bench/big:estargz", layer.digest


# -- first reads ----------------------------------------------------------------------------

def _first_reads(res: Run, ref: str, digests: list[str], work: Path, cursor, peer_ok: bool):
    env = bench_env(work / "cache", work / "run")
    rows = {}
    for name, path, layer in (("top", TOP, digests[-1]), ("bottom", BOTTOM, digests[0])):
        shutil.rmtree(work / "cache", ignore_errors=True)
        lazy = _lazy_cat(ref, path, work / "mnt", env)
        st = _peer_cat(ref, layer, path) if peer_ok else None
        rows[name] = (lazy, st)
    _add(res, "mount → first cat of /etc/os-release (bottom layer), cold", "s", *rows["bottom"])
    _add(res, f"same for a top-layer file (/{TOP})", "s", *rows["top"])
    served, again = [], []
    for path in (BOTTOM, TOP):
        shutil.rmtree(work / "svc-cache", ignore_errors=True)
        with running_service(work / "svc", work / "svc-cache") as (_, svc_env):
            served.append(_lazy_cat(ref, path, work / "mnt", svc_env))
            again.append(_lazy_cat(ref, path, work / "mnt", svc_env))
    with running_service(work / "svc", work / "svc-cache") as (_, svc_env):
        restarted = _lazy_cat(ref, BOTTOM, work / "mnt", svc_env)
    _add(res, "`lazyfs mount` answered by a running `lazyfs serve` → first cat, cold "
         "(bottom layer)", "s", served[0], rows["bottom"][1])
    _add(res, "same for the top-layer file", "s", served[1], rows["top"][1])
    _add(res, "… the same mount again, the image open in the service", "s", again[0],
         rows["bottom"][1], note="stargz-store: its cold first read")
    _add(res, "… through a service started afresh, index in the cache", "s", restarted,
         rows["bottom"][1], note="stargz-store: its cold first read")
    cursor.mark()
    again = _lazy_cat(ref, BOTTOM, work / "mnt", env)
    served = cursor.served()
    _add(res, "second mount, index cached → first cat", "s", again,
         note=f"{served.requests} requests, {served.blob_bytes} blob bytes")
    res.rows[-1]["blob_bytes"] = served.blob_bytes


def _lazy_cat(ref: str, path: str, mnt: Path, env: dict) -> float:
    """The ``lazyfs mount`` command's wall time plus the ``cat`` after it."""
    with mounted(ref, mnt, env) as m:
        t = time.perf_counter()
        (mnt / path).read_bytes()
        return m.seconds + time.perf_counter() - t


def _peer_cat(ref: str, layer: str, path: str) -> float:
    with peer.running_stargz_store(ref.partition("/")[0], "first") as st:
        t = time.perf_counter()
        st.layer_path(ref, layer, path).read_bytes()
        return time.perf_counter() - t


# -- a registry far away --------------------------------------------------------------------

RTT = 0.05
RATE = 25_000_000
"""25 ms each way (the proxy holds each request and each new connection
50 ms) and 200 Mbit/s per connection."""


def _far_away(res: Run, ref: str, digests: list[str], work: Path, peer_ok: bool,
              quick: bool) -> None:
    with TcpProxy(ref.partition("/")[0], delay=RTT, rate=RATE) as proxy:
        far = ref.replace(ref.partition("/")[0], proxy.host, 1)
        env = bench_env(work / "far-cache", work / "run")
        shutil.rmtree(work / "far-cache", ignore_errors=True)
        before = (proxy.connections, proxy.sends)
        lazy = _lazy_cat(far, BOTTOM, work / "mnt", env)
        trips = proxy.connections - before[0] + proxy.sends - before[1]
        with running_service(work / "far-svc") as (_, svc_env):
            before = (proxy.connections, proxy.sends)
            served = _lazy_cat(far, BOTTOM, work / "mnt", svc_env)
            served_trips = proxy.connections - before[0] + proxy.sends - before[1]
        st = _peer_cat(far, digests[0], BOTTOM) if peer_ok else None
        full = None if quick else full_pull(far, work / "full")
    note = f"lazyfs: {trips} connections + requests through the proxy"
    _add(res, "mount → first cat, 50 ms RTT, 200 Mbit/s, cold", "s", lazy, st, note=note)
    _add(res, "same, `lazyfs mount` answered by a running `lazyfs serve`", "s", served, st,
         note=f"lazyfs: {served_trips} connections + requests through the proxy")
    if full is not None:
        for what, t in (("mount", lazy), ("mount answered by the service", served)):
            row = _add(res, f"{what}: first read against skopeo copy + umoci unpack + cat, "
                            "same link", "s", t,
                       note=full.error or f"full pull {full.total_s:.2f} s; lazyfs / "
                                          f"full pull = {ratio(t, full.total_s):.3f}")
            row["full_pull_s"] = full.total_s


# -- tree walks -----------------------------------------------------------------------------

def _tree_walks(res: Run, ref: str, digests: list[str], work: Path, peer_ok: bool) -> None:
    env = bench_env(work / "cache", work / "run")
    with mounted(ref, work / "mnt", env) as m:
        lazy = {cmd: _walk(cmd, m.mountpoint) for cmd in ("find", "ls")}
    stargz = {}
    if peer_ok:
        with peer.running_stargz_store(ref.partition("/")[0], "walk") as st:
            roots = [st.layer_path(ref, d) for d in digests]
            stargz = {cmd: _walk(cmd, *roots) for cmd in ("find", "ls")}
    for cmd, label in (("find", "find"), ("ls", "ls -lR")):
        entries = lazy[cmd][1]
        _add(res, f"{label} of the image, warm (second walk)", "s", lazy[cmd][0],
             stargz.get(cmd, (None,))[0],
             note=f"lazyfs merged tree {entries} lines; stargz-store every layer's own "
                  f"tree, {stargz.get(cmd, (0, 0))[1]} lines")


def _walk(cmd: str, *roots: Path) -> tuple[float, int]:
    argv = ["find", *map(str, roots)] if cmd == "find" else ["ls", "-lR", *map(str, roots)]
    subprocess.run(argv, capture_output=True, timeout=600)
    t = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, timeout=600).stdout
    return time.perf_counter() - t, out.count(b"\n")


# -- the big file ---------------------------------------------------------------------------

def _big_reads(res: Run, ref: str, layer: str, size: int, work: Path, peer_ok: bool) -> None:
    env = bench_env(work / "big-cache", work / "run")
    shutil.rmtree(work / "big-cache", ignore_errors=True)
    with mounted(ref, work / "mnt", env) as m:
        cold = _dd(m.mountpoint / BIG, size)
        peak = rss_mib(m.pid)[1] if m.pid else None
    with mounted(ref, work / "mnt", env) as m:
        dropped = drop_caches()
        cpu0 = _cpu(m.pid)
        warm = _dd(m.mountpoint / BIG, size)
        cpu = _cpu(m.pid) - cpu0
        peak = max(peak or 0, rss_mib(m.pid)[1]) if m.pid else peak
    s_cold = s_warm = s_cpu = s_peak = None
    if peer_ok:
        with peer.running_stargz_store(ref.partition("/")[0], "big") as st:
            path = st.layer_path(ref, layer, BIG)
            s_cold = _dd(path, size)
            if not drop_caches():
                _drop(path)
            cpu0 = _cpu(st.pid)
            s_warm = _dd(path, size)
            s_cpu = _cpu(st.pid) - cpu0
            s_peak = st.peak_rss_kib() / 1024
    mb = size // 10**6
    _add(res, f"cold dd of a {mb} MB file", "MB/s", cold, s_cold)
    _add(res, f"warm dd of the {mb} MB file (page cache empty)", "MB/s", warm, s_warm,
         note="lazyfs: second mount on the kept cache; stargz-store: the same store; "
              + ("page cache dropped before each" if dropped else
                 "page cache NOT dropped (run with --drop-caches): stargz-store's pass may "
                 "come from it"))
    _add(res, f"daemon peak RSS during the {mb} MB reads", "MiB", peak, s_peak)
    _add(res, f"daemon CPU for the warm {mb} MB read", "s", cpu, s_cpu,
         note=f"lazyfs {cpu / (size / 1e9):.2f} s per GB" if cpu else "")
    res.rows[-1]["lazyfs_check"] = _check(work, ref, env, size)


def _check(work: Path, ref: str, env: dict, size: int) -> str:
    """The big file's sha256 through lazyfs, so a fast wrong answer shows."""
    with mounted(ref, work / "mnt", env) as m:
        h = hashlib.sha256()
        with open(m.mountpoint / BIG, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def _dd(path: Path, size: int) -> float:
    t = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], check=True,
                   capture_output=True, timeout=900)
    return size / (time.perf_counter() - t) / 1e6


def _drop(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ceiling(res: Run, size: int, work: Path) -> None:
    from .bench_seq_read import _ceiling as ceiling
    got = ceiling(work / "ceiling", size)
    _add(res, f"FUSE ceiling: dd of {size // 10**6} MB from a trivial pyfuse3 fs", "MB/s",
         got.get("warm_mb_s"), note=got.get("error", "first pass "
                                                     f"{got.get('cold_mb_s', 0):.0f} MB/s"))


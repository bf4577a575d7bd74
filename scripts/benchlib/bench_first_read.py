"""``first-read``: time and bytes to the first file, lazyfs against a full pull.

Side by side in one run, per layer format of bookworm-python:

* full: ``skopeo copy`` + ``umoci unpack``, then read ``/etc/os-release``;
* cold: an empty store; mount, read ``/etc/os-release``, ``chroot MNT python3 -c pass``;
* warm: the same store again (a second mount): nothing read before may be fetched;
* indexed: the store keeps its indexes but loses every blob and chunk, which
  is where a gzip image stands once its index exists;
* shared (formats that need a full pass to index): ``lazyfs index push``,
  then a mount from an empty store that finds the tables in the registry.

Bytes are counted by the registry's own access log.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from . import common
from .common import BENCH_DIR, PYTHON, REPO, Run, drop_caches, log, ratio
from .fullpull import full_pull
from .lazy import FORMATS, TOC_FORMATS, fetched, layer_sizes, push_debian, run_probe
from .mounting import bench_env, mount_stats, mounted
from .registry import running_registry

VARIANT = "bookworm-python"
READ = "etc/os-release"
TIME_TARGET = 0.10
BYTES_TARGET = 0.02


def run(quick: bool, name: str = "first-read", host_wrapper=None, formats=None) -> Run:
    res = Run(name, quick)
    formats = formats or (("gzip", "estargz") if quick else FORMATS)
    if common.DROP_CACHES:
        res.note(f"page cache drop before each phase: "
                 f"{'done' if drop_caches() else 'refused by this sandbox'}")
    else:
        res.note("page cache kept (warm binaries and libraries); --drop-caches drops it")
    with running_registry(name) as (reg, cursor):
        for fmt in formats:
            img = push_debian(reg.host, VARIANT, fmt)
            if isinstance(img, str):
                res.add(format=fmt, error=img)
                continue
            with (host_wrapper(reg.host) if host_wrapper else _same(reg.host)) as host:
                ref = img.ref.replace(reg.host, host, 1)
                res.add(**measure(ref, fmt, layer_sizes(img.layout, VARIANT), cursor, name))
    baseline = next((r.get("full_s") for r in res.rows if r["format"] == "gzip"), None)
    for row in res.rows:
        if "error" not in row:
            _verdict(row, baseline)
    print_tables(res)
    res.save()
    return res


class _same:
    def __init__(self, host: str):
        self.host = host

    def __enter__(self) -> str:
        return self.host

    def __exit__(self, *exc) -> None:
        pass


def measure(ref: str, fmt: str, layers: dict[str, int], cursor, name: str) -> dict:
    total = sum(layers.values())
    cursor = _LayerCursor(cursor, frozenset(layers))
    work = BENCH_DIR / "work" / name / fmt
    shutil.rmtree(work, ignore_errors=True)
    row: dict = {"format": fmt, "image_mib": total / 2**20}
    try:
        row.update(_full(ref, work / "full", cursor, total))
        shutil.rmtree(work / "full", ignore_errors=True)
        store, env = work / "store", bench_env(work / "store", work / "run")
        for phase in ("cold", "warm", "indexed"):
            if phase == "indexed":
                for sub in ("blobs", "chunks"):
                    shutil.rmtree(store / sub, ignore_errors=True)
            drop_caches()
            row.update(_lazy(ref, phase, work / "mnt", env, store, cursor, total))
        if fmt not in TOC_FORMATS:
            row.update(_shared(ref, work, env, cursor, total))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"{name} {fmt}: full {row.get('full_s')} cold {row.get('cold_s')} "
        f"warm {row.get('warm_s')} indexed {row.get('indexed_s')}")
    return row


class _LayerCursor:
    """Counts layer blobs only: the manifest and config are fetched again on
    every open by tag, and are not what a read costs."""

    def __init__(self, cursor, layers: frozenset[str]):
        self._cursor, self._layers = cursor, layers

    def mark(self) -> None:
        self._cursor.mark()

    def served(self):
        time.sleep(0.2)  # the registry logs a request just after answering it
        return self._cursor.served(self._layers)

    def served_all(self):
        """Every blob, shared index artifacts included."""
        return self._cursor.served()


def _full(ref: str, work: Path, cursor, total: int) -> dict:
    drop_caches()
    cursor.mark()
    fp = full_pull(ref, work, READ)
    served = cursor.served().blob_bytes
    return {"full_pull_s": fp.pull_s, "full_unpack_s": fp.unpack_s, "full_s": fp.total_s,
            "full_mib": served / 2**20, "full_error": fp.error}


def _lazy(ref: str, phase: str, mp: Path, env: dict, store: Path, cursor, total: int) -> dict:
    cursor.mark()
    out: dict = {}
    try:
        with mounted(ref, mp, env) as m:
            t = time.perf_counter()
            (mp / READ).read_bytes()
            read_s = time.perf_counter() - t
            out = {"mount_s": m.seconds, "read_s": read_s, "s": m.seconds + read_s,
                   "via": m.via}
            out.update(_served(cursor.served(), total))
            out["all_kib"] = cursor.served_all().blob_bytes / 1024
            t = time.perf_counter()
            r = subprocess.run(["chroot", str(mp), "python3", "-c", "pass"],
                               capture_output=True, text=True, timeout=300)
            out["chroot_s"] = (out["s"] + time.perf_counter() - t) if r.returncode == 0 else None
            if r.returncode != 0:
                out["error"] = (f"chroot python3 exited {r.returncode}: "
                                f"{r.stderr.strip()[-200:]} {_daemon_error(env)}")
            stats = mount_stats(mp)
            out["stats_mib"] = (fetched(stats.get("image", stats)) or 0) / 2**20 if stats else None
    except (RuntimeError, OSError) as e:
        out = _api(ref, store, str(e))
        out.update(_served(cursor.served(), total))
        return {f"{phase}_{k}": v for k, v in out.items()}
    chroot = cursor.served()  # cumulative: from the mount command to python3 having run
    out["chroot_mib"] = chroot.blob_bytes / 2**20
    out["chroot_requests"] = chroot.requests
    return {f"{phase}_{k}": v for k, v in out.items()}


def _shared(ref: str, work: Path, env: dict, cursor, total: int) -> dict:
    """``lazyfs index push`` from the store that has the tables, then a mount
    from an empty store, which finds them in the registry: no full pass."""
    r = subprocess.run([PYTHON, "-m", "lazyfs", "index", "push", ref], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        return {"shared_error": f"lazyfs index push: {r.stderr.strip()[-200:]}"}
    store = work / "store-shared"
    env = bench_env(store, work / "run-shared")
    drop_caches()
    return _lazy(ref, "shared", work / "mnt", env, store, cursor, total)


def _daemon_error(env: dict) -> str:
    """The last warning or error the mount daemon logged, for the report."""
    lines: list[str] = []
    for path in Path(env["XDG_RUNTIME_DIR"]).glob("lazyfs/*.log"):
        lines += [ln for ln in path.read_text(errors="replace").splitlines()
                  if "WARNING" in ln or "ERROR" in ln]
    return f"(daemon: {lines[-1][-300:]})" if lines else ""


def _served(served, total: int) -> dict:
    return {"mib": served.blob_bytes / 2**20, "kib": served.blob_bytes / 1024, "pct": 100 * served.blob_bytes / total,
            "requests": served.requests}


def _api(ref: str, store: Path, why: str) -> dict:
    """No mount: the same open and read through ``Image.read``, said so."""
    p = run_probe({"ref": ref, "store": str(store), "read": ["/" + READ]})
    if "error" in p:
        return {"error": f"mount failed ({why[:200]}); Image.read: {p['error']}"}
    return {"mount_s": p["open_s"], "read_s": p["reads"][0]["s"],
            "s": p["reads"][0]["since_start_s"], "via": "Image.read (mount failed)",
            "error": why[:300]}


def _verdict(row: dict, gzip_full: float | None) -> None:
    """Ratios against the targets. Where umoci cannot unpack the format (zstd)
    the gzip image's full pull + unpack stands in, and the row says so."""
    fmt = row["format"]
    full = row.get("full_s")
    if full is None and gzip_full is not None:
        full = gzip_full
        row["baseline"] = "gzip image's full pull"
    row["cold_ratio"] = ratio(row.get("cold_s"), full)
    row["indexed_ratio"] = ratio(row.get("indexed_s"), full)
    row["shared_ratio"] = ratio(row.get("shared_s"), full)
    if fmt in TOC_FORMATS:
        r, pct = row["cold_ratio"], row.get("cold_pct")
        row["target"] = "cold ≤ 0.10× full, ≤ 2% bytes"
    elif fmt == "zstd":
        r, pct = row["indexed_ratio"], row.get("indexed_pct")
        row["target"] = "none (one frame: full pull fallback)"
    else:
        r, pct = row["indexed_ratio"], row.get("indexed_pct")
        row["target"] = "indexed ≤ 0.10× full, ≤ 2% bytes" + ("; cold < full" if fmt == "gzip" else "")
    ok = r is not None and pct is not None and r <= TIME_TARGET and pct <= 100 * BYTES_TARGET
    if fmt == "gzip":
        ok = ok and row["cold_ratio"] is not None and row["cold_ratio"] < 1
    row["met"] = "yes" if ok else "no"
    row["warm_zero"] = "yes" if row.get("warm_kib") == 0 else "no"


def print_tables(res: Run) -> None:
    res.table(f"First read of /{READ}: seconds ({res.name})", res.rows, [
        ("format", "format"), ("full_s", "full pull+unpack+read"),
        ("cold_mount_s", "cold mount"), ("cold_s", "cold first read"),
        ("cold_chroot_s", "cold chroot python3"), ("warm_s", "warm first read"),
        ("indexed_s", "indexed first read"), ("shared_s", "shared-index first read"),
        ("cold_ratio", "cold/full"), ("indexed_ratio", "indexed/full"),
        ("shared_ratio", "shared/full"), ("baseline", "baseline if not its own")])
    res.table(f"First read of /{READ}: bytes served by the registry ({res.name})", res.rows, [
        ("format", "format"), ("image_mib", "image MiB"), ("full_mib", "full MiB"),
        ("cold_kib", "cold KiB"), ("cold_pct", "cold %"), ("warm_kib", "warm KiB"),
        ("indexed_kib", "indexed KiB"), ("indexed_pct", "indexed %"),
        ("shared_kib", "shared-index KiB"), ("shared_pct", "shared-index %"),
        ("shared_all_kib", "shared-index KiB incl. index artifact"),
        ("cold_requests", "cold requests"), ("indexed_requests", "indexed requests"),
        ("cold_chroot_mib", "cold, through chroot python3, MiB"),
        ("indexed_chroot_mib", "indexed, through chroot python3, MiB"),
        ("target", "target"), ("met", "met"), ("warm_zero", "warm 0 bytes")])
    errors = [r for r in res.rows if any(k.endswith("error") and r[k] for k in r)]
    if errors:
        res.table("Errors", errors, [("format", "format"), ("error", "push"),
                                 ("full_error", "full pull"), ("cold_error", "cold"),
                                 ("warm_error", "warm"), ("indexed_error", "indexed"),
                                 ("shared_error", "shared index")])

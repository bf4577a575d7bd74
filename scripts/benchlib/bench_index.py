"""``index``: what building and loading the index costs, per layer format.

Cold: an empty store, so the layer tables and merged index are built (for
gzip, tar and plain zstd that means reading every layer whole). Warm: the
same store again, so only the stored index is loaded. Then a synthetic
image of many files, for load time and the memory held by its index.
"""

from __future__ import annotations

import shutil
import time

from .common import BENCH_DIR, Run, log
from .lazy import FORMATS, fetched, image_bytes, push_debian, run_probe
from .registry import running_registry
from .synthetic import many_files_tar, push_synthetic

VARIANT = "bookworm-python"
LOAD_TARGET_S = 1.0


def run(quick: bool) -> Run:
    res = Run("index", quick)
    formats = ("gzip", "estargz", "zstd-chunked") if quick else FORMATS
    files = 20_000 if quick else 100_000
    with running_registry("index") as (reg, cursor):
        for fmt in formats:
            res.add(**_one_format(reg.host, cursor, fmt))
        big = _many_files(reg, cursor, files)
    res.table("Index build (cold store) and load (warm store), bookworm-python", res.rows, [
        ("format", "format"), ("image_mib", "image MiB"), ("build_s", "build s"),
        ("served_mib", "served MiB (registry log)"), ("fetched_mib", "fetched MiB (stats)"),
        ("served_pct", "% of image"), ("requests", "requests"), ("load_s", "load s"),
        ("index_kib", "index KiB"), ("error", "error")])
    res.table(f"{files:,}-entry image", [big], [
        ("entries", "entries"), ("build_s", "build s"), ("load_s", "load s"),
        ("target", "target"), ("rss_mib", "RSS after open MiB"), ("hwm_mib", "peak RSS MiB"),
        ("index_kib", "index KiB"), ("error", "error")])
    res.save({"many_files": big})
    return res


def _one_format(host: str, cursor, fmt: str) -> dict:
    row: dict = {"format": fmt}
    img = push_debian(host, VARIANT, fmt)
    if isinstance(img, str):
        return {**row, "error": img}
    total = image_bytes(img.layout, VARIANT)
    row["image_mib"] = total / 2**20
    store = BENCH_DIR / "work" / f"store-index-{fmt}"
    shutil.rmtree(store, ignore_errors=True)
    try:
        cursor.mark()
        cold = run_probe({"ref": img.ref, "store": str(store)})
        time.sleep(0.2)
        served = cursor.served()
        if "error" in cold:
            return {**row, "error": cold["error"]}
        warm = run_probe({"ref": img.ref, "store": str(store)})
        log(f"index {fmt}: build {cold['open_s']:.2f}s, load {warm.get('open_s', 0):.3f}s")
        return {**row, "build_s": cold["open_s"], "load_s": warm.get("open_s"),
                "served_mib": served.blob_bytes / 2**20,
                "served_pct": 100 * served.blob_bytes / total,
                "fetched_mib": (fetched(cold.get("stats")) or 0) / 2**20,
                "requests": served.requests, "index_kib": cold["index_bytes"] / 1024,
                "error": warm.get("error", "")}
    finally:
        shutil.rmtree(store, ignore_errors=True)


def _many_files(reg, cursor, files: int) -> dict:
    row: dict = {"entries": files + files // 1000 + 2, "target": f"< {LOAD_TARGET_S:.0f} s"}
    img = push_synthetic(reg, "many", f"many-{files}", lambda: many_files_tar(files),
                         entries=files)["gzip"]
    store = BENCH_DIR / "work" / "store-index-many"
    shutil.rmtree(store, ignore_errors=True)
    try:
        cold = run_probe({"ref": img.ref, "store": str(store)})
        if "error" in cold:
            return {**row, "error": cold["error"]}
        warm = run_probe({"ref": img.ref, "store": str(store)})
        if "error" in warm:
            return {**row, "error": warm["error"]}
        load = warm["open_s"]
        log(f"{files} files: build {cold['open_s']:.2f}s load {load:.3f}s "
            f"rss {warm['rss_mib']:.0f} MiB")
        return {**row, "build_s": cold["open_s"], "load_s": load,
                "met": load < LOAD_TARGET_S, "rss_mib": warm["rss_mib"],
                "hwm_mib": warm["hwm_mib"], "build_hwm_mib": cold["hwm_mib"],
                "index_kib": cold["index_bytes"] / 1024, "error": ""}
    finally:
        shutil.rmtree(store, ignore_errors=True)

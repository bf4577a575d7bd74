"""``stream``: the first mount ever of a gzip image that has no index yet.

Side by side, each lazy mount from an empty store:

* full: ``skopeo copy`` + ``umoci unpack`` + read ``/etc/os-release``;
* default: ``lazyfs mount`` returns at once; the layers stream in as
  parallel ranges, top layer first, and are indexed as they arrive; a layer
  is served once its digest is verified;
* early-reads: the same, serving spans already inflated before the digest;
* wait-index: the old behaviour, everything indexed before the mount returns;
* shared index: ``--push-index`` once, then a mount from an empty store that
  finds the published index, against the eStargz image of the same content;
* default, early-reads and wait-index again behind a proxy 20 and 50 ms away
  per request.

Images: the real Debian ``bookworm-python`` (and ``bookworm``) in gzip, and
the base layer of ``bookworm`` alone as a one-layer image. An upper layer
that takes parents from below (umoci writes ``usr/bin`` without ``usr``)
lets lookups through only once the base layer has shown those parents to be
directories; umoci writes the base layer in name order, so for
``bookworm-python`` (whose top layer writes under ``var``) that is near the
base layer's end, while the one-layer image decides paths as they pass.

Two files are read at once through ``cat`` as soon as the mount command
returns: ``/etc/debian_version`` (128 KiB into the base layer's tar) and
``/etc/os-release`` (a symlink early in the layer to
``/usr/lib/os-release``, 22.7 MB into the layer's 121 MB of tar). Times
run from the start of ``lazyfs mount``. Then ``lazyfs stats`` is polled
until the index is ready. Bytes are layer blobs served by the registry
(its access log): up to the first read (requests completed by then) and up
to the index being ready.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path

from lazyfs.testing import debian
from lazyfs.testing.push import push_image

from .bench_download import proxied, wait_quiet
from .common import BENCH_DIR, PYTHON, REPO, Run, ratio
from .fullpull import full_pull
from .lazy import layer_sizes, push_debian
from .mounting import _daemon_pid, bench_env, mount_stats, unmount
from .registry import running_registry
from .reglog import parse, summarise

MAIN = "bookworm-python"
BASE = "base layer alone"
EARLY = "etc/debian_version"
READ = "etc/os-release"
MODES = {"default": [], "early-reads": ["--early-reads"], "wait-index": ["--wait-index"]}
READY_TIMEOUT = 300


def run(quick: bool) -> Run:
    res = Run("stream", quick)
    variants = (MAIN, BASE) if quick else (MAIN, BASE, "bookworm")
    reps = 1 if quick else 3
    delays = (0.02,) if quick else (0.02, 0.05)
    res.note(f"load before waiting: {os.getloadavg()[0]:.2f}")
    if not quick:
        waited = wait_quiet()
        res.note(f"waited {waited:.0f} s for the 1-minute load to fall below 1.0")
    load_start = os.getloadavg()[0]
    res.note(f"1-minute load at the start of the measurements: {load_start:.2f}")
    for variant in variants:
        with running_registry(f"stream-{_slug(variant)}") as (reg, _):
            images = {fmt: _push(reg, variant, fmt) for fmt in ("gzip", "estargz")}
            _variant(res, reg, variant, images, reps, delays if variant in (MAIN, BASE) else ())
    _verdicts(res)
    _tables(res, reps)
    res.save({"reps": reps, "load_start": load_start, "load_end": os.getloadavg()[0]})
    return res


def _slug(variant: str) -> str:
    return variant.replace(" ", "-")


def _push(reg, variant: str, fmt: str) -> tuple[str, dict[str, int]] | str:
    """(reference, {layer digest: size}) of the pushed image, or why not.
    ``BASE`` is the base layer of ``bookworm`` alone, as a one-layer image."""
    img = push_debian(reg.host, "bookworm" if variant == BASE else variant, fmt)
    if isinstance(img, str):
        return img
    if variant != BASE:
        return img.ref, layer_sizes(img.layout, variant)
    tag = debian.default_tag(img.layout, "bookworm")
    first = debian.layer_infos(img.layout, tag)[0]
    config = debian.read_json(debian.blob_path(
        img.layout, debian.image_manifest(img.layout, tag)["config"]["digest"]))
    blob = debian.blob_path(img.layout, first.digest).read_bytes()
    with reg.client() as client:
        push_image(client, img.repo, f"base-{fmt}", [blob], layer_media_type=first.media_type,
                   diff_ids=config["rootfs"]["diff_ids"][:1],
                   layer_annotations=[first.annotations])
    return f"{img.host}/{img.repo}:base-{fmt}", {first.digest: first.size}


def _variant(res: Run, reg, variant: str, images: dict, reps: int, delays) -> None:
    gz, es = images["gzip"], images["estargz"]
    if isinstance(gz, str):
        res.add(variant=variant, mode="push", delay_ms=0, error=gz)
        return
    gz_ref, layers = gz
    total = sum(layers.values())
    ctx = _Ctx(reg.log_path, frozenset(layers), total, BENCH_DIR / "work" / f"stream-{_slug(variant)}")
    base = {"variant": variant, "image_mib": total / 2**20, "delay_ms": 0}
    res.add(**base, mode="full pull", **_median([_full(gz_ref, ctx) for _ in range(reps)]))
    for mode, flags in MODES.items():
        runs = [_lazy(gz_ref, flags, ctx) for _ in range(reps)]
        res.add(**base, mode=mode, **_median(runs))
    for delay in delays:
        ms = int(delay * 1000)
        with proxied(reg.host, delay) as host:
            ref = gz_ref.replace(reg.host, host, 1)
            row = {**base, "delay_ms": ms}
            res.add(**row, mode="full pull", **_median([_full(ref, ctx)]))
            for mode in ("default", "early-reads"):
                runs = [_lazy(ref, MODES[mode], ctx) for _ in range(reps)]
                res.add(**row, mode=mode, **_median(runs))
            res.add(**row, mode="wait-index", **_median([_lazy(ref, ["--wait-index"], ctx)]))
    pushed = _lazy(gz_ref, ["--push-index"], ctx, until="published_index")
    res.add(**base, mode="push-index", **_median([pushed]))
    if not pushed.get("error"):
        runs = [_lazy(gz_ref, [], ctx) for _ in range(reps)]
        res.add(**base, mode="shared index", **_median(runs))
    if isinstance(es, str):
        res.add(**base, mode="estargz", error=es)
    else:
        es_ref, es_layers = es
        es_ctx = _Ctx(reg.log_path, frozenset(es_layers), sum(es_layers.values()), ctx.work)
        runs = [_lazy(es_ref, [], es_ctx) for _ in range(reps)]
        res.add(**{**base, "image_mib": es_ctx.total / 2**20}, mode="estargz", **_median(runs))
    shutil.rmtree(ctx.work, ignore_errors=True)


class _Ctx:
    """Where a phase works and how it counts what the registry served."""

    def __init__(self, log_path: Path, layers: frozenset[str], total: int, work: Path):
        self.log_path, self.layers, self.total, self.work = log_path, layers, total, work

    def offset(self) -> int:
        return self.log_path.stat().st_size

    def served(self, start: int, end: int | None = None) -> dict:
        """Layer blobs (and every blob, index artifacts included) between two
        offsets of the access log."""
        with open(self.log_path, "rb") as f:
            f.seek(start)
            text = f.read(None if end is None else end - start).decode(errors="replace")
        reqs = parse(text)
        layer = [r for r in reqs if not r.is_blob or r.uri.rpartition("/")[2] in self.layers]
        mine = summarise(layer)
        return {"mib": mine.blob_bytes / 2**20, "kib": mine.blob_bytes / 1024,
                "pct": 100 * mine.blob_bytes / self.total, "requests": mine.requests,
                "all_kib": summarise(reqs).blob_bytes / 1024}


def _full(ref: str, ctx: _Ctx) -> dict:
    start = ctx.offset()
    fp = full_pull(ref, ctx.work / "full", READ)
    shutil.rmtree(ctx.work / "full", ignore_errors=True)
    time.sleep(0.2)
    served = ctx.served(start)
    return {"read_s": fp.total_s, "skopeo_s": fp.pull_s, "unpack_s": fp.unpack_s,
            "ready_mib": served["mib"], "error": fp.error}


def _cat(path: Path, t0: float, out: dict, key: str) -> None:
    r = subprocess.run(["cat", str(path)], check=False, capture_output=True, timeout=READY_TIMEOUT)
    out[key] = time.perf_counter() - t0
    if r.returncode != 0:
        out["error"] = f"cat /{path.name}: {r.stderr.decode(errors='replace').strip()[:200]}"


def _lazy(ref: str, flags: list[str], ctx: _Ctx, until: str = "ready") -> dict:
    """One mount from an empty store: both reads, then the index ready (or,
    with ``until="published_index"``, published)."""
    store, runtime, mp = ctx.work / "store", ctx.work / "run", ctx.work / "mnt"
    for d in (store, runtime):
        shutil.rmtree(d, ignore_errors=True)
    mp.mkdir(parents=True, exist_ok=True)
    env = bench_env(store, runtime)
    start = ctx.offset()
    t0 = time.perf_counter()
    r = subprocess.run([PYTHON, "-m", "lazyfs", "mount", *flags, ref, str(mp)], check=False,
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out: dict = {"mount_s": time.perf_counter() - t0}
    pid = _daemon_pid(r.stdout, mp, env)
    try:
        if r.returncode != 0:
            return {**out, "error": f"mount exited {r.returncode}: {r.stderr.strip()[-300:]}"}
        threads = [threading.Thread(target=_cat, args=(mp / p, t0, out, key))
                   for p, key in ((EARLY, "early_s"), (READ, "read_s"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        at_read = ctx.offset()
        stats = _wait(mp, until, t0, out)
        time.sleep(0.2)  # the registry logs a request just after answering it
        first, ready = ctx.served(start, at_read), ctx.served(start)
        out.update({f"first_{k}": v for k, v in first.items()})
        out.update({f"ready_{k}": v for k, v in ready.items()})
        if stats:
            out["index_seconds"] = stats.get("index_seconds")
            out["index_state"] = stats.get("index", "")
            out["published"] = stats.get("published_index", "")
        if out.get("error") or (stats and str(stats.get("index", "")).startswith("failed")):
            out["error"] = f"{out.get('error', '')} {_daemon_error(runtime)}".strip()
        return out
    finally:
        unmount(mp, pid)
        shutil.rmtree(store, ignore_errors=True)


def _wait(mp: Path, until: str, t0: float, out: dict) -> dict | None:
    """Poll the mount's statistics until the index is ready (or published)."""
    deadline = time.monotonic() + READY_TIMEOUT
    stats = None
    while time.monotonic() < deadline:
        stats = mount_stats(mp)
        if stats is None:
            out["error"] = "no stats answer"
            return None
        state = str(stats.get("index", "ready"))
        if state.startswith("failed"):
            break
        if until == "ready" and state == "ready":
            break
        if until == "published_index" and stats.get("published_index"):
            break
        time.sleep(0.05)
    else:
        out["error"] = f"index not {until} after {READY_TIMEOUT} s"
    out["ready_s"] = time.perf_counter() - t0
    return stats


def _daemon_error(runtime: Path) -> str:
    lines: list[str] = []
    for path in runtime.glob("lazyfs/*.log"):
        lines += [ln for ln in path.read_text(errors="replace").splitlines()
                  if "WARNING" in ln or "ERROR" in ln]
    return f"(daemon: {lines[-1][-300:]})" if lines else ""


def _median(runs: list[dict]) -> dict:
    """The median of each number over the runs; texts from the first run,
    errors from any."""
    out: dict = {"runs": len(runs)}
    keys = {k for r in runs for k in r}
    for k in sorted(keys):
        values = [r[k] for r in runs if k in r]
        nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if nums and len(nums) == len(values):
            out[k] = statistics.median(nums)
        elif k == "error":
            out[k] = "; ".join(sorted({v for v in values if v}))
        else:
            out[k] = values[0]
    for k in ("read_s", "early_s", "ready_s"):
        vals = [r[k] for r in runs if isinstance(r.get(k), (int, float))]
        if len(vals) > 1:
            out[f"{k}_all"] = ", ".join(f"{v:.2f}" for v in vals)
    return out


def _verdicts(res: Run) -> None:
    for variant in {r["variant"] for r in res.rows}:
        rows = [r for r in res.rows if r["variant"] == variant]
        full = {r["delay_ms"]: r.get("read_s") for r in rows if r["mode"] == "full pull"}
        for r in rows:
            r["vs_full"] = ratio(r.get("read_s"), full.get(r["delay_ms"]))
            r["early_vs_full"] = ratio(r.get("early_s"), full.get(r["delay_ms"]))
        es = next((r for r in rows if r["mode"] == "estargz"), None)
        shared = next((r for r in rows if r["mode"] == "shared index"), None)
        if es and shared:
            shared["vs_estargz_s"] = ratio(shared.get("read_s"), es.get("read_s"))
            shared["vs_estargz_kib"] = ratio(shared.get("first_all_kib"), es.get("first_all_kib"))


def _tables(res: Run, reps: int) -> None:
    n = f"median of {reps}" if reps > 1 else "one run"
    for variant in dict.fromkeys(r["variant"] for r in res.rows):
        rows = [r for r in res.rows if r["variant"] == variant and r["delay_ms"] == 0]
        res.table(f"First mount, empty store, {variant} gzip: seconds from `lazyfs mount` "
                  f"({n})", rows, [
                      ("mode", "mode"), ("mount_s", "mount command"),
                      ("early_s", f"cat /{EARLY}"), ("read_s", f"cat /{READ}"),
                      ("ready_s", "index ready"), ("index_seconds", "index_seconds (stats)"),
                      ("vs_full", "os-release / full"), ("early_vs_full", "debian_version / full"),
                      ("read_s_all", "os-release, each run"), ("error", "error")])
        res.table(f"First mount, empty store, {variant}: layer bytes served by the registry "
                  f"({n})", rows, [
                      ("mode", "mode"), ("image_mib", "image MiB"),
                      ("first_kib", "KiB by first read"), ("first_pct", "% by first read"),
                      ("first_all_kib", "KiB by first read, index artifact included"),
                      ("first_requests", "requests by first read"),
                      ("ready_mib", "MiB by index ready"), ("ready_pct", "% by index ready"),
                      ("ready_requests", "requests by index ready")])
    for variant in dict.fromkeys(r["variant"] for r in res.rows if r["delay_ms"]):
        lat = [r for r in res.rows if r["variant"] == variant and r["mode"] in
               ("full pull", "default", "early-reads", "wait-index")]
        res.table(f"First mount behind a per-request delay, {variant} gzip (median of the runs)",
                  lat, [("delay_ms", "delay ms"), ("mode", "mode"), ("runs", "runs"),
                        ("skopeo_s", "skopeo copy"), ("mount_s", "mount command"),
                        ("early_s", f"cat /{EARLY}"),
                        ("read_s", f"cat /{READ} (full: pull+unpack+read)"),
                        ("ready_s", "index ready"), ("index_seconds", "index_seconds (stats)"),
                        ("vs_full", "os-release / full"), ("ready_requests", "requests"),
                        ("error", "error")])

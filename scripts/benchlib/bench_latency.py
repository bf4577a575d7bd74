"""``latency``: the first-read comparison again, with the registry a fixed
delay away per request (``benchlib.proxy``), to show what each request costs.

The full pull makes few, long requests; a lazy read makes a few short ones;
an index build of a seekable layer makes several in a row. The delay turns
those counts into seconds.
"""

from __future__ import annotations

import contextlib
import json

from .bench_first_read import run as first_read
from .common import BENCH_DIR, Run
from .proxy import DelayProxy


def run(quick: bool) -> Run:
    delays = (0.03,) if quick else (0.02, 0.05)
    formats = ("gzip", "estargz")
    last = None
    for delay in delays:
        ms = int(delay * 1000)
        proxies: list[DelayProxy] = []

        @contextlib.contextmanager
        def behind_proxy(host: str):
            with DelayProxy(host, delay) as proxy:
                proxies.append(proxy)
                yield proxy.host

        last = first_read(quick, name=f"latency-{ms}ms", host_wrapper=behind_proxy,
                          formats=formats)
        measured = [r for r in last.rows if "full_s" in r or "full_error" in r]
        for row, proxy in zip(measured, proxies):
            row["delay_ms"], row["proxy_connections"] = ms, proxy.connections
            row["proxy_sends"] = proxy.sends
        last.save({"delay_ms": ms})
    _compare(delays, last)
    last.save({"delay_ms": int(delays[-1] * 1000)})
    return last


def _compare(delays, res: Run) -> None:
    """One table: first-read seconds per format with no delay and each delay."""
    runs = {"0 ms": BENCH_DIR / "results-first-read.json"}
    runs |= {f"{int(d * 1000)} ms": BENCH_DIR / f"results-latency-{int(d * 1000)}ms.json"
             for d in delays}
    rows = []
    for label, path in runs.items():
        if not path.exists():
            continue
        for row in json.loads(path.read_text())["rows"]:
            if row["format"] in ("gzip", "estargz"):
                rows.append({"delay": label, **row})
    res.table("First read under added per-request delay (seconds, requests)", rows, [
        ("format", "format"), ("delay", "delay"), ("full_pull_s", "skopeo copy"),
        ("full_s", "full pull+unpack+read"), ("cold_s", "cold first read"),
        ("cold_requests", "cold requests"), ("indexed_s", "indexed first read"),
        ("indexed_requests", "indexed requests"), ("shared_s", "shared-index first read"),
        ("shared_requests", "shared-index requests")])

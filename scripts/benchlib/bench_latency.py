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
from .common import BENCH_DIR, Run, table
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
        for row, proxy in zip([r for r in last.rows if "error" not in r or r.get("full_s")],
                              proxies):
            row["delay_ms"], row["proxy_connections"] = ms, proxy.connections
            row["proxy_requests"] = proxy.sends
        last.save({"delay_ms": ms})
    _compare(delays)
    return last


def _compare(delays) -> None:
    """One table: first-read seconds per format with no delay and each delay."""
    runs = {"0 ms": BENCH_DIR / "results-first-read.json"}
    runs |= {f"{int(d * 1000)} ms": BENCH_DIR / f"results-latency-{int(d * 1000)}ms.json"
             for d in delays}
    by_format: dict[str, dict] = {}
    for label, path in runs.items():
        if not path.exists():
            continue
        for row in json.loads(path.read_text())["rows"]:
            r = by_format.setdefault(row["format"], {"format": row["format"]})
            for key in ("full_s", "cold_s", "indexed_s", "cold_requests", "indexed_requests"):
                r[f"{key}@{label}"] = row.get(key)
    cols = [("format", "format")]
    for label in runs:
        cols += [(f"full_s@{label}", f"full s, {label}"), (f"cold_s@{label}", f"cold s, {label}"),
                 (f"indexed_s@{label}", f"indexed s, {label}")]
    table("First read under added per-request delay", list(by_format.values()), cols)

"""lazyfs benchmarks: ``scripts/bench [--quick] {index,first-read,seq-read,metadata,latency,stream,download,warm-read,snapshotter,trace,serve,trace-ctr,peer,soak,all}``
(``all`` leaves out ``soak``).

Each subcommand prints Markdown tables and writes ``.bench/results-NAME.json``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from benchlib import common
from benchlib.common import log, machine

COMMANDS = {
    "index": "bench_index",
    "first-read": "bench_first_read",
    "seq-read": "bench_seq_read",
    "metadata": "bench_metadata",
    "latency": "bench_latency",
    "stream": "bench_stream",
    "download": "bench_download",
    "warm-read": "bench_warm_read",
    "snapshotter": "bench_snapshotter",
    "trace": "bench_trace",
    "serve": "bench_serve",
    "trace-ctr": "bench_trace_ctr",
    "peer": "bench_peer",
    "soak": "bench_soak",
}
NOT_IN_ALL = {"soak"}
"""Minutes of load with faults: run on its own."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    p.add_argument("--quick", action="store_true",
                   help="smaller images and fewer formats: a smoke run of a few minutes")
    p.add_argument("commands", nargs="+", choices=[*COMMANDS, "all"], metavar="COMMAND",
                   help=", ".join([*COMMANDS, "all"]))
    p.add_argument("--drop-caches", action="store_true",
                   help="drop the page cache before every cold phase (slows the whole machine)")
    args = p.parse_args(argv)
    common.DROP_CACHES = args.drop_caches
    names = [c for c in COMMANDS if c not in NOT_IN_ALL] if "all" in args.commands \
        else args.commands
    log(f"machine: {machine()}")
    for name in names:
        started = time.perf_counter()
        log(f"== {name}{' (quick)' if args.quick else ''}")
        importlib.import_module(f"benchlib.{COMMANDS[name]}").run(args.quick)
        log(f"== {name} done in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

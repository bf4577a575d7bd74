"""``python -m lazyfs.snapshotter --socket PATH --state DIR``: the snapshotter on
its own, each image's layers served by a ``lazyfs mount --layers`` of it.

Runs in the foreground until SIGTERM or SIGINT; logs to stderr; writes its
statistics as JSON to ``DIR/stats.json`` on SIGUSR1 and on exit.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

import trio

from .mountsource import MountLayerSource
from .service import SnapshotterService


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lazyfs.snapshotter", description=__doc__.split("\n")[0])
    p.add_argument("--socket", required=True, help="the gRPC unix socket containerd dials")
    p.add_argument("--state", required=True, help="snapshots and their metadata")
    p.add_argument("--mounts", help="where images are mounted (default: STATE/mounts)")
    p.add_argument("--lazyfs-arg", action="append", default=[], metavar="ARG",
                   help="a global option for each lazyfs mount, e.g. --cache-dir=DIR; repeatable")
    p.add_argument("--debug", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.debug else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    trio.run(_serve, a)
    return 0


async def _serve(a) -> None:
    state = Path(a.state)
    layers = MountLayerSource(a.mounts or state / "mounts", args=a.lazyfs_arg)
    service = SnapshotterService(a.socket, str(state), layers)

    def dump() -> None:
        stats = {**service.stats(), "mounts": layers.stats()}
        (state / "stats.json").write_text(json.dumps(stats, indent=1))

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as sigs:
                async for sig in sigs:
                    dump()
                    if sig != signal.SIGUSR1:
                        nursery.cancel_scope.cancel()
                        break
    finally:
        with trio.CancelScope(shield=True):
            await layers.aclose()


if __name__ == "__main__":
    sys.exit(main())

"""One measurement of lazyfs in a fresh process: ``python -m benchlib.probe JSON``.

A fresh process per measurement is what a user's command gets: nothing warm
but the store on disk (and the kernel's page cache). Prints one JSON object.

Spec keys: ``ref``, ``store``; ``read``: paths to read whole after opening;
``seq``: a path read front to back in ``chunk`` pieces ``passes`` times.
"""

from __future__ import annotations

import json
import sys
import time

import trio

from .common import rss_mib, tree_bytes

from lazyfs.errors import LazyfsError
from lazyfs.image import OpenOptions, open_image_async
from lazyfs.store.blobs import Store


async def probe(spec: dict) -> dict:
    store = Store(spec["store"])
    out: dict = {}
    started = time.perf_counter()
    async with open_image_async(spec["ref"], OpenOptions(), store) as image:
        out["open_s"] = time.perf_counter() - started
        out["rss_mib"], out["hwm_mib"] = rss_mib()
        out["reads"] = [await _read_whole(image, p, started) for p in spec.get("read", [])]
        if "seq" in spec:
            out["seq"] = [await _sequential(image, spec["seq"], spec.get("chunk", 1 << 20))
                          for _ in range(spec.get("passes", 2))]
        out["stats"] = image.stats()
    out["index_bytes"] = tree_bytes(store.root / "indexes")
    return out


async def _read_whole(image, path: str, started: float) -> dict:
    t = time.perf_counter()
    node = image.index.resolve(path)
    data = await image.read(node, 0, node.size)
    now = time.perf_counter()
    return {"path": path, "bytes": len(data), "s": now - t, "since_start_s": now - started}


async def _sequential(image, path: str, chunk: int) -> dict:
    node = image.index.resolve(path)
    t = time.perf_counter()
    done = 0
    while done < node.size:
        data = await image.read(node, done, chunk)
        if not data:
            break
        done += len(data)
    s = time.perf_counter() - t
    return {"bytes": done, "s": s, "mb_s": done / s / 1e6}


def main() -> int:
    spec = json.loads(sys.argv[1])
    try:
        out = trio.run(probe, spec)
    except LazyfsError as e:
        out = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What an opened image cost so far: per layer, how it is read and what it fetched.

JSON-ready, for ``lazyfs stats`` (through the mount) and ``--stats`` files.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CacheError

if TYPE_CHECKING:
    from ..image import Image


def image_stats(image: Image) -> dict:
    layers = [_layer_stats(image, pos) for pos in range(len(image.layers))]
    out = {"reference": str(image.ref), "digest": image.digest,
           "open_seconds": round(image.opened_in, 3),
           "cache_corrupt": image.reader.cache.corrupt, "layers": layers}
    if image.background is not None:
        out.update(image.background.state())
        if image.published:
            out["published_index"] = image.published
    return out


def _layer_stats(image: Image, pos: int) -> dict:
    info, layer = image.layers[pos], image.reader.layers[pos]
    s = layer.stats
    fb = image.fallbacks.get(info.desc.digest)
    mode, reason = ("lazy", "") if info.lazy else ("full pull", info.reason)
    if fb is not None and fb.reason:
        mode, reason = "full pull", fb.reason
    s.mode, s.reason = mode, reason
    out = {
        "digest": info.desc.digest, "format": info.format, "mode": mode,
        "reason": reason, "size": info.desc.size,
        "bytes_fetched": s.bytes_fetched + (fb.pulled_bytes if fb else 0),
        "range_bytes": s.bytes_fetched,
        "pulled_bytes": fb.pulled_bytes if fb else 0,
        "pull_reason": fb.pull_reason if fb else "",
        "local": layer.blob.local_path() is not None,
        "prefetch": image.prefetching.get(info.desc.digest, ""),
        "requests": s.requests, "cache_hits": s.hits, "cache_misses": s.misses,
        "shared_fetches": s.shared,
        "verify_failures": s.verify_failures, "retries": s.retries,
        "failed_reads": s.failed_reads, "timeouts": s.timeouts,
        "readahead_pieces": s.readahead_pieces}
    indexing = image.background.layer_state(pos) if image.background is not None else None
    if indexing is not None:
        out["indexing"] = indexing
    return out


def write_stats(path: str | os.PathLike, image: Image) -> None:
    """``image.stats()`` as JSON at ``path``, replaced atomically so a reader
    never sees half a file. Blocking; small."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(image.stats(), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise CacheError(f"cannot write stats to {path}: {e.strerror}") from None

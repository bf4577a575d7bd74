"""Where a lazy start's bytes went, chunk by chunk, for TOC formats (eStargz).

Witnesses other than the counters of the code under test: the registry's
access log (every blob byte served), the image's TOCs read from the local
layout (the chunks and where each lies in its blob), and the chunk cache on
disk (the pieces decoded, verified and kept: the ones a read, readahead or
prefetch asked for; bytes a range merely spanned between two of them, or
the files in front of a TOC that its first request took, are not kept).
The service's stats add one count: the pieces reads loaded from the blob
themselves (``cache_misses``).

When that count is the number of kept chunks, readahead and prefetch kept
none of their own, so the kept chunks are exactly the ones reads needed,
and the TOCs plus those chunks, each whole, are the floor of this run: a
chunk is verified as a whole (its ``chunkDigest``), so no fetcher that
verifies what it serves can take less of one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import trio

from lazyfs.blob import FileBlob
from lazyfs.formats import build_table, open_reader
from lazyfs.formats.toc import unpack_state
from lazyfs.store.chunks import ChunkCache
from lazyfs.testing import debian

STATS_XATTR = "user.lazyfs.stats"


@dataclass
class Chunk:
    layer: int
    path: str
    index: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass
class Breakdown:
    served: int
    """Layer bytes the registry served."""
    image: int
    tocs: int
    """The TOCs and footers of the layers, as stored."""
    kept: list[Chunk]
    misses: int
    """Pieces reads loaded from the blob themselves (the service's stats, all images)."""

    @property
    def kept_bytes(self) -> int:
        return sum(c.size for c in self.kept)

    @property
    def floor(self) -> int | None:
        """The TOCs and the chunks reads needed; unknown when readahead or
        prefetch kept chunks of their own."""
        return self.tocs + self.kept_bytes if self.misses == len(self.kept) else None

    def summary(self) -> dict:
        pct = lambda n: None if n is None else round(100 * n / self.image, 2)  # noqa: E731
        other = self.served - self.tocs - self.kept_bytes
        return {"served": self.served, "served_pct": pct(self.served),
                "tocs": self.tocs, "tocs_pct": pct(self.tocs),
                "kept": self.kept_bytes, "kept_pct": pct(self.kept_bytes),
                "other": other, "other_pct": pct(other),
                "floor": self.floor, "floor_pct": pct(self.floor),
                "chunks_kept": len(self.kept), "read_misses": self.misses}

    def files(self) -> list[dict]:
        """One row per file with a kept chunk, largest first."""
        rows: dict[tuple[int, str], dict] = {}
        for c in self.kept:
            row = rows.setdefault((c.layer, c.path), {"layer": c.layer, "path": c.path,
                                                      "chunks": 0, "bytes": 0})
            row["chunks"] += 1
            row["bytes"] += c.size
        out = sorted(rows.values(), key=lambda r: -r["bytes"])
        for r in out:
            r["pct"] = round(100 * r["bytes"] / self.image, 2)
        return out


def read_stats(root: Path) -> dict:
    """The service's stats (``lazyfs stats`` of a serve mount)."""
    return json.loads(os.getxattr(root, STATS_XATTR))


def breakdown(layout: Path, variant: str, stats: dict, cache_dir: Path,
              served: int) -> Breakdown:
    """Attribute a run's bytes to the chunks of the image in ``layout``."""
    tag = debian.default_tag(layout, variant)
    infos = debian.layer_infos(layout, tag)
    cache = ChunkCache(cache_dir / "chunks")
    kept: list[Chunk] = []
    tocs = 0
    for pos, info in enumerate(infos):
        table = trio.run(build_table, info, FileBlob(debian.blob_path(layout, info.digest),
                                                     info.digest))
        tocs += info.size - unpack_state(table.state)["toc_offset"]
        content = open_reader(table)
        for e in table.entries:
            if not e.data or not e.size:
                continue
            for n, p in enumerate(content.pieces(e.data, 0, e.size)):
                if cache.path(info.digest, p).exists():
                    kept.append(Chunk(pos, e.name, n, p.start, p.end))
    layers = [layer for img in stats.get("images", []) if img.get("image")
              for layer in img["image"].get("layers", [])]
    return Breakdown(served, sum(i.size for i in infos), tocs, kept,
                     sum(layer.get("cache_misses", 0) for layer in layers))

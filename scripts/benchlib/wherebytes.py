"""Where an eStargz start's bytes went: the registry's count of layer bytes
served set against the floor (``lazyfs.testing.floor``: the TOCs and the
chunks the run decoded and kept, each whole).

The service's stats add one count: the pieces reads loaded from the blob
themselves (``cache_misses``). When it is the number of kept chunks,
readahead and prefetch kept none of their own, so the kept chunks are
exactly the ones reads needed and the floor is this run's; otherwise the
floor is left unknown.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from lazyfs.testing import debian
from lazyfs.testing.floor import Floor, floor

STATS_XATTR = "user.lazyfs.stats"


@dataclass
class Breakdown:
    served: int
    """Layer bytes the registry served."""
    image: int
    floor: Floor
    misses: int
    """Pieces reads loaded from the blob themselves (the service's stats, all images)."""

    def summary(self) -> dict:
        pct = lambda n: None if n is None else round(100 * n / self.image, 2)  # noqa: E731
        f = self.floor
        known = f.total if self.misses == len(f.kept) else None
        other = self.served - f.total
        return {"served": self.served, "served_pct": pct(self.served),
                "tocs": f.tocs, "tocs_pct": pct(f.tocs),
                "kept": f.kept_bytes, "kept_pct": pct(f.kept_bytes),
                "other": other, "other_pct": pct(other),
                "floor": known, "floor_pct": pct(known),
                "chunks_kept": len(f.kept), "read_misses": self.misses}

    def files(self) -> list[dict]:
        """One row per file with a kept chunk, largest first."""
        rows: dict[tuple[int, str], dict] = {}
        for c in self.floor.kept:
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
    tag = debian.default_tag(layout, variant)
    image = sum(i.size for i in debian.layer_infos(layout, tag))
    layers = [layer for img in stats.get("images", []) if img.get("image")
              for layer in img["image"].get("layers", [])]
    return Breakdown(served, image, floor(layout, tag, cache_dir),
                     sum(layer.get("cache_misses", 0) for layer in layers))

"""The bytes a verifying fetcher cannot avoid, for a run over an eStargz
image: the layers' TOCs and footers, and every chunk it decoded and kept.

A chunk is verified as a whole (its ``chunkDigest``), so it can only be
fetched whole. The chunks are read from the image's local OCI layout, and
which of them a run needed from the chunk cache on disk (the pieces
decoded, verified and kept; bytes a range merely spanned are not kept),
so these figures do not rest on the counters of the code being measured.
For benchmarks and tests of what a start fetches; blocking.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import trio

from ..blob import FileBlob
from ..formats import build_table, open_reader
from ..formats.toc import unpack_state
from ..store.chunks import ChunkCache
from . import debian


@dataclass(frozen=True)
class Chunk:
    layer: int
    """The layer's position in the image."""
    path: str
    index: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass
class Floor:
    layers: list[tuple[int, int]]
    """Each layer's blob size and the bytes of its TOC and footer."""
    kept: list[Chunk]

    @property
    def tocs(self) -> int:
        return sum(toc for _, toc in self.layers)

    @property
    def kept_bytes(self) -> int:
        return sum(c.size for c in self.kept)

    @property
    def total(self) -> int:
        return self.tocs + self.kept_bytes


def floor(layout: Path, tag: str, cache_dir: Path) -> Floor:
    """The TOCs of the eStargz image ``tag`` in ``layout``, and the chunks of
    it that the store at ``cache_dir`` (a ``LAZYFS_CACHE_DIR``) has kept."""
    cache = ChunkCache(Path(cache_dir) / "chunks")
    layers, kept = [], []
    for pos, info in enumerate(debian.layer_infos(layout, tag)):
        blob = FileBlob(debian.blob_path(layout, info.digest), info.digest)
        table = trio.run(build_table, info, blob)
        layers.append((info.size, info.size - unpack_state(table.state)["toc_offset"]))
        content = open_reader(table)
        for e in table.entries:
            if e.data and e.size:
                for n, p in enumerate(content.pieces(e.data, 0, e.size)):
                    if cache.path(info.digest, p).exists():
                        kept.append(Chunk(pos, e.name, n, p.start, p.end))
    return Floor(layers, kept)


_BLOB_GET = re.compile(r'"GET /v2/(?P<repo>\S+)/blobs/(?P<digest>sha256:[0-9a-f]{64}) [^"]*" '
                       r'(?P<status>\d{3}) (?P<bytes>\d+)')


def blob_bytes_served(access_log: str, repo: str, digests: set[str]) -> int:
    """Body bytes a distribution registry's access log shows sent for the
    blobs ``digests`` of ``repo``."""
    return sum(int(m["bytes"]) for m in _BLOB_GET.finditer(access_log)
               if m["repo"] == repo and m["digest"] in digests and m["status"] in ("200", "206"))

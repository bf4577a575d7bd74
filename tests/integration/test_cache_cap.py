"""``--cache-size`` holds while an image is mounted: a real mount reads
several times the cap (a gzip layer downloaded whole by the first mount, an
eStargz layer read by range), and the cache, whole blobs included, stays
within the cap plus one piece, while every byte read is right, the second
time too (after what it needed was evicted and fetched again)."""

from __future__ import annotations

import hashlib
import os
import random
import stat
import time
import uuid
from pathlib import Path

import pytest

from lazyfs.testing import build_layer
from lazyfs.testing.push import OCI_LAYER_GZIP, push_image
from tests.support.climount import cli_mount, lazyfs_env

pytestmark = pytest.mark.slow

CAP = 8 << 20
SLACK = 2 << 20
"""One piece per writing process (eStargz chunks here are 1 MiB), and a
whole blob counted no later than the next write after ``RESCAN_EVERY``."""
rng = random.Random(15)
GZIP_FILES = {f"g/{i}": rng.randbytes(1 << 20) for i in range(6)}
LAZY_FILES = {f"e/{i}": rng.randbytes(2 << 20) for i in range(12)}


def _cached_bytes(cache: Path) -> int:
    """What is on disk now: pieces are written behind the reads, so a file
    seen by the walk may be renamed or evicted before it is measured."""
    return sum(_size(Path(top, name)) for sub in ("chunks", "blobs")
               for top, _, names in os.walk(cache / sub) if Path(top).name != "leases"
               for name in names)


def _size(path: Path) -> int:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


def test_the_cache_cap_holds_while_mounted(registry, tmp_path):
    lazy = build_layer("estargz", {"e/": None, **LAZY_FILES}, chunk_size=1 << 20)
    base = build_layer("gzip", {"g/": None, **GZIP_FILES})
    assert base.media_type == lazy.media_type == OCI_LAYER_GZIP
    repo = f"cap/img-{uuid.uuid4().hex[:8]}"
    with registry.client() as c:
        push_image(c, repo, "v1", [base.blob, lazy.blob],
                   layer_annotations=[{}, lazy.annotations],
                   diff_ids=[base.diff_id, lazy.diff_id],
                   layer_media_type=OCI_LAYER_GZIP)
    env = lazyfs_env(tmp_path)
    cache = tmp_path / "cache"
    with cli_mount(f"{registry.host}/{repo}:v1", tmp_path / "mnt", env,
                   "--cache-size", "8M") as mnt:
        peak = 0
        for round_ in range(2):
            for name, data in {**GZIP_FILES, **LAZY_FILES}.items():
                got = (mnt / name).read_bytes()
                assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), \
                    f"{name} (round {round_ + 1})"
                if name.startswith("e/"):
                    peak = max(peak, _cached_bytes(cache))
            time.sleep(0.1)
        read = 2 * sum(map(len, {**GZIP_FILES, **LAZY_FILES}.values()))
        assert read > 5 * CAP
        assert peak <= CAP + SLACK, f"the cache reached {peak >> 20} MiB under an 8 MiB cap"

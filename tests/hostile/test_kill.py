"""SIGKILL at random points of a pull and of index building never leaves a
cache entry that a later run trusts: whatever survives in the store either
loads whole and correct, or is ignored and rebuilt."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from lazyfs.index.merged import MergedIndex
from lazyfs.index.layertable import load_layer_table
from lazyfs.testing.push import push_image
from tests.support.images import gzip_bytes, make_tar

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def big_image(registry):
    rng = random.Random(7)
    files = {"etc/": None, "etc/os-release": "ID=kill\n"}
    for i in range(3000):
        files[f"data/f{i:04d}"] = rng.randbytes(rng.randrange(1, 9000))
    files["data/big"] = rng.randbytes(12 << 20)
    with registry.client() as c:
        push_image(c, "hostile/kill", "v1", [gzip_bytes(make_tar(files))])
    return f"{registry.host}/hostile/kill:v1", files


def test_sigkill_during_index_building_leaves_nothing_trusted(big_image, tmp_path):
    ref, files = big_image
    env = dict(os.environ, LAZYFS_CACHE_DIR=str(tmp_path / "cache"))
    rng = random.Random(11)
    for _ in range(6):
        p = subprocess.Popen([sys.executable, "-m", "lazyfs", "cat", ref, "/data/f0042"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 2.5))
        p.send_signal(signal.SIGKILL)
        p.wait()
        for kind in (tmp_path / "cache" / "indexes").glob("*"):
            for f in kind.iterdir():
                if f.name.startswith("."):
                    continue  # work in progress, never opened by name
                if kind.name.startswith("layer-"):
                    load_layer_table(f)
                elif kind.name.startswith("merged"):
                    MergedIndex.open(f).close()
    out = subprocess.run([sys.executable, "-m", "lazyfs", "cat", ref, "/data/f0042", "/data/big"],
                         env=env, capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout == files["data/f0042"] + files["data/big"]

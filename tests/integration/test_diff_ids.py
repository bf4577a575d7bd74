"""An image whose config lists a wrong diff_id for a gzip layer is refused
from the command line (exit 6, as containerd refuses it), also
when the honest image beside it left the layer's table in the cache."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys

import pytest

from lazyfs.errors import DigestMismatch
from lazyfs.testing.push import push_image, sha256
from tests.support.images import make_tar

LAZYFS = [sys.executable, "-m", "lazyfs"]
TARS = [make_tar({"etc/": None, "etc/os-release": "ID=lazyfs\n"}),
        make_tar({"etc/motd": "hello\n"})]
LAYERS = [gzip.compress(t, mtime=0) for t in TARS]


@pytest.fixture(scope="module")
def images(registry):
    lie = [sha256(b"not this layer"), sha256(TARS[1])]
    with registry.client() as c:
        push_image(c, "diff/app", "honest", LAYERS)
        push_image(c, "diff/app", "lie", LAYERS, diff_ids=lie)
    return f"{registry.host}/diff/app:honest", f"{registry.host}/diff/app:lie"


def run(*args, cache) -> subprocess.CompletedProcess:
    env = dict(os.environ, LAZYFS_CACHE_DIR=str(cache))
    return subprocess.run([*LAZYFS, *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("command", [("ls", "/etc"), ("cat", "/etc/os-release"),
                                     ("export", "--tar", "-")])
def test_a_lying_diff_id_exits_6(images, tmp_path, command):
    honest, lie = images
    name, *args = command
    good = run(name, honest, *args, cache=tmp_path / "cache")
    assert good.returncode == 0, good.stderr
    bad = run(name, lie, *args, cache=tmp_path / "cache")
    assert bad.returncode == DigestMismatch.exit_code, bad.stderr
    assert "diff_id" in bad.stderr and sha256(LAYERS[0]) in bad.stderr
    assert "Traceback" not in bad.stderr

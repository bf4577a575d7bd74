"""``lazyfs mount`` end to end: the mounted tree equals ``umoci unpack`` of the
same image, and a mounted Debian image runs programs as a chroot."""

from __future__ import annotations

import gzip
import subprocess

import pytest

from tests.support.climount import cli_mount, lazyfs, lazyfs_env
from tests.support.images import push_image
from tests.support.trees import describe, differences

pytestmark = pytest.mark.slow


def test_mounted_tree_equals_umoci_unpack(registry, awkward, tmp_path):
    tars, _, expected = awkward
    with registry.client() as c:
        push_image(c, "mount/awkward", "v1", [gzip.compress(t, mtime=0) for t in tars])
    ref = f"{registry.host}/mount/awkward:v1"
    env = lazyfs_env(tmp_path)
    with cli_mount(ref, tmp_path / "mnt", env, "-o", "dev,suid") as mnt:
        assert differences(expected, describe(mnt)) == []
        with open("/proc/mounts") as f:
            line = next(l for l in f if f" {mnt} " in l)
        source, _, fstype, opts = line.split()[:4]
        assert (source, fstype) == (ref, "fuse.lazyfs") and "ro" in opts.split(",")
        listed = lazyfs("mounts", env=env).stdout
        assert str(mnt) in listed and ref in listed
        stats = lazyfs("stats", "--json", str(mnt), env=env).stdout
        assert '"format": "gzip"' in stats
    busy = lazyfs("mount", ref, str(tmp_path / "missing"), env=env, check=False)
    assert busy.returncode == 10 and "missing" in busy.stderr and busy.stderr.count("\n") == 1


def test_mount_errors_before_daemonising_are_printed(registry, tmp_path):
    env = lazyfs_env(tmp_path)
    (tmp_path / "mnt").mkdir()
    bad = lazyfs("mount", "Not A Ref", str(tmp_path / "mnt"), env=env, check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("lazyfs: ")
    gone = lazyfs("mount", f"{registry.host}/mount/none:v1", str(tmp_path / "mnt"), env=env,
                  check=False)
    assert gone.returncode == 3 and "manifest unknown" in gone.stderr


@pytest.fixture(scope="module")
def debian_images(registry):
    from tests.support.debian import debian_image
    return {fmt: debian_image(registry.host, "bookworm-python", fmt)
            for fmt in ("gzip", "estargz", "zstd-chunked", "tar", "zstd")}


@pytest.fixture(scope="module")
def debian_unpacked(debian_images, tmp_path_factory):
    """The reference tree: ``umoci unpack`` of the gzip image."""
    bundle = tmp_path_factory.mktemp("debian") / "bundle"
    layout = debian_images["gzip"].layout
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:bookworm-python", str(bundle)],
                   check=True, capture_output=True)
    return describe(bundle / "rootfs")


@pytest.mark.parametrize("fmt", ["gzip", "estargz", "zstd-chunked", "tar", "zstd"])
def test_debian_image_runs_as_a_chroot(debian_images, debian_unpacked, tmp_path, fmt):
    img = debian_images[fmt]
    env = lazyfs_env(tmp_path)
    with cli_mount(img.ref, tmp_path / "mnt", env, "-o", "dev") as mnt:
        assert differences(debian_unpacked, describe(mnt)) == []
        out = subprocess.run(["chroot", str(mnt), "python3", "-c",
                              "import json, sqlite3; print('ok')"],
                             capture_output=True, text=True, timeout=120)
        assert out.stdout == "ok\n", out.stderr
        apt = subprocess.run(["chroot", str(mnt), "apt", "list", "--installed"],
                             capture_output=True, text=True, timeout=120)
        assert "python3/" in apt.stdout and "bash/" in apt.stdout

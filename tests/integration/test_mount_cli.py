"""``lazyfs mount`` end to end: the mounted tree equals ``umoci unpack`` of the
same image, and a mounted Debian image runs programs as a chroot."""

from __future__ import annotations

import errno
import gzip
import os
import subprocess

import pytest

from lazyfs.errors import MountError
from lazyfs.testing.push import OCI_LAYER_TAR, push_image, push_oci_layout
from tests.support.climount import cli_mount, lazyfs, lazyfs_env
from tests.support.images import make_tar
from tests.support.mounts import is_mounted
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
        _labels_unsupported_but_xattrs_served(mnt)
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


def _labels_unsupported_but_xattrs_served(mnt):
    """The image has no SELinux labels or ACLs: asked for them the kernel gets
    EOPNOTSUPP (so ``ls -l`` stops asking per file), and other names still
    reach the daemon afterwards."""
    for name in ("security.selinux", "system.posix_acl_access"):
        with pytest.raises(OSError) as e:
            os.getxattr(mnt / "caps", name)
        assert e.value.errno == errno.EOPNOTSUPP
    assert os.getxattr(mnt / "caps", "user.comment") == b"hello"
    with pytest.raises(OSError) as e:
        os.getxattr(mnt / "caps", "user.absent")
    assert e.value.errno == errno.ENODATA
    listing = subprocess.run(["ls", "-l", str(mnt)], capture_output=True, text=True, check=True)
    assert listing.stderr == "" and "caps" in listing.stdout
    assert not any(line[10:11] in ("+", ".") for line in listing.stdout.splitlines()[1:])


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
    from lazyfs.testing.debian import debian_image
    return {fmt: debian_image(registry.host, "bookworm-python", fmt)
            for fmt in ("gzip", "estargz", "zstd-chunked", "tar", "zstd")}


@pytest.fixture(scope="module")
def debian_described(debian_rootfs):
    """The reference tree, ``umoci unpack`` of the gzip image, described once
    for every format: with file digests (``True``) and without (``False``)."""
    full = describe(debian_rootfs("bookworm-python"))
    return {True: full,
            False: {p: {k: v for k, v in a.items() if k != "sha256"} for p, a in full.items()}}


@pytest.mark.parametrize("fmt", ["gzip", "estargz", "zstd-chunked", "tar", "zstd"])
def test_debian_image_runs_as_a_chroot(debian_images, debian_described, tmp_path, fmt):
    img = debian_images[fmt]
    env = lazyfs_env(tmp_path)
    # every byte is compared for the two most common formats; the others'
    # content is checked against tar's own extraction in the format tests
    content = fmt in ("gzip", "estargz")
    with cli_mount(img.ref, tmp_path / "mnt", env, "-o", "dev") as mnt:
        assert differences(debian_described[content], describe(mnt, content=content)) == []
        out = subprocess.run(["chroot", str(mnt), "python3", "-c",
                              "import json, sqlite3; print('ok')"],
                             capture_output=True, text=True, timeout=120)
        assert out.stdout == "ok\n", out.stderr
        apt = subprocess.run(["chroot", str(mnt), "apt", "list", "--installed"],
                             capture_output=True, text=True, timeout=120)
        assert "python3/" in apt.stdout and "bash/" in apt.stdout


def test_layers_view_stacks_to_the_merged_tree(registry, awkward, tmp_path):
    tars, _, expected = awkward
    with registry.client() as c:
        push_image(c, "mount/awkward-layers", "v1", [gzip.compress(t, mtime=0) for t in tars])
    env = lazyfs_env(tmp_path)
    ref = f"{registry.host}/mount/awkward-layers:v1"
    with cli_mount(ref, tmp_path / "mnt", env, "--layers", "-o", "dev,suid") as mnt:
        lower = (mnt / ".lowerdir").read_text()
        assert lower.count(":") == len(tars) - 1
        assert sorted(p.name for p in mnt.iterdir() if p.is_dir()) == sorted(
            p.rpartition("/")[2] for p in lower.split(":"))
        over = tmp_path / "overlay"
        over.mkdir()
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower}", str(over)],
                       check=True, capture_output=True)
        try:
            # overlayfs itself reports a lower file's link count even when an
            # upper layer replaced the other names of its hardlink group
            def unlinked(tree):
                return {p: {k: v for k, v in a.items() if k not in ("link_group", "nlink")}
                        for p, a in tree.items()}
            assert differences(unlinked(expected), unlinked(describe(over))) == []
        finally:
            subprocess.run(["umount", str(over)], check=True)


def test_registry_outage_is_eio_and_the_mount_recovers(tmp_path):
    from pathlib import Path

    from lazyfs.testing.realregistry import start_registry
    golden = Path(__file__).parents[1] / "data" / "estargz-ctr-remote"
    reg = start_registry(tmp_path / "reg")
    try:
        with reg.client() as c:
            name = push_oci_layout(c, "outage/estargz", golden)
        env = lazyfs_env(tmp_path)
        with cli_mount(f"{reg.host}/{name}", tmp_path / "mnt", env) as mnt:
            assert (mnt / "etc/hostname").read_bytes()
            port = int(reg.host.rsplit(":", 1)[1])
            reg.stop()
            try:
                (mnt / "usr/share/words.txt").read_bytes()
                raise AssertionError("read succeeded with the registry down")
            except OSError as e:
                assert e.errno == 5  # EIO
            assert (mnt / "etc/hostname").read_bytes()  # cached content still served
            reg = start_registry(tmp_path / "reg", port=port)
            words = (mnt / "usr/share/words.txt").read_bytes()
            assert len(words) == (mnt / "usr/share/words.txt").stat().st_size > 380_000
    finally:
        reg.stop()


def test_two_mounts_share_the_cache(registry, tmp_path):
    from pathlib import Path
    golden = Path(__file__).parents[1] / "data" / "estargz-ctr-remote"
    with registry.client() as c:
        name = push_oci_layout(c, "mount/shared", golden)
    ref = f"{registry.host}/{name}"
    env = lazyfs_env(tmp_path)
    with cli_mount(ref, tmp_path / "a", env) as a, cli_mount(ref, tmp_path / "b", env) as b:
        first = (a / "usr/bin/big").read_bytes()
        assert (b / "usr/bin/big").read_bytes() == first
        import json
        stats_b = json.loads(lazyfs("stats", "--json", str(b), env=env).stdout)
        assert sum(layer["bytes_fetched"] for layer in stats_b["layers"]) == 0


def test_a_first_mount_with_early_reads_reads_exact_bytes_while_indexing(registry, debian_rootfs,
                                                                        tmp_path):
    """Files all over the image, read at once as the mount returns (many
    before their layer is complete), against umoci's unpack; then the tree."""
    import hashlib
    import json
    import os
    import time
    from concurrent.futures import ThreadPoolExecutor

    from lazyfs.fs.operations import STATS_XATTR
    from lazyfs.testing.debian import debian_image
    img = debian_image(registry.host, "bookworm", "gzip")
    rootfs = debian_rootfs("bookworm")
    files = sorted(p for p in rootfs.rglob("*") if p.is_file() and not p.is_symlink())
    picks = [p.relative_to(rootfs) for p in files[::max(1, len(files) // 80)]]
    env = lazyfs_env(tmp_path)

    def digest(root, rel):
        return hashlib.sha256((root / rel).read_bytes()).hexdigest()

    def index_state(mnt) -> str:
        return json.loads(os.getxattr(mnt, STATS_XATTR))["index"]

    with cli_mount(img.ref, tmp_path / "mnt", env, "--early-reads") as mnt:
        with ThreadPoolExecutor(8) as pool:
            later = pool.map(lambda rel: digest(mnt, rel), picks)
            assert digest(mnt, "etc/debian_version") == digest(rootfs, "etc/debian_version")
            early = index_state(mnt)
            got = list(later)
        assert got == [digest(rootfs, rel) for rel in picks]
        assert early == "indexing", "etc/ is half-way into the base layer, read before its end"
        deadline = time.monotonic() + 120
        while index_state(mnt) != "ready":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert differences(describe(rootfs, content=False), describe(mnt, content=False)) == []


def test_a_mount_point_with_entries_is_refused_unless_nonempty(registry, tmp_path):
    with registry.client() as c:
        push_image(c, "mount/nonempty", "v1", [make_tar({"inside": "from the image\n"})],
                   layer_media_type=OCI_LAYER_TAR)
    ref = f"{registry.host}/mount/nonempty:v1"
    env = lazyfs_env(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (mnt / "mine").write_text("the user's own\n")
    try:
        refused = lazyfs("mount", ref, str(mnt), env=env, check=False)
    finally:
        if is_mounted(mnt):  # not refused: take it down before failing
            lazyfs("umount", str(mnt), env=env)
    assert refused.returncode == MountError.exit_code, refused.stderr
    assert refused.stderr == (f"lazyfs: mount point {mnt} is not empty "
                              "(use -o nonempty to mount over it)\n")
    assert not is_mounted(mnt)
    with cli_mount(ref, mnt, env, "-o", "nonempty") as mounted:
        assert sorted(os.listdir(mounted)) == ["inside"]
    assert os.listdir(mnt) == ["mine"]

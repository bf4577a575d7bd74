"""The FUSE layer, through real mounts in their own processes.

Layer tars are written with the stdlib ``tarfile``; what the mount shows is
checked against the merged index it serves, against GNU tar's own
extraction of the same layer, and (for the per-layer view) against the
kernel's overlayfs stacking those layers.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import io
import json
import os
import random
import signal
import stat
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from lazyfs.errors import MountError, UnsafeEntry
from lazyfs.index.merged import MergedIndex
from lazyfs.fs.operations import STATS_XATTR
from lazyfs.fs.daemon import check_mountpoint, list_mounts, read_state, read_stats, umount
from lazyfs.testing.push import push_image, sha256
from tests.support.images import gzip_bytes
from tests.support.mounts import (alive, force_cleanup, is_mounted, mounted, run_runner,
                                  runner_env, start, wait_until, write_spec)

pytestmark = pytest.mark.slow

MTIME = 1_700_000_000
BIG = random.Random(7).randbytes(6 * 1024 * 1024 + 12345)
MANY = 1100
"""Over the index's readdir batch of 1024, and many kernel readdir buffers."""
REFERENCE = "registry.test/lazy/image:1"
EXTRA = ".lazyfs-info"


def _add(tf: tarfile.TarFile, name: str, kind=tarfile.REGTYPE, data: bytes = b"", *,
         mode: int = 0o644, uid: int = 0, gid: int = 0, linkname: str = "",
         dev: tuple[int, int] = (0, 0), pax: dict | None = None, mtime=MTIME) -> None:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = kind, mode, uid, gid, mtime
    ti.linkname = linkname
    ti.devmajor, ti.devminor = dev
    ti.pax_headers = dict(pax or {})
    if kind == tarfile.REGTYPE:
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    else:
        tf.addfile(ti)


def _layer0(path: Path) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        _add(tf, "etc", tarfile.DIRTYPE, mode=0o755)
        _add(tf, "etc/hostname", data=b"base\n")
        _add(tf, "etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n")
        _add(tf, "bin", tarfile.DIRTYPE, mode=0o755)
        _add(tf, "bin/su", data=b"#!/bin/sh\n", mode=0o4755)
        _add(tf, "bin/wall", data=b"#!/bin/sh\n", mode=0o2755, gid=5)
        _add(tf, "tmp", tarfile.DIRTYPE, mode=0o1777)
        _add(tf, "home", tarfile.DIRTYPE, mode=0o755)
        _add(tf, "home/alice", tarfile.DIRTYPE, mode=0o700, uid=1000, gid=1000)
        _add(tf, "home/alice/notes.txt", data=b"private\n", mode=0o600, uid=1000, gid=1000,
             pax={"mtime": "1700000000.123456789"})
        _add(tf, "data", tarfile.DIRTYPE, mode=0o755)
        _add(tf, "data/big.bin", data=BIG)
        _add(tf, "data/empty", data=b"")
        _add(tf, "data/fail.bin", data=b"unreadable" * 100)
        _add(tf, "data/slow.bin", data=b"slow" * 100)
        _add(tf, "data/crash.bin", data=b"crash" * 100)
        _add(tf, "data/link", tarfile.SYMTYPE, linkname="big.bin", mode=0o777)
        _add(tf, "data/abs", tarfile.SYMTYPE, linkname="/etc/hostname", mode=0o777)
        _add(tf, "data/hard1", data=b"shared inode\n", mode=0o640)
        _add(tf, "data/hard2", tarfile.LNKTYPE, linkname="data/hard1")
        _add(tf, "dev", tarfile.DIRTYPE, mode=0o755)
        _add(tf, "dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3))
        _add(tf, "dev/loop0", tarfile.BLKTYPE, mode=0o660, gid=6, dev=(7, 0))
        _add(tf, "dev/fifo", tarfile.FIFOTYPE, mode=0o600)
        _add(tf, "xattr.txt", data=b"with attributes\n",
             pax={"SCHILY.xattr.user.comment": "hello", "SCHILY.xattr.user.mime_type": "text/plain"})
        _add(tf, "héllo wörld.txt", data="ünïcode\n".encode())
        _add(tf, "opq/a", data=b"a\n")
        _add(tf, "opq/b", data=b"b\n")
        _add(tf, "many", tarfile.DIRTYPE, mode=0o755)
        for i in range(MANY):
            _add(tf, f"many/f{i:04d}", data=f"{i}\n".encode())


def _layer1(path: Path) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        _add(tf, "etc", tarfile.DIRTYPE, mode=0o755, mtime=MTIME + 10)
        _add(tf, "etc/hostname", data=b"top\n", mtime=MTIME + 10)
        _add(tf, "etc/.wh.passwd")
        _add(tf, "opq", tarfile.DIRTYPE, mode=0o750, mtime=MTIME + 10)
        _add(tf, "opq/.wh..wh..opq")
        _add(tf, "opq/c", data=b"c\n")
        _add(tf, "new/file.txt", data=b"added on top\n")


TOUCHED_BY_TOP = ("etc", "opq", "new")


def _worth_reading(rel: Path) -> bool:
    """Every file but the ones whose reads fail or hang, and a sample of many/."""
    if rel.parts[0] == "many":
        return rel.name.endswith("7")
    return rel.name not in ("fail.bin", "crash.bin", "slow.bin")


@pytest.fixture(scope="module")
def layers(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("layers")
    _layer0(d / "l0.tar")
    _layer1(d / "l1.tar")
    return [d / "l0.tar", d / "l1.tar"]


@pytest.fixture(scope="module")
def fs(tmp_path_factory, layers):
    work = tmp_path_factory.mktemp("fs")
    with mounted(work, layers, fail=["/data/fail.bin"], crash=["/data/crash.bin"],
                 slow=["/data/slow.bin"], extra={EXTRA: "virtual\n"}) as m:
        yield m


@pytest.fixture(scope="module")
def index(fs) -> MergedIndex:
    with MergedIndex.open(Path(fs.spec["index"])) as idx:
        yield idx


# ---------------------------------------------------------------- metadata


def test_proc_mounts_show_type_source_and_options(fs, monkeypatch):
    rows = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    (row,) = [r for r in rows if r[1] == str(fs.mountpoint)]
    assert row[0] == REFERENCE and row[2] == "fuse.lazyfs"
    assert {"ro", "nosuid", "nodev", "noatime"} <= set(row[3].split(","))
    monkeypatch.setenv("XDG_RUNTIME_DIR", fs.env["XDG_RUNTIME_DIR"])
    (mine,) = [m for m in list_mounts() if m.mountpoint == str(fs.mountpoint)]
    assert mine.source == REFERENCE
    assert mine.state["pid"] == fs.pid and mine.state["digest"] == fs.spec["digest"]
    assert read_state(fs.mountpoint)["log"] == str(fs.log)
    dev = os.stat(fs.mountpoint).st_dev
    bdi = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
    assert bdi.read_text().strip() == "1024"


def test_stat_of_every_path_equals_the_index(fs, index):
    type_bits = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK,
                 "char": stat.S_IFCHR, "block": stat.S_IFBLK, "fifo": stat.S_IFIFO}
    count = 0
    for path, node in index.walk():
        st = os.lstat(str(fs.mountpoint) + path)
        got = (st.st_ino, st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_rdev,
               st.st_size, st.st_mtime_ns, st.st_atime_ns, st.st_ctime_ns, st.st_blocks)
        want = (node.ino, type_bits[node.type.value] | node.mode, node.nlink, node.uid, node.gid,
                node.rdev, node.size, node.mtime_ns, node.mtime_ns, node.mtime_ns,
                -(-node.size // 512))
        assert got == want, path
        count += 1
    assert count == index.entry_count + 1 > MANY


def test_tree_equals_gnu_tar_extraction_of_the_base_layer(fs, layers, tmp_path):
    """Paths the top layer leaves alone look exactly as GNU tar extracts them."""
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--same-owner", "-xpf",
                    str(layers[0]), "-C", str(out)], check=True)
    compared = 0
    for root, dirs, files in os.walk(out):
        for name in dirs + files:
            real = Path(root, name)
            rel = real.relative_to(out)
            if rel.parts[0] in TOUCHED_BY_TOP:
                continue
            a, b = os.lstat(real), os.lstat(fs.mountpoint / rel)
            for field in ("st_mode", "st_uid", "st_gid", "st_rdev", "st_nlink"):
                assert getattr(a, field) == getattr(b, field), (rel, field)
            assert a.st_mtime_ns == b.st_mtime_ns, rel
            if stat.S_ISREG(a.st_mode):
                assert a.st_size == b.st_size, rel
                if _worth_reading(rel):
                    assert real.read_bytes() == (fs.mountpoint / rel).read_bytes(), rel
            if stat.S_ISLNK(a.st_mode):
                assert os.readlink(real) == os.readlink(fs.mountpoint / rel), rel
            if not stat.S_ISLNK(a.st_mode):
                assert sorted(os.listxattr(real)) == sorted(os.listxattr(fs.mountpoint / rel)), rel
            compared += 1
    assert compared > MANY


def test_listdir_pages_through_big_directories(fs):
    assert sorted(os.listdir(fs.mountpoint)) == sorted(
        ["bin", "data", "dev", "etc", "home", "many", "new", "opq", "tmp", "xattr.txt",
         "héllo wörld.txt", EXTRA])
    assert os.listdir(fs.mountpoint / "many") == [f"f{i:04d}" for i in range(MANY)]
    with os.scandir(fs.mountpoint / "many") as it:
        inos = {e.name: e.inode() for e in it}
    assert len(set(inos.values())) == MANY
    assert inos["f0777"] == os.stat(fs.mountpoint / "many/f0777").st_ino
    assert sorted(os.listdir(fs.mountpoint / "opq")) == ["c"]
    assert sorted(os.listdir(fs.mountpoint / "etc")) == ["hostname"]


class _Dirent(ctypes.Structure):
    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64),
                ("d_reclen", ctypes.c_ushort), ("d_type", ctypes.c_ubyte),
                ("d_name", ctypes.c_char * 256)]


def test_directory_offsets_survive_seekdir(fs):
    """``telldir``/``seekdir`` hand our offsets back: listing resumes there."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.opendir.restype = ctypes.c_void_p
    libc.opendir.argtypes = [ctypes.c_char_p]
    libc.readdir64.restype = ctypes.POINTER(_Dirent)
    libc.readdir64.argtypes = [ctypes.c_void_p]
    libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
    libc.closedir.argtypes = [ctypes.c_void_p]
    d = libc.opendir(os.fsencode(fs.mountpoint / "many"))
    assert d
    try:
        def next_entry():
            p = libc.readdir64(d)
            return (p.contents.d_name.decode(), p.contents.d_off) if p else None

        entries = []
        while (e := next_entry()) is not None:
            entries.append(e)
        names = [n for n, _ in entries if n not in (".", "..")]
        assert names == [f"f{i:04d}" for i in range(MANY)]
        entries.append(None)
        for k in (1000, 3, len(entries) - 3, 500):
            libc.seekdir(d, entries[k][1])
            assert next_entry() == entries[k + 1]
            assert next_entry() == entries[k + 2]
    finally:
        libc.closedir(d)


def test_dot_and_dotdot(fs):
    root = os.stat(fs.mountpoint)
    assert root.st_ino == 1
    assert os.stat(fs.mountpoint / "data/..").st_ino == 1
    assert os.stat(fs.mountpoint / "home/alice/..").st_ino == os.stat(fs.mountpoint / "home").st_ino
    assert os.stat(fs.mountpoint / "data/.").st_ino == os.stat(fs.mountpoint / "data").st_ino


def test_special_files(fs):
    mp = fs.mountpoint
    null, loop, fifo = os.lstat(mp / "dev/null"), os.lstat(mp / "dev/loop0"), os.lstat(mp / "dev/fifo")
    assert stat.S_ISCHR(null.st_mode) and (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    assert stat.S_ISBLK(loop.st_mode) and (os.major(loop.st_rdev), os.minor(loop.st_rdev)) == (7, 0)
    assert stat.S_ISFIFO(fifo.st_mode)
    with pytest.raises(PermissionError):
        open(mp / "dev/null", "rb")
    assert os.stat(mp / "bin/su").st_mode & stat.S_ISUID
    assert os.stat(mp / "bin/wall").st_mode & stat.S_ISGID
    assert os.stat(mp / "tmp").st_mode & stat.S_ISVTX
    h1, h2 = os.lstat(mp / "data/hard1"), os.lstat(mp / "data/hard2")
    assert h1.st_ino == h2.st_ino and h1.st_nlink == h2.st_nlink == 2
    assert os.readlink(mp / "data/link") == "big.bin"
    assert os.readlink(mp / "data/abs") == "/etc/hostname"
    assert (mp / "data/link").read_bytes()[:1000] == BIG[:1000]


def test_xattrs(fs):
    f = fs.mountpoint / "xattr.txt"
    assert sorted(os.listxattr(f)) == ["user.comment", "user.mime_type"]
    assert os.getxattr(f, "user.comment") == b"hello"
    with pytest.raises(OSError) as e:
        os.getxattr(f, "user.absent")
    assert e.value.errno == errno.ENODATA
    assert os.listxattr(fs.mountpoint / "etc/hostname") == []
    with pytest.raises(OSError) as e:
        os.getxattr(fs.mountpoint / "etc/hostname", "user.comment")
    assert e.value.errno == errno.ENODATA


def test_statfs(fs, index):
    st = os.statvfs(fs.mountpoint)
    assert st.f_flag & os.ST_RDONLY
    assert st.f_files == index.entry_count
    assert st.f_namemax == 255
    total = sum({n.ino: n.size for _, n in index.walk()}.values())
    assert st.f_blocks * st.f_frsize >= total > st.f_blocks * st.f_frsize - st.f_frsize


# ---------------------------------------------------------------- content


def test_contents_small_big_and_random_offsets(fs):
    mp = fs.mountpoint
    assert (mp / "etc/hostname").read_bytes() == b"top\n"
    assert (mp / "new/file.txt").read_bytes() == b"added on top\n"
    assert (mp / "héllo wörld.txt").read_text() == "ünïcode\n"
    assert (mp / "data/empty").read_bytes() == b""
    assert (mp / "data/big.bin").read_bytes() == BIG
    wrong = []

    def random_reads(seed: int) -> None:
        rng = random.Random(seed)
        direct = seed % 2
        fd = os.open(mp / "data/big.bin", os.O_RDONLY | (os.O_DIRECT if direct else 0))
        try:
            for _ in range(100):
                off = rng.randrange(len(BIG) + 10) & (~4095 if direct else ~0)
                size = rng.choice([4096, 65536, 294_912] if direct else [1, 511, 4096, 300_000])
                if os.pread(fd, size, off) != BIG[off:off + size]:
                    wrong.append((seed, off, size))
        finally:
            os.close(fd)

    threads = [threading.Thread(target=random_reads, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not wrong


def test_dd_sequential_read(fs):
    out = subprocess.run(["dd", f"if={fs.mountpoint / 'data/big.bin'}", "bs=1M", "status=none"],
                         check=True, capture_output=True).stdout
    assert hashlib.sha256(out).digest() == hashlib.sha256(BIG).digest()


def test_failing_read_gives_eio_and_the_mount_keeps_serving(fs):
    with pytest.raises(OSError) as e:
        (fs.mountpoint / "data/fail.bin").read_bytes()
    assert e.value.errno == errno.EIO
    assert (fs.mountpoint / "data/hard1").read_bytes() == b"shared inode\n"
    assert alive(fs.pid)
    assert "injected failure" in fs.log_text()


def test_unexpected_error_in_a_read_is_logged_and_answered_with_eio(fs):
    for _ in range(2):
        with pytest.raises(OSError) as e:
            (fs.mountpoint / "data/crash.bin").read_bytes()
        assert e.value.errno == errno.EIO
    assert alive(fs.pid)
    assert "ZeroDivisionError: injected crash" in fs.log_text()
    assert (fs.mountpoint / "data/hard2").read_bytes() == b"shared inode\n"


def test_virtual_root_file(fs, index):
    st = os.stat(fs.mountpoint / EXTRA)
    assert stat.S_ISREG(st.st_mode) and st.st_size == len(b"virtual\n")
    assert st.st_ino > max(n.ino for _, n in index.walk())
    assert (fs.mountpoint / EXTRA).read_bytes() == b"virtual\n"
    with pytest.raises(OSError) as e:
        open(fs.mountpoint / EXTRA, "ab")
    assert e.value.errno == errno.EROFS


def test_stats_through_the_root_xattr(fs):
    before = read_stats(fs.mountpoint)["fuse"]
    fd = os.open(fs.mountpoint / "data/big.bin", os.O_RDONLY | os.O_DIRECT)
    try:
        assert os.pread(fd, 65536, 1 << 20) == BIG[1 << 20:(1 << 20) + 65536]
        during = read_stats(fs.mountpoint)["fuse"]
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        (fs.mountpoint / "data/fail.bin").read_bytes()
    after = read_stats(fs.mountpoint)["fuse"]
    assert during["open_files"] == before["open_files"] + 1
    assert during["bytes_read"] >= before["bytes_read"] + 65536
    assert during["reads"] > before["reads"]
    assert after["errors"] > during["errors"]
    assert STATS_XATTR not in os.listxattr(fs.mountpoint)
    with pytest.raises(MountError, match="not a lazyfs mount"):
        read_stats(fs.mountpoint / "data")


def test_writes_fail_with_erofs(fs):
    mp = fs.mountpoint
    attempts = {
        "open for write": lambda: open(mp / "etc/hostname", "r+b"),
        "create": lambda: open(mp / "newfile", "wb"),
        "touch": lambda: os.utime(mp / "etc/hostname"),
        "mkdir": lambda: os.mkdir(mp / "newdir"),
        "chmod": lambda: os.chmod(mp / "etc/hostname", 0o600),
        "chown": lambda: os.chown(mp / "etc/hostname", 1, 1),
        "unlink": lambda: os.unlink(mp / "etc/hostname"),
        "rmdir": lambda: os.rmdir(mp / "tmp"),
        "rename": lambda: os.rename(mp / "etc/hostname", mp / "etc/h2"),
        "symlink": lambda: os.symlink("x", mp / "sl"),
        "link": lambda: os.link(mp / "etc/hostname", mp / "hl"),
        "setxattr": lambda: os.setxattr(mp / "xattr.txt", "user.x", b"1"),
        "removexattr": lambda: os.removexattr(mp / "xattr.txt", "user.comment"),
        "truncate": lambda: os.truncate(mp / "etc/hostname", 0),
    }
    for what, attempt in attempts.items():
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno == errno.EROFS, what
    assert (mp / "etc/hostname").read_bytes() == b"top\n"


# ---------------------------------------------------------------- daemon life


def test_mountpoint_checks(fs, tmp_path):
    with pytest.raises(MountError, match="does not exist"):
        check_mountpoint(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(MountError, match="not a directory"):
        check_mountpoint(tmp_path / "file")
    with pytest.raises(MountError, match="busy"):
        check_mountpoint(fs.mountpoint)


def test_mount_over_a_mount_fails_before_forking(fs, layers, tmp_path):
    spec = write_spec(tmp_path, layers, fs.mountpoint)
    done = run_runner(spec, runner_env(tmp_path / "run"))
    assert done.returncode == MountError.exit_code
    assert "busy" in done.stderr and str(fs.mountpoint) in done.stderr
    assert is_mounted(fs.mountpoint) and alive(fs.pid)


def test_sigterm_unmounts_cleanly_with_a_read_in_flight(tmp_path, layers):
    kept = {"log_path": str(tmp_path / "daemon.log")}
    with mounted(tmp_path, layers, slow=["/data/slow.bin"], options=kept) as m:
        state = m.env["XDG_RUNTIME_DIR"]
        errors = []

        def hang():
            try:
                (m.mountpoint / "data/slow.bin").read_bytes()
            except OSError as e:
                errors.append(e.errno)

        reader = threading.Thread(target=hang, daemon=True)
        reader.start()
        reader.join(0.5)
        assert reader.is_alive()
        os.kill(m.pid, signal.SIGTERM)
        wait_until(lambda: not alive(m.pid), 15, "the daemon to exit after SIGTERM")
        reader.join(10)
        assert not reader.is_alive() and errors
        assert not is_mounted(m.mountpoint)
        assert not list(Path(state, "lazyfs").glob("*.json"))
        assert "SIGTERM: unmounting" in m.log_text() and "Traceback" not in m.log_text()


def test_killed_daemon_leaves_a_stale_mount_that_umount_cleans(tmp_path, layers, monkeypatch):
    with mounted(tmp_path, layers) as m:
        monkeypatch.setenv("XDG_RUNTIME_DIR", m.env["XDG_RUNTIME_DIR"])
        os.kill(m.pid, signal.SIGKILL)
        wait_until(lambda: not alive(m.pid), 10, "the daemon to die")
        with pytest.raises(OSError) as e:
            os.listdir(m.mountpoint)
        assert e.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
        done = run_runner(tmp_path / "spec.json", m.env)
        assert done.returncode == MountError.exit_code
        assert "stale" in done.stderr and "lazyfs umount" in done.stderr
        with pytest.raises(MountError, match="stale"):
            check_mountpoint(m.mountpoint)
        assert [x.state for x in list_mounts() if x.mountpoint == str(m.mountpoint)] == [None]
        umount(m.mountpoint)
        assert not is_mounted(m.mountpoint)
        assert os.stat(m.mountpoint).st_ino != 1
        with pytest.raises(MountError, match="not mounted"):
            umount(m.mountpoint)
        again = start(tmp_path, layers, options={"log_path": str(tmp_path / "again.log")})
        try:
            with open(again.mountpoint / "etc/hostname", "rb") as held:
                with pytest.raises(MountError, match="busy.*--lazy"):
                    umount(again.mountpoint)
                assert held.read() == b"top\n"
            umount(again.mountpoint)
            wait_until(lambda: not alive(again.pid), 10, "the daemon to exit after umount")
            assert not is_mounted(again.mountpoint)
            assert "unmounted" in again.log_text() and "Traceback" not in again.log_text()
        finally:
            force_cleanup(again.mountpoint, [again.pid])


def test_daemon_errors_reach_the_caller_with_their_exit_code(tmp_path):
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w", format=tarfile.PAX_FORMAT) as tf:
        _add(tf, "../escape", data=b"x")
    (tmp_path / "mnt").mkdir()
    spec = write_spec(tmp_path, [bad], tmp_path / "mnt")
    try:
        done = run_runner(spec, runner_env(tmp_path / "run"))
        assert done.returncode == UnsafeEntry.exit_code
        assert "escapes the image root" in done.stderr
        assert not is_mounted(tmp_path / "mnt")
    finally:
        force_cleanup(tmp_path / "mnt", [])


def test_foreground_mount_with_suid_dev_allow_other_stops_on_sigint(tmp_path, layers):
    opts = {"suid": True, "dev": True, "allow_other": True}
    with mounted(tmp_path, layers, foreground=True, options=opts) as m:
        assert (m.mountpoint / "new/file.txt").read_bytes() == b"added on top\n"
        (row,) = [line.split() for line in Path("/proc/mounts").read_text().splitlines()
                  if line.split()[1] == str(m.mountpoint)]
        shown = set(row[3].split(","))
        assert "allow_other" in shown and not {"nosuid", "nodev"} & shown
        m.proc.send_signal(signal.SIGINT)
        assert m.proc.wait(15) == 0
        assert not is_mounted(m.mountpoint)


# ---------------------------------------------------------------- per-layer view


def _tree(top: Path) -> dict:
    """Everything a reader of the tree can see, keyed by relative path."""
    out = {}
    for root, dirs, files in os.walk(top):
        dirs.sort()
        for name in dirs + files:
            p = Path(root, name)
            st = os.lstat(p)
            item = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                    st.st_rdev, st.st_mtime_ns)
            if stat.S_ISREG(st.st_mode):
                content = p.read_bytes() if _worth_reading(p.relative_to(top)) else b""
                item += (st.st_size, hashlib.sha256(content).hexdigest())
            elif stat.S_ISLNK(st.st_mode):
                item += (os.readlink(p),)
            if name != EXTRA:
                out[str(p.relative_to(top))] = item
    return out


def test_layers_view_stacked_by_overlayfs_equals_the_merged_view(fs, tmp_path, layers):
    with mounted(tmp_path / "layers", layers, layers_view=True) as m:
        names = ["0-layer", "1-layer"]
        assert sorted(os.listdir(m.mountpoint)) == sorted(names + [".lowerdir"])
        lower = (m.mountpoint / ".lowerdir").read_text()
        assert lower == f"{m.mountpoint}/1-layer:{m.mountpoint}/0-layer"
        wh = os.lstat(m.mountpoint / "1-layer/etc/passwd")
        assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
        assert os.getxattr(m.mountpoint / "1-layer/opq", "trusted.overlay.opaque") == b"y"
        assert os.stat(m.mountpoint / "1-layer/..").st_ino == 1
        merged = tmp_path / "overlay"
        merged.mkdir()
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lower}",
                        str(merged)], check=True, capture_output=True)
        try:
            assert _tree(merged) == _tree(fs.mountpoint)
            with pytest.raises(MountError, match="not a lazyfs mount .it is overlay"):
                umount(merged)
        finally:
            subprocess.run(["umount", "-l", str(merged)], check=True)


# ---------------------------------------------------------------- from a registry


def test_image_from_the_registry_mounts_as_the_same_tree(fs, registry, layers, tmp_path):
    """The whole stack (registry, formats, reader, index, FUSE) shows what the
    local-tar harness shows, merged and stacked from its per-layer view."""
    blobs = [gzip_bytes(p.read_bytes()) for p in layers]
    with registry.client() as client:
        pushed = push_image(client, "fs/e2e", "v1", blobs)
    ref = f"{registry.host}/fs/e2e:v1"
    with mounted(tmp_path / "merged", [], image=ref, reference=ref, digest="") as m:
        rows = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
        assert [r[0] for r in rows if r[1] == str(m.mountpoint)] == [ref]
        state = json.loads(next(Path(m.env["XDG_RUNTIME_DIR"], "lazyfs").glob("*.json")).read_text())
        assert state["digest"] == pushed.digest and state["pid"] == m.pid
        assert (m.mountpoint / "data/big.bin").read_bytes() == BIG
        stats = read_stats(m.mountpoint)
        assert stats["digest"] == pushed.digest
        assert sum(layer["bytes_fetched"] for layer in stats["layers"]) > 0
        assert stats["fuse"]["bytes_read"] >= len(BIG)
        assert _tree(m.mountpoint) == _tree(fs.mountpoint)
    with mounted(tmp_path / "layers", [], image=ref, reference=ref, layers_view=True) as m:
        names = [f"{i}-{sha256(b).partition(':')[2][:12]}" for i, b in enumerate(blobs)]
        assert sorted(os.listdir(m.mountpoint)) == sorted(names + [".lowerdir"])
        lower = (m.mountpoint / ".lowerdir").read_text()
        assert lower == ":".join(str(m.mountpoint / n) for n in reversed(names))
        merged = tmp_path / "overlay"
        merged.mkdir()
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lower}",
                        str(merged)], check=True, capture_output=True)
        try:
            assert _tree(merged) == _tree(fs.mountpoint)
        finally:
            subprocess.run(["umount", "-l", str(merged)], check=True)

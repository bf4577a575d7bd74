"""``lazyfs mount`` answered by a running ``lazyfs serve``: the service binds
its image's directory at the mountpoint instead of a daemon of its own."""

from __future__ import annotations

import gzip
import json
import subprocess

import pytest

from lazyfs.testing.push import push_image
from tests.support.climount import LAZYFS
from tests.support.images import make_tar
from tests.support.mounts import force_cleanup, is_mounted
from tests.support.serving import serving

pytestmark = pytest.mark.slow


def _run(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([*LAZYFS, *args], capture_output=True, env=env, timeout=120)


def _mount_options(mp) -> set[str]:
    with open("/proc/mounts") as f:
        return set(next(line for line in f if f" {mp} " in line).split()[3].split(","))


@pytest.fixture(scope="module")
def small(registry):
    with registry.client() as c:
        pushed = push_image(c, "bind/small", "v1", [
            gzip.compress(make_tar({"etc/": None, "etc/hostname": b"bound\n"})),
            gzip.compress(make_tar({"top": b"top layer\n"}))])
    return f"{registry.host}/bind/small:v1", pushed


def test_a_mount_is_the_services_image_bound_there(tmp_path, registry, small):
    ref, pushed = small
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with serving(tmp_path / "svc") as service:
        try:
            done = _run("mount", ref, str(mnt), env=service.env)
            assert done.returncode == 0, done.stderr
            assert (mnt / "etc/hostname").read_bytes() == b"bound\n"
            assert (mnt / "top").read_bytes() == b"top layer\n"
            assert {"ro", "nosuid", "nodev"} <= _mount_options(mnt)
            rows = json.loads(_run("mounts", "--json", env=service.env).stdout)
            row = next(r for r in rows if r["mountpoint"] == str(mnt))
            assert (row["reference"], row["digest"], row["pid"]) == (ref, pushed.digest,
                                                                     service.proc.pid)
            stats = json.loads(_run("stats", "--json", str(mnt), env=service.env).stdout)
            assert stats["digest"] == pushed.digest
            assert service.stats()["control"]["answered"] >= 1
            # unmounted as any mount, at once; the service goes on
            done = _run("umount", str(mnt), env=service.env)
            assert done.returncode == 0, done.stderr
            assert not is_mounted(mnt) and service.proc.poll() is None
            # a second bind, left for the service to take down when it stops
            assert _run("mount", ref, str(mnt), env=service.env).returncode == 0
            assert is_mounted(mnt)
        except BaseException:
            force_cleanup(mnt, [])
            raise
    assert not is_mounted(mnt)


def test_errors_and_options_are_as_a_mount_of_its_own(tmp_path, registry, small):
    ref, _ = small
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with serving(tmp_path / "svc") as service:
        cases = [("mount", ref, str(tmp_path / "missing")),
                 ("mount", f"{registry.host}/bind/missing:v1", str(mnt)),
                 ("mount", "Bad::", str(mnt))]
        for argv in cases:
            served, alone = _run(*argv, env=service.env), _run(*argv, env=service.alone_env)
            assert served.returncode == alone.returncode != 0, argv
            assert len(served.stderr.decode().splitlines()) == 1, served.stderr
            assert served.stderr.decode().partition(":")[0] == "lazyfs", served.stderr
        assert not is_mounted(mnt)
        # any option, or --alone, and the mount has a daemon of its own
        for extra in (["--alone"], ["--no-prefetch"]):
            try:
                done = _run("mount", *extra, ref, str(mnt), env=service.env)
                assert done.returncode == 0, done.stderr
                rows = json.loads(_run("mounts", "--json", env=service.env).stdout)
                row = next(r for r in rows if r["mountpoint"] == str(mnt))
                assert row["pid"] != service.proc.pid, extra
                assert (mnt / "etc/hostname").read_bytes() == b"bound\n"
                assert _run("umount", str(mnt), env=service.env).returncode == 0
            finally:
                force_cleanup(mnt, [])

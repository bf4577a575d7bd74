"""A mount daemon's log: removed when the daemon unmounts cleanly with
nothing gone wrong, kept (and pointed to) when it failed or logged a
warning, always kept when the caller named it or asked for ``--debug``."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from lazyfs.errors import UnsafeEntry
from lazyfs.fs.daemon import default_log_path, umount
from tests.support.images import make_tar
from tests.support.mounts import (alive, force_cleanup, runner_env, run_runner, start,
                                  wait_until, write_spec)


@pytest.fixture
def layers(tmp_path) -> list[Path]:
    path = tmp_path / "l0.tar"
    path.write_bytes(make_tar({"etc/": None, "etc/hostname": "box\n", "etc/bad": "x\n"}))
    return [path]


def _serve_then_umount(work: Path, layers: list[Path], **extra):
    m = start(work, layers, **extra)
    try:
        assert m.log is not None and "mounted" in m.log_text()
        assert (m.mountpoint / "etc/hostname").read_bytes() == b"box\n"
        if "fail" in extra:
            with pytest.raises(OSError):
                (m.mountpoint / "etc/bad").read_bytes()
        umount(m.mountpoint)
        wait_until(lambda: not alive(m.pid), 10, "the daemon to exit")
    finally:
        force_cleanup(m.mountpoint, [m.pid])
    return m


def test_a_clean_unmount_removes_the_log(tmp_path, layers):
    m = _serve_then_umount(tmp_path / "w", layers)
    assert m.log.name == default_log_path(m.mountpoint).name
    assert not m.log.exists()


def test_a_log_that_recorded_an_error_is_kept(tmp_path, layers):
    m = _serve_then_umount(tmp_path / "w", layers, fail=["/etc/bad"])
    assert "injected failure" in m.log.read_text() and "unmounted" in m.log.read_text()


def test_a_debug_log_is_kept(tmp_path, layers):
    m = _serve_then_umount(tmp_path / "w", layers, debug=True)
    assert "unmounted" in m.log.read_text()


def test_a_log_the_caller_named_is_kept(tmp_path, layers):
    named = tmp_path / "mine.log"
    m = _serve_then_umount(tmp_path / "w", layers, options={"log_path": str(named)})
    assert m.log == named and "unmounted" in named.read_text()


def test_a_daemon_that_failed_keeps_its_log_and_says_where(tmp_path):
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("../escape")
        tf.addfile(info)
    mp = tmp_path / "mnt"
    mp.mkdir()
    env = runner_env(tmp_path / "run")
    try:
        done = run_runner(write_spec(tmp_path, [bad], mp), env)
        assert done.returncode == UnsafeEntry.exit_code
        log = Path(env["XDG_RUNTIME_DIR"], "lazyfs", default_log_path(mp).name)
        assert f"(see {log})" in done.stderr
        assert "escapes the image root" in log.read_text()
    finally:
        force_cleanup(mp, [])

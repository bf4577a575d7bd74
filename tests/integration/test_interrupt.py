"""Ctrl-C in the middle of a command, as a user presses it: exit 130, one
line, no traceback, and no partial download left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from lazyfs.testing.proxy import ThrottleProxy
from lazyfs.testing.push import OCI_LAYER_GZIP, OCI_LAYER_TAR, push_image
from tests.support.images import gzip_bytes, make_tar

ROOT = Path(__file__).resolve().parents[2]


def _start(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lazyfs", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _interrupt(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


def _assert_quiet_interrupt(code: int, err: str, cache: Path) -> None:
    assert code == 130, err
    assert "Traceback" not in err and "ExceptionGroup" not in err, err
    assert not list(cache.glob("tmp/*.part"))
    assert len(err.splitlines()) <= 1 and err.startswith("lazyfs: interrupted"), err


def _big_layers(n: int, size: int) -> list[bytes]:
    return [make_tar({f"l{i}/": None, f"l{i}/big": os.urandom(size)}) for i in range(n)]


def _interrupt_mid_download(registry, cache: Path, blobs: list[bytes], media_type: str,
                            *command: str) -> None:
    """Push an image, run ``lazyfs COMMAND --insecure-registry PROXY REF [...]``
    behind a slow link, press Ctrl-C halfway through its download."""
    repo = f"intr/img-{uuid.uuid4().hex[:8]}"
    with registry.client() as c:
        push_image(c, repo, "v1", blobs, layer_media_type=media_type)
    with ThrottleProxy(registry.host, rate=4 << 20) as proxy:
        name, *rest = command
        proc = _start(name, "--insecure-registry", proxy.host, f"{proxy.host}/{repo}:v1", *rest)
        proxy.wait_for(6 << 20)
        code, err = _interrupt(proc)
    _assert_quiet_interrupt(code, err, cache)


def test_ctrl_c_during_pull(registry, cache_dir):
    _interrupt_mid_download(registry, cache_dir, _big_layers(3, 12 << 20), OCI_LAYER_TAR, "pull")


def test_ctrl_c_during_the_first_read_of_a_gzip_image(registry, cache_dir):
    blobs = [gzip_bytes(b) for b in _big_layers(2, 12 << 20)]
    _interrupt_mid_download(registry, cache_dir, blobs, OCI_LAYER_GZIP, "ls")


def test_ctrl_c_during_export_download(registry, cache_dir, tmp_path):
    _interrupt_mid_download(registry, cache_dir, _big_layers(2, 12 << 20), OCI_LAYER_TAR,
                            "export", str(tmp_path / "out"))


def test_ctrl_c_during_mount_wait_index(registry, cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    mp = tmp_path / "mp"
    mp.mkdir()
    blobs = [gzip_bytes(b) for b in _big_layers(2, 12 << 20)]
    _interrupt_mid_download(registry, cache_dir, blobs, OCI_LAYER_GZIP, "mount", str(mp),
                            "--wait-index")
    assert str(mp) not in Path("/proc/mounts").read_text()


def test_ctrl_c_during_export_write_stops_and_says_what_was_written(registry, cache_dir, tmp_path):
    repo = f"intr/write-{uuid.uuid4().hex[:8]}"
    files = {f"d{i // 500}/f{i}": b"x" * 4096 for i in range(20000)}
    with registry.client() as c:
        push_image(c, repo, "v1", [make_tar(files)], layer_media_type=OCI_LAYER_TAR)
    out = tmp_path / "out"
    proc = _start("export", "--insecure-registry", registry.host, f"{registry.host}/{repo}:v1",
                  str(out))
    deadline = time.monotonic() + 60
    while not (out.exists() and any(out.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    started = time.monotonic()
    code, err = _interrupt(proc)
    assert time.monotonic() - started < 5
    _assert_quiet_interrupt(code, err, cache_dir)
    assert f"files written to {out}" in err and " of " in err, err

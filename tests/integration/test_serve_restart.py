"""A restart of ``lazyfs serve`` under files in use: after ``kill -9`` and
after SIGTERM, the next service takes over the same FUSE connection (held
meanwhile by the holder process), so a descriptor opened before reads on
and files never read before read right; and a mount left without a holder
is detached and mounted afresh. Real registry, real FUSE, real processes;
the files are held open by a separate process, as a container would."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lazyfs.fs.daemon import alive, state_path
from lazyfs.testing.push import push_image
from tests.support.images import make_tar
from tests.support.mounts import force_cleanup, is_mounted, wait_until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIG = random.Random(12).randbytes(3 << 20)
FILES = {"etc/": None, "etc/os-release": b"ID=restart\n", "big": BIG, "d/": None,
         **{f"d/f{i:02d}": f"{i}\n".encode() for i in range(40)}}

HOLD = """
import hashlib, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
dfd = os.open(sys.argv[2], os.O_RDONLY | os.O_DIRECTORY)
print("open", flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "read":
        data = os.pread(fd, int(args[1]), int(args[0]))
        print(hashlib.sha256(data).hexdigest(), flush=True)
    elif cmd == "list":
        print(" ".join(sorted(os.listdir(dfd))), flush=True)
"""


class Service:
    def __init__(self, work: Path):
        self.work = work
        self.root = work / "store"
        self.root.mkdir(exist_ok=True)
        self.env = dict(os.environ, XDG_RUNTIME_DIR=str(work / "run"), PYTHONPATH=str(REPO),
                        LAZYFS_CACHE_DIR=str(work / "cache"), LAZYFS_RETRY_DEADLINE="2")
        self.proc: subprocess.Popen | None = None
        self.holders: set[int] = set()

    def start(self) -> subprocess.Popen:
        with open(self.work / "serve.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lazyfs", "serve", "--no-control-socket", str(self.root)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT)
        mark = f"(pid {self.proc.pid})"
        wait_until(lambda: mark in self.log() or self.proc.poll() is not None, 30,
                   "lazyfs serve to answer")
        assert self.proc.poll() is None, self.log()
        self.holders.add(self.holder()["holder"])
        return self.proc

    def holder(self) -> dict:
        """What the holder of the connection says of itself (its lease stays)."""
        path = state_path(self.root).with_suffix(".holder")
        run = dict(self.env)
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(Path(run["XDG_RUNTIME_DIR"]) / "lazyfs" / path.name))
        data, fds, _, _ = socket.recv_fds(sock, 65536, 4)
        for fd in fds:
            os.close(fd)
        sock.close()
        return json.loads(data)

    def log(self) -> str:
        return (self.work / "serve.log").read_text(errors="replace")

    def cleanup(self) -> None:
        force_cleanup(self.root, [self.proc.pid] if self.proc else [], self.proc)
        for pid in self.holders:
            wait_until(lambda: not alive(pid), 10, "the holder to exit with its mount")


class Holder:
    """A process with a file and a directory open under the mount."""

    def __init__(self, file: Path, directory: Path):
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD, str(file), str(directory)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._line() == "open"

    def _line(self) -> str:
        return self.proc.stdout.readline().strip()

    def ask(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._line()

    def read(self, offset: int, size: int) -> str:
        return self.ask(f"read {offset} {size}")

    def close(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(30) == 0
        self.proc.stdout.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def image(registry) -> str:
    with registry.client() as c:
        push_image(c, "restart/img", "v1", [gzip.compress(make_tar(FILES), mtime=0)])
    return f"{registry.host}/restart/img:v1"


@pytest.fixture
def service(tmp_path):
    s = Service(tmp_path)
    try:
        yield s
    finally:
        s.cleanup()


def test_files_open_across_kill_and_sigterm_read_on(service, image):
    first = service.start()
    top = service.root / image
    held = Holder(top / "big", top / "d")
    assert held.read(0, 4096) == sha(BIG[:4096])
    first.kill()
    first.wait()
    assert is_mounted(service.root)

    # meanwhile a reader waits in the kernel's queue instead of failing
    waiting: dict = {}
    reader = threading.Thread(target=lambda: waiting.update(
        got=(top / "etc/os-release").read_bytes()))
    reader.start()
    time.sleep(0.5)
    assert reader.is_alive() and not waiting

    second = service.start()
    reader.join(30)
    assert waiting["got"] == FILES["etc/os-release"]
    assert held.read(1 << 20, 1 << 20) == sha(BIG[1 << 20:2 << 20])
    assert held.ask("list") == " ".join(f"f{i:02d}" for i in range(40))
    assert (top / "d/f07").read_bytes() == b"7\n"
    assert "resuming the connection" in service.log()
    rival = subprocess.run([sys.executable, "-m", "lazyfs", "serve", "--no-control-socket",
                            str(service.root)], env=service.env, capture_output=True, text=True,
                           timeout=60)
    assert rival.returncode != 0 and "served by another lazyfs serve" in rival.stderr

    # SIGTERM while the file is open: the mount and its holder stay
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0
    assert is_mounted(service.root)
    assert "left" in service.log().splitlines()[-1]
    service.start()
    assert held.read(2 << 20, 1 << 20) == sha(BIG[2 << 20:])
    assert (top / "d/f33").read_bytes() == b"33\n"
    held.close()

    # nothing open any more: SIGTERM unmounts, and the holder goes with the mount
    service.proc.send_signal(signal.SIGTERM)
    assert service.proc.wait(30) == 0
    assert not is_mounted(service.root)


def test_a_mount_without_its_holder_is_replaced(service, image):
    first = service.start()
    assert (service.root / image / "etc/os-release").read_bytes() == FILES["etc/os-release"]
    holder = service.holder()["holder"]
    first.kill()
    first.wait()
    os.kill(holder, signal.SIGKILL)  # the connection goes with it: the mount is stale
    wait_until(lambda: not alive(holder), 10, "the holder to die")
    with pytest.raises(OSError):
        os.statvfs(service.root)

    service.start()
    assert "stale mount" in service.log()
    assert (service.root / image / "big").read_bytes() == BIG
    service.proc.send_signal(signal.SIGTERM)
    assert service.proc.wait(30) == 0
    assert not is_mounted(service.root)

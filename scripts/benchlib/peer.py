"""stargz-store v0.12, the peer lazyfs is measured against, in the same run.

The binary is built outside this repository (see docs/benchmarks.md: where
the peer comes from); ``PEER_BIN`` or ``$LAZYFS_PEER_BIN`` names it. Each
run gets a fresh root and a config of its own that names the bench
registry's loopback address as a plain-HTTP host, so the peer and lazyfs
read the same blobs from the same registry.

stargz-store shows each layer apart and only when looked up by name:
``MNT/<base64 of the ref>/<layer digest>/diff/<path>``. Store mode turns
content verification off by itself; background fetching of the whole image
is switched off here (``no_background_fetch``) unless asked for, so that
bytes fetched compare like with like. Say which in the results.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .common import BENCH_DIR

PEER_BIN = Path(os.environ.get("LAZYFS_PEER_BIN")
                or Path.home() / ".cache" / "lazyfs-peer" / "bin" / "stargz-store")


def available() -> str | None:
    """None when the peer can run here, else why not (for a note in the results)."""
    if not PEER_BIN.is_file():
        return f"stargz-store not found at {PEER_BIN} (set LAZYFS_PEER_BIN)"
    return None


@dataclass
class StargzStore:
    mountpoint: Path
    root: Path
    proc: subprocess.Popen
    log_path: Path
    background_fetch: bool

    def image_dir(self, ref: str) -> Path:
        return self.mountpoint / base64.b64encode(ref.encode()).decode()

    def layer_path(self, ref: str, layer_digest: str, path: str = "") -> Path:
        return self.image_dir(ref) / layer_digest / "diff" / path.lstrip("/")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        """Current resident set of the peer process, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def peak_rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0


def _config(registry_host: str, background_fetch: bool) -> str:
    lines = [f'[[resolver.host."{registry_host}".mirrors]]',
             f'host = "{registry_host}"', "insecure = true"]
    if not background_fetch:
        lines = ["no_background_fetch = true", ""] + lines
    return "\n".join(lines) + "\n"


def _is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/mounts") as f:
        return any(line.split()[1] == target for line in f)


@contextlib.contextmanager
def running_stargz_store(registry_host: str, name: str = "peer", *,
                         background_fetch: bool = False) -> Iterator[StargzStore]:
    """A fresh stargz-store mounted for one measurement; stopped by its pid."""
    why = available()
    if why:
        raise RuntimeError(why)
    work = BENCH_DIR / "work" / f"stargz-{name}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "root").mkdir(parents=True)
    (work / "mnt").mkdir()
    conf = work / "config.toml"
    conf.write_text(_config(registry_host, background_fetch))
    log_path = work / "log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(PEER_BIN), "--root", str((work / "root").resolve()),
                                 "--config", str(conf), str(work / "mnt")],
                                stdout=log, stderr=subprocess.STDOUT)
    store = StargzStore(work / "mnt", work / "root", proc, log_path, background_fetch)
    try:
        deadline = time.monotonic() + 20
        while not _is_mounted((work / "mnt").resolve()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"stargz-store did not mount: {log_path.read_text()[-400:]}")
            time.sleep(0.05)
        yield store
    finally:
        _stop(store)
        shutil.rmtree(work, ignore_errors=True)


def _stop(store: StargzStore) -> None:
    if store.proc.poll() is None:
        store.proc.send_signal(signal.SIGINT)
        try:
            store.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            store.proc.kill()
            store.proc.wait()
    mnt = store.mountpoint.resolve()
    if _is_mounted(mnt):
        subprocess.run(["umount", "-l", str(mnt)], check=False)

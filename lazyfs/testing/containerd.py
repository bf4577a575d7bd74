"""A private containerd for tests, test images and sample generation.

Image converters such as ``ctr-remote images convert`` only work against a
running containerd. This one keeps its content under the folder it is given
(its own root; its state and sockets in a short private folder under /tmp,
removed on ``stop()``), runs no CRI plugin and never touches the host's
containerd. Use ``handle.ctr(...)`` to run ``ctr-remote`` against it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CONTAINERD_BIN = shutil.which("containerd") or "/usr/bin/containerd"
CTR_BIN = shutil.which("ctr-remote") or "/usr/bin/ctr-remote"

_DISABLED = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
             "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
             "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.tracing",
             "io.containerd.tracing.processor.v1.otlp"]


@dataclass
class Containerd:
    address: str
    """The gRPC socket path, for ``ctr --address``."""
    root: Path
    proc: subprocess.Popen
    log_path: Path
    namespace: str = "lazyfs-test"
    snapshotter: str = "native"
    state: Path | None = None

    def ctr(self, *args: str, timeout: float = 120) -> str:
        """Run ``ctr-remote`` against this containerd; its stdout, or an error
        carrying its stderr."""
        cmd = [CTR_BIN, "--address", self.address, "--namespace", self.namespace, *args]
        env = dict(os.environ, CONTAINERD_SNAPSHOTTER=self.snapshotter)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip()}")
        return r.stdout

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.state is not None:
            shutil.rmtree(self.state, ignore_errors=True)

    def __enter__(self) -> Containerd:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_containerd(tmpdir: Path | str, snapshotter: str = "native", *,
                     proxy_snapshotters: dict[str, str] | None = None) -> Containerd:
    """Start containerd with everything under ``tmpdir``; stop it with ``.stop()``.

    ``proxy_snapshotters`` maps names to the unix sockets of snapshotters
    serving containerd's snapshots gRPC API (``[proxy_plugins.NAME]``);
    containerd dials them when first asked, so they may start later."""
    base = Path(tmpdir)
    root = base / "root"
    root.mkdir(parents=True, exist_ok=True)
    # sockets live in a short path of their own: a unix socket path has at
    # most 107 bytes, and pytest's tmp_path alone can come close
    state = Path(tempfile.mkdtemp(prefix="lazyfs-ctd-"))
    address = str(state / "containerd.sock")
    config = base / "config.toml"
    disabled = ", ".join(f'"{p}"' for p in _DISABLED)
    config.write_text(
        "version = 2\n"
        f'root = "{root}"\n'
        f'state = "{state}"\n'
        f"disabled_plugins = [{disabled}]\n"
        "[grpc]\n"
        f'  address = "{address}"\n'
        "[ttrpc]\n"
        f'  address = "{address}.ttrpc"\n'
        "[debug]\n"
        f'  address = "{state / "debug.sock"}"\n'
        "[metrics]\n"
        '  address = ""\n'
        '[plugins."io.containerd.service.v1.diff-service"]\n'
        '  default = ["walking"]\n'
        + "".join(f'[proxy_plugins.{name}]\n  type = "snapshot"\n  address = "{sock}"\n'
                  for name, sock in (proxy_snapshotters or {}).items())
    )
    log_path = base / "containerd.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([CONTAINERD_BIN, "--config", str(config)], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    handle = Containerd(address, root, proc, log_path, snapshotter=snapshotter, state=state)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            handle.stop()
            raise RuntimeError(f"containerd exited: {log_path.read_text(errors='replace')}")
        if os.path.exists(address):
            r = subprocess.run([CTR_BIN, "--address", address, "version"],
                               capture_output=True, timeout=10)
            if r.returncode == 0:
                return handle
        time.sleep(0.1)
    handle.stop()
    raise RuntimeError("containerd did not start")

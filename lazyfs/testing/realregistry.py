"""A real CNCF distribution registry on a free loopback port, for tests and
benchmarks.

Started from Debian's ``docker-registry`` binary with a throw-away storage
folder; optionally with htpasswd Basic auth. Its log is kept so a caller can
count the requests lazyfs made.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Registry:
    host: str
    """``127.0.0.1:PORT``, as it appears in references."""
    root: Path
    proc: subprocess.Popen
    log_path: Path
    user: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def client(self) -> httpx.Client:
        auth = (self.user, self.password) if self.user else None
        return httpx.Client(base_url=self.url, auth=auth, timeout=60)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def access_log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_registry(root: Path, *, user: str | None = None, password: str | None = None,
                   port: int | None = None, proxy_remote: str | None = None,
                   tls: tuple[Path, Path] | None = None) -> Registry:
    """``proxy_remote``: a pull-through cache of that registry URL (distribution's
    proxy mode); ``tls``: ``(certificate, key)`` files to serve HTTPS with."""
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    auth = ""
    if user:
        htpasswd = root / "htpasswd"
        out = subprocess.run(["htpasswd", "-Bbn", user, password], check=True,
                             capture_output=True, text=True).stdout
        htpasswd.write_text(out)
        auth = f"auth:\n  htpasswd:\n    realm: basic-realm\n    path: {htpasswd}\n"
    if proxy_remote:
        auth += f"proxy:\n  remoteurl: {proxy_remote}\n"
    listen = f"http:\n  addr: 127.0.0.1:{port}\n"
    if tls:
        listen += f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n"
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: info\n  formatter: text\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
        + listen + auth
    )
    log_path = root / "registry.log"
    env = dict(os.environ, OTEL_TRACES_EXPORTER="none")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    reg = Registry(f"127.0.0.1:{port}", root, proc, log_path, user, password)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"registry exited: {log_path.read_text()}")
        try:
            r = httpx.get(f"{'https' if tls else 'http'}://{reg.host}/v2/", timeout=1,
                          verify=False)
            if r.status_code in (200, 401):
                return reg
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    reg.stop()
    raise RuntimeError("registry did not start")

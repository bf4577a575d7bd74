"""The lazyfs snapshotter of ``lazyfs serve`` under the real containerd
(Debian's 1.6) and runc: plain pulls unpack into it, ``ctr-remote image
rpull`` gets layers served lazily, ``ctr run`` starts containers on both, and
a restart of the service keeps state and serves the layers again."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from lazyfs.formats import estargz
from lazyfs.testing import debian
from lazyfs.testing.containerd import start_containerd
from lazyfs.testing.floor import blob_bytes_served, floor
from tests.support.climount import lazyfs, lazyfs_env
from tests.support.mounts import force_cleanup, is_mounted
from tests.support.shimage import EXPECTED, SCRIPT, push_shell_image

REMOTE = "containerd.io/snapshot/remote"
REPO = Path(__file__).resolve().parents[2]


class Snapshotter:
    """``lazyfs serve --containerd-socket`` in a process of its own: the store
    mode mount serves the layers, the snapshotter answers containerd."""

    def __init__(self, work: Path):
        self.work = work
        self.root = work / "store"
        self.state = work / "state"
        self.sockdir = tempfile.mkdtemp(prefix="lazyfs-sn-")
        self.socket = os.path.join(self.sockdir, "snapshotter.sock")
        (work / "docker-config").mkdir()
        # no credentials: an image behind auth is one lazyfs cannot open
        self.env = dict(lazyfs_env(work), PYTHONPATH=str(REPO),
                        DOCKER_CONFIG=str(work / "docker-config"))
        self.env.pop("REGISTRY_AUTH_FILE", None)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        if not is_mounted(self.root):  # a mount left to the next service may not answer yet
            self.root.mkdir(exist_ok=True)
        with open(self.work / "serve.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lazyfs", "serve", "--no-control-socket",
                 "--containerd-socket", self.socket, "--containerd-state", str(self.state),
                 str(self.root)], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not (is_mounted(self.root) and os.path.exists(self.socket)):
            assert self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, "lazyfs serve did not start: " + self.log()
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(30) == 0, self.log()
        force_cleanup(self.root, [])

    def stats(self) -> dict:
        return self.service_stats()["snapshotter"]

    def service_stats(self) -> dict:
        return json.loads(os.getxattr(self.root, "user.lazyfs.stats"))

    def serving(self) -> bool:
        return is_mounted(self.root)

    def log(self) -> str:
        return (self.work / "serve.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def snapshotter(tmp_path_factory):
    sn = Snapshotter(tmp_path_factory.mktemp("snapshotter"))
    sn.start()
    try:
        yield sn
    finally:
        sn.stop()
        os.rmdir(sn.sockdir)


@pytest.fixture(scope="module")
def ctd(tmp_path_factory, snapshotter):
    with start_containerd(tmp_path_factory.mktemp("containerd"), snapshotter="lazyfs",
                          proxy_snapshotters={"lazyfs": snapshotter.socket}) as c:
        yield c


def snapshot_labels(ctd, key: str) -> dict:
    return json.loads(ctd.ctr("snapshots", "info", key)).get("Labels") or {}


def chain_ids(ctd) -> list[str]:
    lines = ctd.ctr("snapshots", "ls").splitlines()[1:]
    return [line.split()[0] for line in lines if line.split()[-1] == "Committed"]


def reconnected_chain_ids(ctd) -> list[str]:
    """``chain_ids`` once containerd has dialled the restarted snapshotter again
    (gRPC backs off between dials: up to seconds after a failed one)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return chain_ids(ctd)
        except RuntimeError as e:
            if "unavailable" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_plain_pull_unpacks_into_the_snapshotter_and_runs(registry, ctd, snapshotter):
    with registry.client() as c:
        ref = f"{registry.host}/{push_shell_image(c, 'snap/plain')}"
    ctd.ctr("image", "pull", "--plain-http", ref)
    assert ctd.ctr("run", "--rm", ref, "plain1", "/bin/sh", "-c", SCRIPT) == EXPECTED
    layers = snapshotter.stats()["layers"]
    mine = [layers[k] for k in chain_ids(ctd) if k in layers]
    assert [r["mode"] for r in mine] == ["unpacked", "unpacked"]
    assert all("plain pull" in r["reason"] for r in mine)
    assert all(REMOTE not in snapshot_labels(ctd, k) for k in chain_ids(ctd))


def test_rpull_serves_layers_lazily_and_survives_a_restart(registry, ctd, snapshotter):
    with registry.client() as c:
        ref = f"{registry.host}/{push_shell_image(c, 'snap/remote')}"
    before = set(chain_ids(ctd))
    ctd.ctr("image", "rpull", "--plain-http", ref)
    new = [k for k in chain_ids(ctd) if k not in before]
    assert len(new) == 2
    assert all(snapshot_labels(ctd, k).get(REMOTE) == "remote snapshot" for k in new)
    assert {snapshotter.stats()["layers"][k]["mode"] for k in new} == {"lazy"}
    # the image opened once, with the per-layer views (no merged-only open first)
    opened = [(i["layer_views"], i["opens"]) for i in snapshotter.service_stats()["images"]
              if any("snap/remote" in r for r in i["references"])]
    assert opened == [(True, 1)]
    assert ctd.ctr("run", "--rm", ref, "remote1", "/bin/sh", "-c", SCRIPT) == EXPECTED

    snapshotter.stop()
    assert not snapshotter.serving()
    snapshotter.start()
    assert set(new) <= set(reconnected_chain_ids(ctd))
    assert ctd.ctr("run", "--rm", ref, "remote2", "/bin/sh", "-c", SCRIPT) == EXPECTED
    assert {snapshotter.stats()["layers"][k]["mode"] for k in new} == {"lazy"}
    shown = lazyfs("stats", str(snapshotter.root), env=snapshotter.env).stdout
    assert re.search(r"^snapshotter  [2-9]\d* layers lazy, \d+ unpacked, 0 failed", shown, re.M)
    assert all(re.search(rf"^{k[:19]} +lazy +sha256:\S+ +{re.escape(ref)}$", shown, re.M)
               for k in new), shown


def test_an_image_lazyfs_cannot_open_is_unpacked_by_containerd(auth_registry, ctd, snapshotter):
    with auth_registry.client() as c:
        ref = f"{auth_registry.host}/{push_shell_image(c, 'snap/private')}"
    before = set(chain_ids(ctd))
    ctd.ctr("image", "rpull", "--plain-http", "--user", "alice:s3cret", ref)
    new = [k for k in chain_ids(ctd) if k not in before]
    assert len(new) == 2
    assert ctd.ctr("run", "--rm", ref, "private1", "/bin/sh", "-c", SCRIPT) == EXPECTED
    layers = snapshotter.stats()["layers"]
    assert {layers[k]["mode"] for k in new} == {"unpacked"}
    assert all("lazyfs cannot serve it" in layers[k]["reason"] for k in new), layers
    assert "unpacking instead of serving it lazily" in snapshotter.log()


@pytest.mark.slow
# zstd:chunked as ctr-remote writes it: skopeo's has the gzip image's diff_ids,
# so its layers would be the same snapshots
@pytest.mark.parametrize("fmt", ["estargz", "zstd-chunked-stargz", "gzip"])
def test_rpull_then_run_python_from_lazily_served_layers(registry, ctd, snapshotter, fmt):
    img = debian.debian_image(registry.host, "bookworm-python", fmt, repo="snap/debian-py")
    if fmt == "gzip":
        lazyfs("index", "push", "-q", img.ref, env=snapshotter.env)
    before = set(chain_ids(ctd))
    mark = len(registry.access_log())
    ctd.ctr("image", "rpull", "--plain-http", img.ref, timeout=300)
    new = [k for k in chain_ids(ctd) if k not in before]
    assert ctd.ctr("run", "--rm", img.ref, f"py-{fmt}", "python3", "-c", "print(6*7)",
                   timeout=300) == "42\n"
    layers = snapshotter.stats()["layers"]
    tag = debian.default_tag(img.layout, img.tag)
    digests = {d["digest"] for d in debian.layers(img.layout, tag)}
    assert len(new) == 4 and {layers[k]["mode"] for k in new} == {"lazy"}
    assert {layers[k]["digest"] for k in new} == digests
    if fmt == "estargz":
        # the TOCs, the chunks the start decoded and kept, and of a layer
        # whose TOC is smaller than the first request only that request
        need = floor(img.layout, tag, snapshotter.work / "cache")
        slack = sum(max(0, min(size, estargz.TOC_GUESS) - toc) for size, toc in need.layers)
        served = blob_bytes_served(registry.access_log()[mark:], "snap/debian-py", digests)
        assert need.kept and served <= need.total + slack, (served, need.total, slack)


HOLD_PYTHON = """
import hashlib, os, signal, time
fd = os.open('/usr/bin/python3.11', os.O_RDONLY)
def dump(*_):
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    digest = hashlib.sha256(os.pread(fd, 1 << 30, 0)).hexdigest()
    with open('/tmp/held.new', 'w') as f:
        f.write(digest)
    os.rename('/tmp/held.new', '/tmp/held')
signal.signal(signal.SIGUSR1, dump)
dump()
while True:
    time.sleep(60)
"""


def _held_digest(ctd, name: str) -> str:
    deadline = time.monotonic() + 60
    while True:
        try:
            return ctd.ctr("task", "exec", "--exec-id", f"cat-{time.monotonic_ns()}", name,
                           "cat", "/tmp/held")
        except RuntimeError:
            assert time.monotonic() < deadline, "the container never wrote /tmp/held"
            time.sleep(0.2)


@pytest.mark.slow
def test_a_running_container_survives_a_restart_of_the_service(registry, ctd, snapshotter):
    """kill -9, then SIGTERM, of ``lazyfs serve`` under a running container:
    the next service takes over the connection, and the container reads files
    it never read and a file it held open, through its overlay mount made
    before."""
    img = debian.debian_image(registry.host, "bookworm-python", "estargz", repo="snap/debian-py")
    ctd.ctr("image", "rpull", "--plain-http", img.ref, timeout=300)
    name = f"survivor-{os.getpid()}"
    ctd.ctr("run", "-d", img.ref, name, "python3", "-c", HOLD_PYTHON, timeout=300)
    try:
        before = _held_digest(ctd, name)
        snapshotter.proc.kill()
        snapshotter.proc.wait()
        os.unlink(snapshotter.socket)
        snapshotter.start()
        assert "resuming the connection" in snapshotter.log()

        def run(*cmd: str) -> str:
            return ctd.ctr("task", "exec", "--exec-id", f"x-{time.monotonic_ns()}", name, *cmd,
                           timeout=120)
        assert "ID=debian" in run("cat", "/etc/os-release")
        assert run("python3", "-c", "print(6*7)") == "42\n"
        run("rm", "/tmp/held")
        ctd.ctr("task", "kill", "-s", "SIGUSR1", name)
        assert _held_digest(ctd, name) == before
        served = json.loads(os.getxattr(snapshotter.root, "user.lazyfs.stats"))["fuse"]
        assert served["reads"] > 0 and served["bytes_read"] > 1 << 20  # the held file, at least

        # SIGTERM (systemctl restart) under the running container: the mount stays
        snapshotter.proc.send_signal(signal.SIGTERM)
        assert snapshotter.proc.wait(30) == 0
        assert snapshotter.serving() and "in use (/" in snapshotter.log().splitlines()[-1]
        if os.path.exists(snapshotter.socket):
            os.unlink(snapshotter.socket)
        snapshotter.start()
        assert run("cat", "/etc/debian_version").strip()[:2].isdigit()
    finally:
        ctd.ctr("task", "kill", "-s", "SIGKILL", name)
        deadline = time.monotonic() + 30
        while True:
            try:
                ctd.ctr("task", "delete", name)
                break
            except RuntimeError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        ctd.ctr("container", "delete", name)

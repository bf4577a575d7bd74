"""``lazyfs serve`` end to end: a real registry, the service's real FUSE mount
in a subprocess, and real CLI subprocesses asking it (or working alone)."""

from __future__ import annotations

import errno
import gzip
import json
import os
import socket
import subprocess
import threading
import time

import pytest

from lazyfs.testing.push import push_image
from lazyfs.testing.realregistry import free_port
from tests.support.awkward import awkward_tars
from tests.support.climount import LAZYFS
from tests.support.images import make_tar
from tests.support.ocilayout import write_oci_layout
from tests.support.serving import serving
from tests.support.trees import describe, differences

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def debian(registry):
    from lazyfs.testing.debian import debian_image
    return {v: debian_image(registry.host, v, "estargz") for v in ("bookworm", "bookworm-python")}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("serve"), "--idle-timeout", "3", "--tag-ttl", "1") as s:
        yield s


def _run(*args: str, env: dict, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*LAZYFS, *args], capture_output=True, env=env, timeout=120, input=input)


def _wait(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if (value := predicate()):
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def awkward_small(tmp_path_factory):
    """The awkward image with 50 files where it has 10,000 (each file is read)."""
    tars = awkward_tars(many=50)
    root = tmp_path_factory.mktemp("awkward-small")
    layout = write_oci_layout(root / "layout", [gzip.compress(t, mtime=0) for t in tars],
                              tag="awkward")
    subprocess.run(["umoci", "unpack", "--image", layout.ref, str(root / "bundle")], check=True,
                   capture_output=True)
    return tars, describe(root / "bundle" / "rootfs")


def test_store_mode_tree_equals_umoci_unpack(service, registry, awkward_small):
    tars, expected = awkward_small
    with registry.client() as c:
        push_image(c, "serve/awkward", "v1", [gzip.compress(t, mtime=0) for t in tars])
    image = service.root / registry.host / "serve/awkward:v1"
    assert differences(expected, describe(image)) == []
    assert registry.host in os.listdir(service.root)
    assert os.listdir(service.root / registry.host / "serve") == ["awkward:v1"]
    with open("/proc/mounts") as f:
        opts = next(line for line in f if f" {service.root} " in line).split()[3].split(",")
    assert {"ro", "nosuid", "nodev"} <= set(opts)


def test_layers_are_shared_and_stack_with_overlayfs(service, debian, tmp_path):
    base = debian["bookworm"]
    os_release = service.root / base.host / f"{base.repo}:{base.tag}" / "etc/os-release"
    assert b"bookworm" in os_release.read_bytes()
    py = debian["bookworm-python"]
    py_root = service.root / py.host / f"{py.repo}:{py.tag}"
    assert (py_root / "etc/os-release").read_bytes() == os_release.read_bytes()
    stats = service.stats(py_root)
    base_layer = stats["layers"][0]
    assert base_layer["bytes_fetched"] == 0, "the shared base layer was fetched again"
    service_stats = service.stats()
    views = service_stats["layer_views"]
    assert {layer["digest"] for layer in stats["layers"]} <= set(views)
    listed = os.listdir(service.root / ".layers")
    assert sorted(listed) == sorted([*views, *views.values()])  # each layer once
    # the per-layer directories, top first, stack into the image's tree
    lower = ":".join(str(service.root / ".layers" / views[layer["digest"]])
                     for layer in reversed(stats["layers"]))
    assert os.readlink(service.root / ".layers" / base_layer["digest"]) == views[base_layer["digest"]]
    merged = tmp_path / "merged"
    merged.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lower}",
                    str(merged)], check=True, capture_output=True)
    try:
        for path in ("etc/os-release", "usr/bin/python3", "etc/passwd"):
            assert os.path.lexists(merged / path) == os.path.lexists(py_root / path), path
        assert sorted(os.listdir(merged / "etc")) == sorted(os.listdir(py_root / "etc"))
        assert (merged / "etc/os-release").read_bytes() == os_release.read_bytes()
    finally:
        subprocess.run(["umount", str(merged)], check=True)


def test_bad_references_fail_that_path_only(service, registry):
    down = f"127.0.0.1:{free_port()}"
    cases = {"Bad::": errno.ENOENT, f"{registry.host}/UPPER:v1": errno.ENOENT,
             f"{registry.host}/serve/missing:v1": errno.ENOENT, f"{down}/x:v1": errno.EIO}
    for path, expected in cases.items():
        with pytest.raises(OSError) as caught:
            os.stat(service.root / path)
        assert caught.value.errno == expected, path
    stats = service.stats()
    reasons = " ".join(f["reason"] for f in stats["failures"])
    assert "manifest unknown" in reasons and down in reasons and "UPPER" in reasons
    assert "manifest unknown" in service.log()
    # still serving
    with registry.client() as c:
        push_image(c, "serve/small", "v1", [gzip.compress(make_tar({"hello": b"hi\n"}))])
    assert (service.root / registry.host / "serve/small:v1/hello").read_bytes() == b"hi\n"


def test_a_registry_that_never_answers_stalls_only_its_own_path(service, registry):
    listener = socket.create_server(("127.0.0.1", 0))
    stalled = f"127.0.0.1:{listener.getsockname()[1]}/x:v1"
    outcome: list = []

    def look():
        try:
            os.stat(service.root / stalled)
            outcome.append(0)
        except OSError as e:
            outcome.append(e.errno)

    waiting = threading.Thread(target=look)
    waiting.start()
    try:
        conn, _ = listener.accept()  # the service asked, and hears nothing back
        with registry.client() as c:
            push_image(c, "serve/meanwhile", "v1", [gzip.compress(make_tar({"f": b"ok\n"}))])
        t = time.monotonic()
        assert (service.root / registry.host / "serve/meanwhile:v1/f").read_bytes() == b"ok\n"
        assert time.monotonic() - t < 10
        assert waiting.is_alive()
        conn.close()
    finally:
        listener.close()
    waiting.join(60)
    assert outcome and outcome[0] == errno.EIO


def test_idle_images_are_closed_and_reopened(service, registry):
    with registry.client() as c:
        push_image(c, "serve/idle", "v1", [gzip.compress(make_tar({"f": b"idle\n"}))])
    path = service.root / registry.host / "serve/idle:v1/f"
    assert path.read_bytes() == b"idle\n"

    def state():
        return next(i for i in service.stats()["images"]
                    if any("serve/idle" in r for r in i["references"]))
    _wait(lambda: state()["state"] == "closed", 20, "the idle image to close")
    with open(path, "rb") as f:  # the kernel still knows the inode: reopened by digest
        assert f.read() == b"idle\n"
    assert state()["opens"] == 2


def test_a_moved_tag_is_resolved_again(service, registry):
    with registry.client() as c:
        push_image(c, "serve/moving", "v1", [gzip.compress(make_tar({"which": b"one\n"}))])
        path = service.root / registry.host / "serve/moving:v1/which"
        assert path.read_bytes() == b"one\n"
        push_image(c, "serve/moving", "v1", [gzip.compress(make_tar({"which": b"two\n"}))])
    _wait(lambda: path.read_bytes() == b"two\n", 15, "the tag to be resolved again")


COMMANDS = [
    ("ls", "-l", "{ref}", "/usr/bin"),
    ("cat", "{ref}", "/etc/os-release", "/etc/passwd"),
    ("stat", "{ref}", "/etc/passwd"),
    ("find", "{ref}", "/etc", "-name", "*.conf"),
    ("inspect", "{ref}"),
    ("diff", "{ref}", "{other}"),
    ("cat", "{ref}", "/no/such/file"),
    ("export", "{small}", "-"),
]


def test_the_cli_asks_the_service_and_answers_as_alone(service, debian, registry, tmp_path):
    ref, other = debian["bookworm-python"].ref, debian["bookworm"].ref
    small = f"{registry.host}/serve/export:v1"
    with registry.client() as c:
        push_image(c, "serve/export", "v1", [gzip.compress(make_tar(
            {"f": b"x\n", "d/": None, "d/link": ("symlink", "../f")}))])
    before = service.stats()["control"]["answered"]
    for command in COMMANDS:
        argv = [a.format(ref=ref, other=other, small=small) for a in command]
        served, alone = _run(*argv, env=service.env), _run(*argv, env=service.alone_env)
        assert (served.returncode, served.stdout) == (alone.returncode, alone.stdout), argv
        assert served.stderr == alone.stderr, argv
    assert service.stats()["control"]["answered"] == before + len(COMMANDS)
    # what the service would answer differently runs alone: an option it would
    # not honour is seen by the client, an export to files by the service
    declined = service.stats()["control"]["declined"]
    assert _run("ls", "--no-shared-index", ref, env=service.env).returncode == 0
    out = tmp_path / "out"
    assert _run("export", "-q", small, str(out), env=service.env).returncode == 0
    assert (out / "f").read_bytes() == b"x\n"
    assert service.stats()["control"]["declined"] == declined + 1
    assert service.stats()["control"]["answered"] == before + len(COMMANDS)


def test_the_client_imports_nothing_heavy(service, debian):
    code = ("import sys, json\n"
            "from lazyfs.cli.main import main\n"
            f"rc = main(['cat', {debian['bookworm'].ref!r}, '/etc/hostname'])\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'trio', 'httpx', 'pyfuse3', 'rich', 'sqlite3', 'zstandard', 'lazyfs.image'})\n"
            "print(json.dumps([rc, heavy]), file=sys.stderr)\n")
    p = subprocess.run([os.sys.executable, "-c", code], capture_output=True, env=service.env,
                       timeout=60)
    assert json.loads(p.stderr.decode().splitlines()[-1]) == [0, []]
    # the same check is not vacuous: working alone imports them
    p = subprocess.run([os.sys.executable, "-c", code], capture_output=True,
                       env=service.alone_env, timeout=60)
    assert "trio" in json.loads(p.stderr.decode().splitlines()[-1])[1]


def test_mounts_and_stats_cover_the_service(service, debian):
    ref = debian["bookworm"]
    (service.root / ref.host / f"{ref.repo}:{ref.tag}" / "etc/hostname").read_bytes()
    env = service.env
    listed = _run("mounts", "--json", env=env).stdout
    rows = [r for r in json.loads(listed) if r["mountpoint"].startswith(str(service.root))]
    assert rows[0]["reference"] == "lazyfs-store"
    assert any(r["reference"] == f"{ref.host}/{ref.repo}:{ref.tag}" and r["digest"] == ref.digest
               for r in rows[1:])
    table = _run("stats", str(service.root), env=env).stdout.decode()
    assert table.startswith("service ") and f"{ref.repo}:{ref.tag}" in table
    one = _run("stats", "--json", str(service.root / ref.host / f"{ref.repo}:{ref.tag}"),
               env=env)
    assert json.loads(one.stdout)["digest"] == ref.digest


def test_the_snapshotter_runs_in_the_service(tmp_path):
    pytest.importorskip("lazyfs.snapshotter")
    sock = tmp_path / "snapshots.sock"
    with serving(tmp_path / "work", "--containerd-socket", str(sock),
                 "--containerd-state", str(tmp_path / "state")) as service:
        _wait(sock.exists, 20, "the snapshots socket")
        snap = service.stats()["snapshotter"]
        assert snap["running"] is True and snap["socket"] == str(sock)


def test_socket_and_state_paths_it_cannot_use_are_one_error_line(tmp_path):
    """Each refused with exit 2 and one line naming the option, the mount
    left behind by none of them."""
    pytest.importorskip("lazyfs.snapshotter")
    afile, root = tmp_path / "afile", tmp_path / "root"
    afile.write_text("x")
    root.mkdir()
    ok = ["--control-socket", str(tmp_path / "c.sock")]
    cases = {
        ("--control-socket", str(afile / "x.sock")): "--control-socket PATH",
        (*ok, "--containerd-socket", str(afile / "s.sock")): "--containerd-socket PATH",
        (*ok, "--containerd-socket", str(tmp_path / "s.sock"),
         "--containerd-state", str(afile)): "--containerd-state DIR",
    }
    for args, names in cases.items():
        p = subprocess.run([*LAZYFS, "serve", *args, str(root)], capture_output=True, text=True,
                           timeout=60, env=dict(os.environ, LAZYFS_CACHE_DIR=str(tmp_path / "c")))
        errors = [line for line in p.stderr.splitlines() if line.startswith("lazyfs: ")]
        assert p.returncode == 2 and len(errors) == 1 and names in errors[0], (args, p.stderr)
        assert "Traceback" not in p.stderr and not os.path.ismount(root)

"""Least privilege by default: what a mount, a log line, an error and the
cache directory give away, checked on the running system."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from tests.hostile import corpus as C
from tests.hostile.conftest import one_error_line, push_case
from tests.support.climount import cli_mount, lazyfs, lazyfs_env

PASSWORD = "s3cret"
USER = "alice"


def mount_options(mountpoint: Path) -> tuple[set[str], set[str]]:
    """(per-mount options, superblock options) from /proc/self/mountinfo."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if fields[4].replace("\\040", " ") == str(mountpoint):
                return set(fields[5].split(",")), set(right.split()[2].split(","))
    raise AssertionError(f"{mountpoint} is not mounted")


@pytest.fixture(scope="module")
def small(registry):
    tar = (C.file("bin/su", b"setuid\n", mode=0o4755) + C.file("dev-null", b"", type=b"3",
                                                                     devmajor=1, devminor=3)
           + C.end())
    return push_case(registry, "privilege-small", [C.gzip_bytes(tar)])


def test_mount_is_read_only_nosuid_nodev_and_private_by_default(small, tmp_path):
    env = lazyfs_env(tmp_path)
    mnt = tmp_path / "mnt"
    with cli_mount(small, mnt, env):
        mine, sb = mount_options(mnt)
        assert {"ro", "nosuid", "nodev"} <= mine
        assert "allow_other" not in sb
        assert (mnt / "bin/su").stat().st_mode & stat.S_ISUID  # shown, but not honoured
        with pytest.raises(OSError):
            (mnt / "new").write_bytes(b"x")


def test_allow_other_only_when_asked(small, tmp_path):
    env = lazyfs_env(tmp_path)
    mnt = tmp_path / "mnt"
    with cli_mount(small, mnt, env, "--allow-other"):
        mine, sb = mount_options(mnt)
        assert "allow_other" in sb and {"ro", "nosuid", "nodev"} <= mine


@pytest.fixture(scope="module")
def private(auth_registry):
    tar = C.file("etc/motd", b"members only\n") + C.end()
    return push_case(auth_registry, "privilege-private", [C.gzip_bytes(tar)])


def docker_config(tmp_path: Path, host: str, password: str) -> Path:
    d = tmp_path / "docker"
    d.mkdir(exist_ok=True)
    auth = base64.b64encode(f"{USER}:{password}".encode()).decode()
    (d / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    os.chmod(d / "config.json", 0o600)
    return d


def secrets_of(password: str) -> list[bytes]:
    return [password.encode(), base64.b64encode(f"{USER}:{password}".encode()),
            base64.b64encode(f"{USER}:{password}".encode()).rstrip(b"=")]


def test_credentials_never_appear_in_output_logs_or_process_titles(private, auth_registry,
                                                                     tmp_path):
    env = lazyfs_env(tmp_path)
    env["DOCKER_CONFIG"] = str(docker_config(tmp_path, auth_registry.host, PASSWORD))
    seen: list[bytes] = []
    for args in (("--debug", "inspect", private), ("--debug", "cat", private, "/etc/motd"),
                 ("--debug", "pull", private)):
        p = lazyfs(*args, env=env)
        seen += [p.stdout.encode(), p.stderr.encode()]
    assert b"members only" in b"".join(seen)
    mnt = tmp_path / "mnt"
    with cli_mount(private, mnt, env, "--debug"):
        assert (mnt / "etc/motd").read_bytes() == b"members only\n"
        state = next((Path(env["XDG_RUNTIME_DIR"]) / "lazyfs").glob("*.json"))
        doc = json.loads(state.read_text())
        seen.append(Path(f"/proc/{doc['pid']}/cmdline").read_bytes())
        seen.append(state.read_bytes())
        log = Path(doc["log"])
        seen.append(log.read_bytes())
        assert stat.S_IMODE(log.stat().st_mode) & 0o077 == 0
    seen.append(log.read_bytes())
    everything = b"\n".join(seen)
    assert len(everything) > 1000  # the debug log did say things
    for secret in secrets_of(PASSWORD):
        assert secret not in everything


def test_a_refused_password_is_not_echoed(private, auth_registry, tmp_path, cli):
    wrong = "n0t-the-passw0rd"
    cli.env["DOCKER_CONFIG"] = str(docker_config(tmp_path, auth_registry.host, wrong))
    for args in (("inspect", private), ("--debug", "ls", private, "/")):
        p = lazyfs(*args, env=cli.env, check=False)
        assert p.returncode == 4
        assert "Traceback" not in p.stderr
        text = (p.stdout + p.stderr).encode()
        for secret in secrets_of(wrong):
            assert secret not in text
    assert "lazyfs: " in one_error_line(cli("inspect", private))


def test_cache_directory_is_created_private_and_nothing_in_it_is_world_writable(small, tmp_path):
    cache = tmp_path / "fresh" / "cache"
    env = lazyfs_env(tmp_path, cache)
    lazyfs("cat", small, "/bin/su", env=env)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    for dirpath, dirnames, filenames in os.walk(cache):
        for name in dirnames + filenames:
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
            assert not mode & stat.S_IWOTH, os.path.join(dirpath, name)

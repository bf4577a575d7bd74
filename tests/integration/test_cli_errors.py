"""What the command line says when the environment is wrong: a registry that
is down, a cache that cannot be written, a broken credential file, a cache
size the disk cannot hold. One line (or one warning), the error's exit code,
never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lazyfs.errors import CacheError, CredentialsError, RegistryUnreachable
from lazyfs.testing.push import OCI_LAYER_TAR, push_image
from tests.support.images import make_tar
from tests.support.immutable import immutable

LAZYFS = [sys.executable, "-m", "lazyfs"]


def run(*args: str, cache: Path, **env: str) -> subprocess.CompletedProcess:
    full = dict(os.environ, LAZYFS_CACHE_DIR=str(cache), **env)
    return subprocess.run([*LAZYFS, *args], capture_output=True, text=True, env=full,
                          timeout=120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_registry_that_is_down_is_not_a_missing_local_image(tmp_path):
    host = f"127.0.0.1:{free_port()}"
    (tmp_path / "mnt").mkdir()
    for command in (["ls", f"{host}/x:y", "/"], ["cat", f"{host}/x:y", "/etc/hostname"],
                    ["stat", f"{host}/x:y", "/"], ["mount", f"{host}/x:y", str(tmp_path / "mnt")]):
        p = run(*command, cache=tmp_path / "cache", XDG_RUNTIME_DIR=str(tmp_path / "run"))
        assert p.returncode == RegistryUnreachable.exit_code, p.stderr
        assert p.stderr.startswith(f"lazyfs: cannot reach registry {host}"), p.stderr
        assert len(p.stderr.splitlines()) == 1, p.stderr


def test_a_cache_directory_that_cannot_be_written_is_one_line(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    with immutable(cache):
        p = run("ls", f"127.0.0.1:{free_port()}/x:y", "/", cache=cache)
    assert p.returncode == CacheError.exit_code, p.stderr
    assert p.stderr.splitlines() == [p.stderr.rstrip("\n")] and "Traceback" not in p.stderr
    assert str(cache) in p.stderr and "not permitted" in p.stderr


def test_a_file_where_the_cache_directory_should_be_is_one_line(tmp_path):
    (tmp_path / "cache").write_text("in the way\n")
    p = run("ls", f"127.0.0.1:{free_port()}/x:y", "/", cache=tmp_path / "cache")
    assert p.returncode == CacheError.exit_code, p.stderr
    assert len(p.stderr.splitlines()) == 1 and str(tmp_path / "cache") in p.stderr


@pytest.fixture(scope="module")
def small(registry) -> str:
    with registry.client() as c:
        push_image(c, "errors/small", "v1", [make_tar({"etc/": None, "etc/hostname": "box\n"})],
                   layer_media_type=OCI_LAYER_TAR)
    return f"{registry.host}/errors/small:v1"


def test_a_cache_size_beyond_the_file_system_is_clamped_with_one_warning(small, tmp_path):
    for args, env in ((["--cache-size", "1000T"], {}), ([], {"LAZYFS_CACHE_SIZE": "1000T"})):
        p = run(*args, "ls", small, "/etc", cache=tmp_path / "cache", **env)
        assert p.returncode == 0 and p.stdout == "hostname\n", p.stderr
        warning, = p.stderr.splitlines()
        assert warning.startswith("lazyfs: warning: cache size 1000T is larger than the file "
                                  "system holding "), warning


def test_a_corrupt_credential_file_is_skipped_with_one_warning(small, docker_config, tmp_path):
    config = docker_config / "config.json"
    config.write_text('{"auths": {,,}')
    p = run("ls", small, "/etc", cache=tmp_path / "cache")
    assert p.returncode == 0 and p.stdout == "hostname\n", p.stderr
    warning, = p.stderr.splitlines()
    assert warning.startswith(f"lazyfs: warning: credential file {config} is not valid JSON")


def test_a_corrupt_credential_file_is_the_error_when_credentials_are_needed(
        auth_registry, docker_config, tmp_path):
    with auth_registry.client() as c:
        push_image(c, "errors/private", "v1", [make_tar({"secret": "s\n"})],
                   layer_media_type=OCI_LAYER_TAR)
    config = docker_config / "config.json"
    config.write_text('{"auths": {,,}')
    p = run("ls", f"{auth_registry.host}/errors/private:v1", "/", cache=tmp_path / "cache")
    assert p.returncode == CredentialsError.exit_code, p.stderr
    warning, error = p.stderr.splitlines()
    assert warning.startswith("lazyfs: warning: credential file")
    assert error.startswith("lazyfs: unauthorized:") and str(config) in error
    assert "not valid JSON" in error

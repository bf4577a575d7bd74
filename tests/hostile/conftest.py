"""Fixtures for the hostile corpus: a host directory the images aim at, and
the CLI run the way a user runs it, under a hard timeout, with the checks
every hostile case shares (no traceback, at most one error line)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from lazyfs.testing.push import push_image

LAZYFS = [sys.executable, "-m", "lazyfs"]
TIMEOUT = 60
SECRET = b"HOST SECRET, never to be served\n"


@dataclass
class Host:
    """A directory outside every image: what a hostile image tries to reach."""

    dir: Path

    @property
    def secret(self) -> Path:
        return self.dir / "secret"

    def untouched(self) -> bool:
        return (sorted(p.name for p in self.dir.iterdir()) == ["secret"]
                and self.secret.read_bytes() == SECRET)


@pytest.fixture(scope="session")
def host(tmp_path_factory) -> Host:
    d = tmp_path_factory.mktemp("host")
    (d / "secret").write_bytes(SECRET)
    return Host(d)


@pytest.fixture
def cli(tmp_path):
    """Run ``lazyfs ARGS`` with a private cache; returns the finished process."""
    env = dict(os.environ, LAZYFS_CACHE_DIR=str(tmp_path / "cache"),
               XDG_RUNTIME_DIR=str(tmp_path / "run"), DOCKER_CONFIG=str(tmp_path / "docker"))

    def run(*args: str, timeout: float = TIMEOUT, preexec=None,
            check_stderr: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run([*LAZYFS, *args], capture_output=True, env=env, timeout=timeout,
                           preexec_fn=preexec, check=False)
        assert b"Traceback" not in p.stderr, p.stderr.decode(errors="replace")
        if p.returncode != 0 and check_stderr:
            one_error_line(p)
        return p
    run.env = env
    return run


def one_error_line(p: subprocess.CompletedProcess) -> str:
    text = p.stderr.decode(errors="replace")
    assert re.fullmatch(r"lazyfs: [^\n]+\n", text), text
    return text


def repo_name(name: str) -> str:
    return "hostile/" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def push_case(registry, name: str, blobs: list[bytes], **kw) -> str:
    """Push layer blobs as an image; returns its reference."""
    repo = repo_name(name)
    with registry.client() as c:
        push_image(c, repo, "v1", blobs, **kw)
    return f"{registry.host}/{repo}:v1"

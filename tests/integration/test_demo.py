"""``scripts/demo`` read as a new user reads it: run twice on one registry, then
once more on a registry at another port, in a demo directory of its own.

Needs what the demo needs (root, FUSE, ``docker-registry``, the cached Debian
images); a missing piece makes this test fail, never skip.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def demo(tmp_path):
    """``demo(port, *args)`` runs scripts/demo with its own directory and port."""
    base = dict(os.environ, LAZYFS_DEMO_DIR=str(tmp_path / "demo"))

    def run(port: int, *args: str) -> str:
        env = dict(base, LAZYFS_DEMO_PORT=str(port))
        done = subprocess.run([str(ROOT / "scripts/demo"), *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr
        return done.stdout

    yield run
    run(0, "--stop")


def _steps(out: str) -> dict[str, str]:
    """Each step's title → its output."""
    parts = re.split(r"^==> (\d+)/(\d+) (.*)$", out, flags=re.M)
    numbers = [(int(parts[i]), int(parts[i + 1])) for i in range(1, len(parts), 4)]
    total = numbers[0][1]
    assert numbers == [(n, total) for n in range(1, total + 1)], numbers
    return {parts[i + 2]: parts[i + 3] for i in range(1, len(parts), 4)}


def _step(steps: dict[str, str], start: str) -> str:
    [body] = [body for title, body in steps.items() if title.startswith(start)]
    return body


def _commands(out: str) -> list[str]:
    return [line[2:] for line in out.splitlines() if line.startswith("$ ")]


def _check_run(out: str, host: str) -> None:
    steps = _steps(out)
    for command in _commands(out):
        assert "..." not in command
        shlex.split(command)
    first = _step(steps, "mount the gzip image for the first time")
    assert f"$ lazyfs mount {host}/debian:bookworm-python " in first
    assert "downloaded whole" in first
    assert f"$ lazyfs index push {host}/debian:bookworm-python" in _step(steps, "publish the index")
    fresh = _step(steps, "mount the same image with an empty cache")
    assert "--cache-dir" in fresh
    share = re.search(r"of index tables = ([\d.]+)% of the image", fresh)
    assert share and float(share[1]) <= 2.0, fresh
    assert "downloaded whole" not in fresh
    estargz = _step(steps, "the estargz image, with an empty cache")
    assert f"{host}/debian:bookworm-python-estargz" in estargz
    images = _step(steps, "images").strip().split("\n\n")[0].splitlines()
    assert images[0] == "$ lazyfs images"
    assert [row.split()[:2] for row in images[2:]] == [[f"{host}/debian", "bookworm-python"]]


def test_demo_twice_on_one_registry_then_on_another_port(demo):
    port = _free_port()
    host = f"127.0.0.1:{port}"
    first = demo(port)
    assert f"started docker-registry on {host}" in first
    _check_run(first, host)

    second = demo(port)
    assert f"the demo registry is already running at {host}" in second
    assert "removed the index an earlier run published for debian:bookworm-python" in second
    _check_run(second, host)

    demo(port, "--stop")
    other = f"127.0.0.1:{_free_port()}"
    third = demo(int(other.rsplit(":", 1)[1]))
    assert f"started docker-registry on {other}" in third
    _check_run(third, other)

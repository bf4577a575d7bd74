"""Progress of long commands: drawn on a terminal's stderr, never into a
pipe, and not with -q."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from lazyfs.testing.push import OCI_LAYER_GZIP, push_image
from tests.support.images import gzip_bytes, make_tar

ROOT = Path(__file__).resolve().parents[2]


def _image(registry, n: int = 2) -> str:
    repo = f"progress/img-{uuid.uuid4().hex[:8]}"
    blobs = [gzip_bytes(make_tar({f"d{i}/": None, f"d{i}/f": os.urandom(300_000)})) for i in range(n)]
    with registry.client() as c:
        push_image(c, repo, "v1", blobs, layer_media_type=OCI_LAYER_GZIP)
    return f"{registry.host}/{repo}:v1"


def _on_terminal(*args: str) -> tuple[int, str, str]:
    """Run lazyfs with stderr on a pseudo-terminal: exit code, stdout, what
    the terminal showed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "lazyfs", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    shown = b""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        shown += data
    out, _ = proc.communicate(timeout=60)
    os.close(master)
    return proc.returncode, out, shown.decode(errors="replace")


def _in_pipes(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lazyfs", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=120)


def _commands(ref: str, tmp_path: Path) -> dict[str, list[str]]:
    flags = ["--insecure-registry", ref.partition("/")[0]]
    return {"pull": ["pull", *flags, ref],
            "export": ["export", *flags, ref, str(tmp_path / "out")],
            "diff": ["diff", *flags, ref, ref],
            "index push": ["index", "push", *flags, ref]}


@pytest.mark.parametrize("command", ["pull", "export", "diff", "index push"])
def test_progress_is_drawn_on_a_terminal(registry, cache_dir, tmp_path, command):
    ref = _image(registry)
    code, _, shown = _on_terminal(*_commands(ref, tmp_path)[command])
    assert code == 0, shown
    assert "\x1b[" in shown and ("layer " in shown or "Pull complete" in shown), shown
    assert "MB" in shown or "kB" in shown, shown


@pytest.mark.parametrize("command", ["pull", "export", "diff", "index push"])
def test_no_progress_in_a_pipe_or_with_quiet(registry, cache_dir, tmp_path, command):
    ref = _image(registry)
    args = _commands(ref, tmp_path)[command]
    piped = _in_pipes(*args)
    assert piped.returncode == 0, piped.stderr
    assert "\x1b" not in piped.stderr and "layer " not in piped.stderr
    if command == "export":
        (tmp_path / "out").rename(tmp_path / "first")
    quiet = [*args[:-2], "-q", *args[-2:]] if command in ("export", "diff") else [*args[:-1], "-q", args[-1]]
    code, _, shown = _on_terminal(*quiet)
    assert code == 0, shown
    assert "\x1b" not in shown and "layer " not in shown, shown


def test_prune_shows_its_step_on_a_terminal_and_nothing_with_quiet(registry, cache_dir, tmp_path):
    _image(registry)
    code, _, shown = _on_terminal("prune", "-f")
    assert code == 0, shown
    assert "\x1b[" in shown and "pruning" in shown, shown
    code, _, shown = _on_terminal("prune", "-f", "-q")
    assert code == 0, shown
    assert "\x1b" not in shown and "pruning" not in shown, shown


def test_mount_wait_index_shows_the_layers_being_indexed(registry, cache_dir, tmp_path):
    ref = _image(registry)
    mp = tmp_path / "mp"
    mp.mkdir()
    code, _, shown = _on_terminal("mount", "--wait-index", "--insecure-registry",
                                  ref.partition("/")[0], ref, str(mp))
    try:
        assert code == 0, shown
        assert "layer " in shown and "indexing" in shown, shown
        assert sorted(os.listdir(mp)) == ["d0", "d1"]
    finally:
        subprocess.run([sys.executable, "-m", "lazyfs", "umount", str(mp)], cwd=ROOT, check=False)


def test_a_quick_command_does_not_import_rich(cache_dir):
    code = ("import sys; from lazyfs.cli.main import main; main(['images']); "
            "assert 'rich' not in sys.modules, 'rich imported'")
    master, slave = pty.openpty()
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, stderr=slave,
                          stdout=subprocess.DEVNULL, timeout=60)
    os.close(slave)
    os.close(master)
    assert done.returncode == 0

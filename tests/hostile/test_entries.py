"""Hostile tar entries end to end: pushed to the real registry as gzip layers,
looked at with the CLI the way a user would (``ls``, ``cat``, ``stat``,
``export``, ``inspect``).

For every case: the process ends within the timeout, prints no traceback and
at most one ``lazyfs: ...`` line; refused images exit with the error class's
code; served images give exactly the bytes the layer holds; nothing is read
from or written to the host outside the export directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.hostile import corpus as C
from tests.hostile.conftest import SECRET, one_error_line, push_case

CASES = {c.name: c for c in C.path_cases("/h") + C.symlink_cases("/h") + C.header_cases()}


@pytest.fixture(scope="module")
def pushed(registry, host):
    """name -> (case as built for the real host directory, reference)."""
    out = {}
    for case in C.path_cases(str(host.dir)) + C.symlink_cases(str(host.dir)) + C.header_cases():
        out[case.name] = (case, push_case(registry, case.name, [C.gzip_bytes(t) for t in case.tars]))
    return out


FAST = {"dotdot", "hardlink-through-symlink", "entry-below-a-loop", "bad-checksum",
        "size-negative-base256", "zero-block-in-middle", "symlink-dir-later-layer",
        "absolute-name", "symlink-to-host-file", "symlink-loop", "hardlink-to-symlink-to-host"}
"""Run by default; the rest of the corpus is marked slow (a CLI run costs a
second or two, and the parser-level twins of these cases are unit tests)."""


def cases(expect: str, format_error: bool | None = None) -> list:
    return [pytest.param(n, marks=() if n in FAST else pytest.mark.slow)
            for n, c in CASES.items() if c.expect == expect
            and (format_error is None or (c.exit_code == C.EXIT_FORMAT) == format_error)]


REFUSED = cases("refuse", True)
SERVED = cases("serve")
UNREADABLE = cases("refuse", False)


@pytest.mark.parametrize("name", REFUSED)
def test_refused_images_fail_with_one_line(name, pushed, cli, tmp_path, host):
    case, ref = pushed[name]
    p = cli("ls", "-R", ref, "/")
    assert p.returncode == case.exit_code, p.stderr
    assert case.message in one_error_line(p)


@pytest.mark.parametrize("name", ["dotdot", "hardlink-through-symlink", "bad-checksum"])
def test_refused_export_writes_nothing(name, pushed, cli, tmp_path, host):
    case, ref = pushed[name]
    p = cli("export", ref, str(tmp_path / "out"))
    assert p.returncode == case.exit_code
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert host.untouched()


@pytest.mark.parametrize("name", SERVED)
def test_served_images_give_the_layer_bytes(name, pushed, cli, host):
    case, ref = pushed[name]
    if case.files:
        p = cli("cat", ref, *case.files)
        assert (p.returncode, p.stdout) == (0, b"".join(case.files.values())), p.stderr
    if case.absent:
        listing = cli("find", ref, "/").stdout.decode().splitlines()
        assert listing and not set(case.absent) & set(listing)
    assert host.untouched()


@pytest.mark.parametrize("name", SERVED)
def test_export_stays_inside_its_directory(name, pushed, cli, tmp_path, host):
    case, ref = pushed[name]
    out = tmp_path / "out"
    p = cli("export", "-q", ref, str(out))
    assert p.returncode == 0, p.stderr
    assert host.untouched()
    for path, data in case.files.items():
        inside = out / path.lstrip("/")
        real = os.path.realpath(inside)
        if real.startswith(str(out) + "/"):
            assert Path(real).read_bytes() == data
        else:
            # the path goes through a symlink that points outside: export
            # wrote the link, not through it; the image's file sits under out
            assert os.path.islink(out / path.lstrip("/").split("/")[0])
    secret = host.secret.stat()
    for dirpath, dirnames, filenames in os.walk(out):
        for n in filenames + dirnames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            assert (st.st_dev, st.st_ino) != (secret.st_dev, secret.st_ino), p
            if not os.path.islink(p):
                assert os.path.realpath(p).startswith(str(out) + "/")


@pytest.mark.parametrize("name", UNREADABLE)
def test_symlinks_out_of_the_image_are_not_followed_onto_the_host(name, pushed, cli, host):
    case, ref = pushed[name]
    assert cli("ls", "-R", ref, "/").returncode == 0
    p = cli("cat", ref, case.probe)
    assert p.returncode == case.exit_code
    assert case.message in one_error_line(p)
    assert SECRET not in p.stdout
    assert host.untouched()


def test_absolute_name_is_the_images_own_file_not_the_hosts(pushed, cli, host):
    _, ref = pushed["absolute-name"]
    p = cli("cat", ref, str(host.secret))
    assert p.stdout == b"image's own\n"


def test_inspect_of_a_refused_image_still_describes_it(pushed, cli):
    """inspect reads manifest and config only; the layers' lies do not matter."""
    _, ref = pushed["dotdot"]
    p = cli("inspect", ref)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)

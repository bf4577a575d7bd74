"""Scale: a directory of 100,000 entries, a path 200 directories deep, and
names at (and past) the length limits.

Decisions: all are served. Names longer than NAME_MAX (255 bytes) are
listed and readable (``ls``, ``cat``), but ``export`` to a real file system
cannot write them and says so in one line (exit 9) instead of failing half
way with a traceback.
"""

from __future__ import annotations

import os

import pytest

from tests.hostile import corpus as C
from tests.hostile.conftest import one_error_line, push_case
from tests.support.climount import cli_mount, lazyfs_env


@pytest.fixture(scope="module")
def deep(registry):
    return push_case(registry, "scale-deep", [C.gzip_bytes(C.deep_tar())])


@pytest.fixture(scope="module")
def long(registry):
    return push_case(registry, "scale-long-names", [C.gzip_bytes(C.long_names_tar())])


@pytest.fixture(scope="module")
def wide(registry):
    return push_case(registry, "scale-wide", [C.gzip_bytes(C.wide_tar())])


def test_deep_path_is_served_and_exported(deep, cli, tmp_path):
    path = "/" + C.deep_path()
    assert cli("cat", deep, path).stdout == b"bottom\n"
    assert cli("find", deep, "/", "-name", "bottom").stdout.decode().split() == [path]
    out = tmp_path / "out"
    assert cli("export", "-q", deep, str(out)).returncode == 0
    assert (out / C.deep_path()).read_bytes() == b"bottom\n"


def test_names_at_the_limits(long, cli):
    names = C.long_names()
    listing = cli("find", long, "/", "-type", "f").stdout.decode().split()
    assert sorted(listing) == sorted("/" + n for n in names)
    p = cli("cat", long, *("/" + n for n in names))
    assert p.stdout == b"".join(names.values())


def test_export_of_a_name_past_name_max_is_refused_in_one_line(long, cli, tmp_path):
    p = cli("export", "-q", long, str(tmp_path / "out"))
    assert p.returncode == C.EXIT_FORMAT
    assert "name too long" in one_error_line(p)


@pytest.mark.slow
def test_long_names_through_a_mount(long, tmp_path):
    """The kernel refuses names past NAME_MAX itself; the rest read back."""
    names = C.long_names()
    with cli_mount(long, tmp_path / "mnt", lazyfs_env(tmp_path)) as mnt:
        n255 = "n" * 255
        assert (mnt / n255).read_bytes() == names[n255]
        deep_one = next(n for n in names if n.endswith("/end"))
        fd = os.open(mnt, os.O_RDONLY)
        try:
            parts = deep_one.split("/")
            for part in parts[:-1]:
                nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = nfd
            rfd = os.open(parts[-1], os.O_RDONLY, dir_fd=fd)
            assert os.read(rfd, 100) == names[deep_one]
            os.close(rfd)
        finally:
            os.close(fd)


@pytest.mark.slow
def test_a_directory_of_100k_entries(wide, cli):
    names = cli("ls", wide, "/wide", timeout=180).stdout.split()
    assert len(names) == C.WIDE and names[0] == b"f000000" and names[-1] == b"f099999"
    assert cli("cat", wide, "/wide-last").stdout == b"last\n"


@pytest.mark.slow
def test_a_directory_of_100k_entries_through_a_mount(wide, tmp_path):
    with cli_mount(wide, tmp_path / "mnt", lazyfs_env(tmp_path)) as mnt:
        assert len(os.listdir(mnt / "wide")) == C.WIDE
        assert (mnt / "wide-last").read_bytes() == b"last\n"

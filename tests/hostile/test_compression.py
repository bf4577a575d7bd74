"""Compression lies end to end: a media type that does not match the bytes,
broken gzip and zstd streams, and a gzip bomb.

Every lie is refused with one line and exit code 9 (the blob's digest is
right: the registry cannot tell; only decompression can). The bomb is served
(it is a well-formed layer) but never held in memory: the CLI runs with its
address space capped at 1.5 GiB while the layer inflates to 2 GiB.
"""

from __future__ import annotations

import resource
import subprocess
import threading

import pytest
import zstandard

from lazyfs.testing.push import OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD
from tests.hostile import corpus as C
from tests.hostile.conftest import LAZYFS, one_error_line, push_case

AS_LIMIT = 1536 << 20

TAR = C.file("a", b"hello\n") + C.file("b", bytes(range(256)) * 400) + C.end()
GZ = C.gzip_bytes(TAR)
ZST = zstandard.ZstdCompressor().compress(TAR)

LIES = {
    "gzip-type-plain-tar": (TAR, OCI_LAYER_GZIP, "not gzip"),
    "gzip-type-zlib-stream": (C.raw_deflate_zlib(TAR), OCI_LAYER_GZIP, "not gzip"),
    "tar-type-gzip-bytes": (GZ, OCI_LAYER_TAR, ""),
    "zstd-type-gzip-bytes": (GZ, OCI_LAYER_ZSTD, "not zstd"),
    "gzip-bad-crc": (C.bad_crc_gzip(TAR), OCI_LAYER_GZIP, "CRC"),
    "gzip-bad-length": (GZ[:-4] + b"\x00\x00\x00\x01", OCI_LAYER_GZIP, "size"),
    "gzip-truncated": (GZ[:len(GZ) // 2], OCI_LAYER_GZIP, "gzip"),
    "gzip-trailing-garbage": (GZ + b"garbage!" * 10, OCI_LAYER_GZIP, "gzip"),
    "zstd-truncated": (ZST[:-10], OCI_LAYER_ZSTD, "truncated"),
    "zstd-trailing-garbage": (ZST + b"junkjunk", OCI_LAYER_ZSTD, "not zstd"),
}
FAST = {"gzip-type-plain-tar", "gzip-bad-crc", "zstd-truncated"}


@pytest.fixture(scope="module")
def lies(registry):
    return {name: push_case(registry, name, [blob], layer_media_type=mt,
                            diff_ids=[C.sha256(TAR)])
            for name, (blob, mt, _) in LIES.items()}


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in FAST else pytest.mark.slow)
                                  for n in LIES])
def test_compression_lies_are_refused(name, lies, cli):
    message = LIES[name][2]
    for args in (("ls", lies[name], "/"), ("cat", lies[name], "/a")):
        p = cli(*args)
        assert p.returncode == C.EXIT_FORMAT, p.stderr
        assert message in one_error_line(p)
        assert p.stdout == b""


def test_the_honest_twins_are_served(registry, cli):
    """The same tar, honestly labelled, reads back: the lies above are
    refused for the lie, not for the content."""
    for name, blob, mt in (("honest-gzip", GZ, OCI_LAYER_GZIP), ("honest-zstd", ZST, OCI_LAYER_ZSTD),
                           ("honest-tar", TAR, OCI_LAYER_TAR)):
        ref = push_case(registry, name, [blob], layer_media_type=mt)
        p = cli("cat", ref, "/a", "/b")
        assert p.stdout == b"hello\n" + bytes(range(256)) * 400, p.stderr


def cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


@pytest.fixture(scope="module")
def bomb(registry):
    blob, after, diff_id = C.bomb_gzip(2)
    assert len(blob) < 4 << 20
    return push_case(registry, "gzip-bomb", [blob], diff_ids=[diff_id]), after


def test_gzip_bomb_is_indexed_in_bounded_memory_and_time(bomb, cli):
    ref, after = bomb
    p = cli("ls", "-l", ref, "/", timeout=90, preexec=cap_memory)
    assert p.returncode == 0, p.stderr
    sizes = {line.split()[-1]: int(line.split()[4]) for line in p.stdout.decode().splitlines()[1:]}
    assert sizes == {"after": len(after), "zeros": 2 * C.GIB}
    p = cli("cat", ref, "/after", timeout=60, preexec=cap_memory)
    assert p.stdout == after


@pytest.mark.slow
def test_gzip_bomb_streams_through_cat_in_bounded_memory(bomb, cli, tmp_path):
    """All 2 GiB through ``cat`` into a pipe, with memory capped; each byte is
    checked as it arrives (not written to disk and read back)."""
    ref, _ = bomb
    with open(tmp_path / "stderr", "w+b") as err:
        p = subprocess.Popen([*LAZYFS, "cat", ref, "/zeros"], stdout=subprocess.PIPE, stderr=err,
                             env=cli.env, preexec_fn=cap_memory)
        watchdog = threading.Timer(300, p.kill)
        watchdog.start()
        try:
            size = 0
            while chunk := p.stdout.read(8 << 20):
                size += len(chunk)
                assert not chunk.strip(b"\0"), f"a byte other than zero near offset {size}"
        finally:
            watchdog.cancel()
            p.stdout.close()
            returncode = p.wait()
        err.seek(0)
        assert returncode == 0, err.read()
    assert size == 2 * C.GIB

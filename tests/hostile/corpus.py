"""Hostile layers and images, written byte by byte.

Every case is a tar stream made with ``tests.support.tarbytes`` (never
``tarfile``, which refuses to write most of these and misreads others) or a
blob / manifest doctored after the fact. Each case carries the behaviour we
chose for it: ``refuse`` (one ``lazyfs: ...`` line, the exit code of the
error class) or ``serve`` (the tree is well defined and shown).

What Python's ``tarfile`` (3.11) does with the same bytes, and why our parser
must not copy it (checked on the cases below):

* a bad checksum, a header truncated mid-block or a zero block followed by
  more headers: ``tarfile.open`` stops at the broken header *without an
  error* and lists the members before it, so an image could hide the rest
  of a layer (a whiteout, say) from one reader and not from another;
* a negative base-256 size: ``tarfile`` computes a next-header offset before
  the current one and never returns (``size-negative-base256`` hangs it);
* sizes of 10^15 (base-256 or PAX) or 64 GiB (octal): ``tarfile`` believes
  them and fails only when it runs out of data;
* a GNU sparse entry (type ``S``): ``tarfile`` lists it as a member and
  would expand its map, so a few bytes can declare gigabytes of zeros.

lazyfs's ``tarheader`` refuses every one of these with ``LayerFormatError``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from dataclasses import dataclass, field

from tests.support import tarbytes as tb

EXIT_NOT_FOUND = 3
EXIT_FORMAT = 9
EXIT_DIGEST = 6
EXIT_REGISTRY = 8

GIB = 1 << 30


@dataclass(frozen=True)
class Case:
    """One hostile image: its layers as tar streams, and what lazyfs does."""

    name: str
    tars: tuple[bytes, ...]
    expect: str
    """``refuse`` or ``serve``."""
    message: str = ""
    """A fragment the one error line must hold (refusals only)."""
    exit_code: int = EXIT_FORMAT
    files: dict[str, bytes] = field(default_factory=dict)
    """Paths ``cat`` must return exactly (``serve`` only)."""
    absent: tuple[str, ...] = ()
    """Paths that must not exist in the served tree."""
    probe: str = ""
    """The path ``cat`` is refused on, when the image itself is served."""


def end() -> bytes:
    return tb.end()


def file(name: str | bytes, data: bytes, **kw) -> bytes:
    return tb.member(name, data, **kw)


def dir_(name: str) -> bytes:
    return tb.member(name, type=b"5", mode=0o755)


def symlink(name: str, target: str) -> bytes:
    return tb.member(name, type=b"2", linkname=target, mode=0o777)


def hardlink(name: str, target: str) -> bytes:
    return tb.member(name, type=b"1", linkname=target)


def long_path(path: str, data: bytes) -> bytes:
    """A file whose name only fits in a PAX ``path`` record."""
    return tb.pax({"path": path}) + tb.member("placeholder", data)


# -- path escapes ----------------------------------------------------------------


def path_cases(host: str) -> list[Case]:
    """``host`` is an absolute directory on the test machine holding a file
    ``secret``; no case may read it or write next to it."""
    ok = file("ok", b"fine\n")
    return [
        Case("dotdot", (ok + file("../escape", b"x") + end(),), "refuse", "escapes the image root"),
        Case("inner-dotdot", (ok + file("a/../../escape", b"x") + end(),), "refuse",
             "escapes the image root"),
        Case("pax-dotdot", (ok + long_path("x/" + "../" * 40 + "escape", b"x") + end(),),
             "refuse", "escapes the image root"),
        Case("absolute-name", (file(f"{host}/secret", b"image's own\n") + end(),), "serve",
             files={f"{host}/secret": b"image's own\n"}),
        Case("dotdot-inside", (file("a/b/../c", b"c\n") + end(),), "serve",
             files={"/a/c": b"c\n"}, absent=("/a/b",)),
        Case("whiteout-dotdot", (ok + file(".wh...", b"") + end(),), "refuse", "names no file"),
        Case("whiteout-dot", (ok + file("a/.wh..", b"") + end(),), "refuse", "names no file"),
        Case("whiteout-escapes", (ok + file("../.wh.ok", b"") + end(),), "refuse",
             "escapes the image root"),
        Case("whiteout-through-symlink",
             (file("keep/x", b"kept\n") + end(),
              symlink("up", "/") + file("up/keep/.wh.x", b"") + end()),
             "serve", absent=("/keep/x",)),
        Case("hardlink-dotdot", (ok + hardlink("h", "../../../etc/passwd") + end(),), "refuse",
             "escapes the image root"),
        Case("hardlink-host-absolute", (ok + hardlink("h", f"{host}/secret") + end(),), "refuse",
             "not in the image"),
        Case("hardlink-through-symlink",
             (ok + symlink("lnk", host) + hardlink("h", "lnk/secret") + end(),), "refuse",
             "not in the image"),
        Case("hardlink-through-symlink-inside",
             (file("real/f", b"inside\n") + symlink("lnk", "/real") + hardlink("h", "lnk/f")
              + end(),), "serve", files={"/h": b"inside\n", "/real/f": b"inside\n"}),
        Case("nul-in-pax-name", (ok + long_path("a\0b", b"x") + end(),), "refuse",
             "NUL byte"),
        Case("empty-name", (ok + file("", b"x") + end(),), "refuse", "empty name"),
        Case("file-as-root", (file("./", b"", type=b"0") + end(),), "refuse",
             "would replace the root"),
    ]


# -- symlink tricks --------------------------------------------------------------


def symlink_cases(host: str) -> list[Case]:
    rel_up = "../" * 12 + host.lstrip("/")
    return [
        Case("symlink-dir-same-layer",
             (symlink("evil", host) + file("evil/planted", b"planted\n") + end(),), "serve",
             files={"/evil/planted": b"planted\n", f"{host}/planted": b"planted\n"}),
        Case("symlink-dir-later-layer",
             (symlink("evil", rel_up) + end(), file("evil/planted", b"planted\n") + end()),
             "serve", files={"/evil/planted": b"planted\n", f"{host}/planted": b"planted\n"}),
        Case("symlink-to-host-file", (symlink("pw", f"{host}/secret") + end(),), "refuse",
             "no such file", EXIT_NOT_FOUND, probe="/pw"),
        Case("relative-symlink-to-host-file", (symlink("pw", rel_up + "/secret") + end(),),
             "refuse", "no such file", EXIT_NOT_FOUND, probe="/pw"),
        Case("hardlink-to-symlink-to-host", (symlink("s", f"{host}/secret") + hardlink("h", "s")
                                             + end(),), "serve"),
        Case("symlink-loop", (symlink("a", "b") + symlink("b", "a") + file("f", b"f\n") + end(),),
             "refuse", "too many levels", EXIT_NOT_FOUND, probe="/a"),
        Case("self-loop", (symlink("s", "s") + end(),), "refuse", "too many levels",
             EXIT_NOT_FOUND, probe="/s/x"),
        Case("entry-below-a-loop", (symlink("a", "b") + symlink("b", "a") + file("a/f", b"x")
                                    + end(),), "refuse", "too many levels"),
    ]


# -- absurd headers --------------------------------------------------------------


def header_cases() -> list[Case]:
    ok = file("ok", b"fine\n")
    gnu = {"magic": tb.GNU}
    return [
        Case("size-64g-octal", (ok + tb.header("huge", size=b"777777777777") + b"x" * 512 + end(),),
             "refuse", "truncated"),
        Case("size-1e15-base256", (ok + tb.header("huge", size=tb.base256(10**15, 12), **gnu)
                                   + end(),), "refuse", "truncated"),
        Case("size-negative-base256", (ok + tb.header("neg", size=tb.base256(-512, 12), **gnu)
                                       + ok + end(),), "refuse", "impossible size"),
        Case("size-2^87-base256", (ok + tb.header("big", size=tb.base256(2**87 - 1, 12), **gnu)
                                   + end(),), "refuse", "impossible size"),
        Case("size-1e15-pax", (ok + tb.pax({"size": str(10**15)}) + tb.header("huge") + end(),),
             "refuse", "truncated"),
        Case("size-negative-pax", (ok + tb.pax({"size": "-1"}) + tb.header("neg") + end(),),
             "refuse", "bad PAX size"),
        Case("bad-checksum", (ok + file("bad", b"x", checksum=1) + end(),), "refuse",
             "bad header checksum"),
        Case("truncated-header", (ok + file("cut", b"x")[:300],), "refuse", "truncated"),
        Case("truncated-content", (ok + file("cut", b"x" * 2000)[:1200],), "refuse",
             "truncated"),
        Case("zero-block-in-middle", (ok + bytes(512) + file("hidden", b"x") + end(),),
             "refuse", "lone zero block"),
        Case("after-end-of-archive", (ok + end() + file("hidden", b"x") + end(),), "serve",
             files={"/ok": b"fine\n"}, absent=("/hidden",)),
        Case("nul-in-ustar-name", (file(b"vis\0ible", b"v\n") + end(),), "serve",
             files={"/vis": b"v\n"}, absent=("/visible",)),
        Case("gnu-sparse", (ok + file("sp", b"", type=b"S") + end(),), "refuse", "sparse"),
        Case("pax-sparse", (ok + tb.pax({"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                                         "GNU.sparse.realsize": str(8 * GIB)})
                            + file("sp", b"") + end(),), "refuse", "sparse"),
        Case("unknown-type", (ok + file("v", b"", type=b"V") + end(),), "refuse",
             "unsupported entry type"),
        Case("huge-pax-record", (ok + tb.header("PaxHeaders/x", type=b"x", size=1 << 32)
                                 + end(),), "refuse", "too large"),
    ]


# -- scale -----------------------------------------------------------------------

WIDE = 100_000
DEEP = 200


def wide_tar(n: int = WIDE) -> bytes:
    """One directory of ``n`` empty files. The headers differ only in six
    name digits, so each is the first one with those digits and its checksum
    patched: a hundred thousand ``tb.header`` calls would take seconds."""
    first = tb.header("wide/f000000", mtime=0)
    base = sum(first[:148]) + sum(first[156:]) + 8 * ord(" ") - sum(b"000000")
    out = bytearray(first * n)
    for i in range(n):
        digits = b"%06d" % i
        at = i * tb.BLOCK
        out[at + 6:at + 12] = digits
        out[at + 148:at + 156] = b"%06o\0 " % (base + sum(digits))
    return bytes(dir_("wide") + out + file("wide-last", b"last\n") + end())


def deep_path(levels: int = DEEP) -> str:
    return "/".join(f"d{i}" for i in range(levels)) + "/bottom"


def deep_tar() -> bytes:
    return long_path(deep_path(), b"bottom\n") + end()


def long_names() -> dict[str, bytes]:
    """Names at NAME_MAX, a path near PATH_MAX, and a name over NAME_MAX."""
    n255 = "n" * 255
    longpath = "/".join(["p" * 250] * 16)[:4000] + "/end"
    return {n255: b"255\n", longpath: b"4000\n", "o" * 300: b"300\n"}


def long_names_tar() -> bytes:
    return b"".join(long_path(k, v) for k, v in long_names().items()) + end()


# -- compression lies ------------------------------------------------------------


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def bad_crc_gzip(data: bytes) -> bytes:
    blob = bytearray(gzip_bytes(data))
    blob[-8] ^= 0xFF
    return bytes(blob)


def bomb_gzip(gib: int = 2) -> tuple[bytes, bytes, str]:
    """A gzip layer of a few MB holding a file of ``gib`` GiB of zeros,
    followed by a small file; built from repeated identical gzip members so
    making it costs one compression of 8 MiB. Returns (blob, small file,
    diff_id), the diff_id hashed without ever holding the tar."""
    piece = 8 << 20
    zeros = gzip.compress(bytes(piece), compresslevel=9, mtime=0)
    after = b"after the bomb\n"
    head_tar = tb.header("zeros", size=gib * GIB)
    tail_tar = file("after", after) + end()
    diff = hashlib.sha256(head_tar)
    block = bytes(piece)
    for _ in range(gib * GIB // piece):
        diff.update(block)
    diff.update(tail_tar)
    blob = (gzip.compress(head_tar, mtime=0) + zeros * (gib * GIB // piece)
            + gzip.compress(tail_tar, mtime=0))
    return blob, after, "sha256:" + diff.hexdigest()


def raw_deflate_zlib(data: bytes) -> bytes:
    """zlib framing instead of gzip: a stream that is compressed but not gzip."""
    return zlib.compress(data)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest_doc(config: bytes, layers: list[dict]) -> dict:
    return {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(config), "size": len(config)},
        "layers": layers,
    }


def config_doc(diff_ids: list[str]) -> bytes:
    return json.dumps({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {},
    }, sort_keys=True).encode()

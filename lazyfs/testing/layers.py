"""Layers in every format lazyfs reads, built from a dict of path -> content.

A layer is stated as ``{path: content}``: ``bytes`` or ``str`` is a file, a
path ending in ``/`` (content ignored) a directory, ``("symlink", target)``
and ``("hardlink", target)`` links, ``File``/``Dir``/``Device``/... entries
when the mode, owner, time or xattrs matter, and ``WHITEOUT`` / ``OPAQUE``
the overlay markers (``.wh.<name>``, ``<dir>/.wh..wh..opq``). The same dict
gives a tar, a gzip or a zstd layer (one frame or many) here, an eStargz or
a zstd:chunked one in ``lazyfs.testing.toc``: each a ``Layer`` holding the
blob, its media type, annotations and diff_id (``build_layer`` picks by name).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass, field

import zstandard

OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MTIME = 1_700_000_000


@dataclass(frozen=True)
class File:
    data: bytes | str = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = MTIME
    xattrs: dict[str, bytes] = field(default_factory=dict)

    @property
    def content(self) -> bytes:
        return self.data.encode() if isinstance(self.data, str) else bytes(self.data)


@dataclass(frozen=True)
class Dir:
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    mtime: int = MTIME
    xattrs: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Symlink:
    target: str
    mtime: int = MTIME


@dataclass(frozen=True)
class Hardlink:
    target: str


@dataclass(frozen=True)
class Device:
    kind: str
    """``"char"``, ``"block"`` or ``"fifo"``."""
    major: int = 0
    minor: int = 0
    mode: int = 0o644


WHITEOUT = object()
"""As content: the path is deleted from the layers below (``.wh.<name>``)."""
OPAQUE = object()
"""As content: the directory hides everything below it (``.wh..wh..opq``)."""

Content = bytes | str | tuple | File | Dir | Symlink | Hardlink | Device | object
Entries = dict[str, Content]


@dataclass(frozen=True)
class Layer:
    blob: bytes
    media_type: str
    diff_id: str
    annotations: dict[str, str] = field(default_factory=dict)
    format: str = ""

    @property
    def digest(self) -> str:
        return sha256(self.blob)

    @property
    def size(self) -> int:
        return len(self.blob)

    def descriptor(self) -> dict:
        d = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        return d


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_members(entries: Entries) -> list[tuple[tarfile.TarInfo, bytes]]:
    """The tar headers and file contents ``entries`` stand for, in order."""
    out = []
    for path, content in entries.items():
        out += _members(path, content)
    return out


def _members(path: str, content: Content) -> list[tuple[tarfile.TarInfo, bytes]]:
    name = path.strip("/")
    head, _, base = name.rpartition("/")
    prefix = f"{head}/" if head else ""
    if content is WHITEOUT:
        return _members(f"{prefix}.wh.{base}", b"")
    if content is OPAQUE:
        return _members(name + "/", Dir()) + _members(f"{name}/.wh..wh..opq", b"")
    if path.endswith("/") and not isinstance(content, Dir):
        content = Dir()
    if isinstance(content, tuple):
        content = Symlink(content[1]) if content[0] == "symlink" else Hardlink(content[1])
    if isinstance(content, (bytes, bytearray, str)):
        content = File(content)
    ti = tarfile.TarInfo(name)
    ti.mtime = getattr(content, "mtime", MTIME)
    ti.uname = ti.gname = "root"
    data = b""
    if isinstance(content, File):
        data = content.content
        ti.size, ti.mode = len(data), content.mode
    elif isinstance(content, Dir):
        ti.type, ti.mode = tarfile.DIRTYPE, content.mode
    elif isinstance(content, Symlink):
        ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, content.target, 0o777
    elif isinstance(content, Hardlink):
        ti.type, ti.linkname, ti.mode = tarfile.LNKTYPE, content.target.strip("/"), 0o644
    elif isinstance(content, Device):
        ti.type = {"char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
                   "fifo": tarfile.FIFOTYPE}[content.kind]
        ti.mode, ti.devmajor, ti.devminor = content.mode, content.major, content.minor
    else:
        raise TypeError(f"{path}: cannot make a tar entry of {content!r}")
    ti.uid, ti.gid = getattr(content, "uid", 0), getattr(content, "gid", 0)
    xattrs = getattr(content, "xattrs", {})
    if xattrs:
        ti.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                          for k, v in xattrs.items()}
    return [(ti, data)]


def make_tar(entries: Entries) -> bytes:
    """A PAX tar of ``entries``, ending with the two zero blocks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                      encoding="utf-8", errors="surrogateescape") as tf:
        for ti, data in tar_members(entries):
            tf.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    return buf.getvalue()


def tar_layer(entries: Entries) -> Layer:
    tar = make_tar(entries)
    return Layer(tar, OCI_LAYER_TAR, sha256(tar), format="tar")


def gzip_layer(entries: Entries, media_type: str = OCI_LAYER_GZIP) -> Layer:
    tar = make_tar(entries)
    return Layer(gzip.compress(tar, compresslevel=6, mtime=0), media_type, sha256(tar),
                 format="gzip")


def zstd_layer(entries: Entries, frame_size: int | None = None) -> Layer:
    """One zstd frame (what most tools write: not seekable), or a frame per
    ``frame_size`` bytes of tar (seekable at each frame)."""
    tar = make_tar(entries)
    cctx = zstandard.ZstdCompressor(level=3)
    step = frame_size or max(len(tar), 1)
    blob = b"".join(cctx.compress(tar[i:i + step]) for i in range(0, len(tar), step))
    return Layer(blob, OCI_LAYER_ZSTD, sha256(tar), format="zstd")


def uncompressed(blob: bytes) -> bytes:
    """The tar stream of a tar, gzip (any members) or zstd (any frames) blob."""
    if blob[:2] == b"\x1f\x8b":
        return gzip.decompress(blob)
    if blob[:4] == b"\x28\xb5\x2f\xfd":
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob),
                                                            read_across_frames=True)
        return reader.read()
    return blob

"""Layer tars made from a few named files, and their gzip blobs, for tests
that push them with ``lazyfs.testing.push``."""

from __future__ import annotations

import gzip
import io
import tarfile


def make_tar(files: dict[str, bytes | str | tuple]) -> bytes:
    """A tar from ``{name: content}``; a name ending in '/' is a directory,
    a tuple ``("symlink", target)`` / ``("hardlink", target)`` a link."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, content in files.items():
            ti = tarfile.TarInfo(name.rstrip("/"))
            ti.mtime = 1_700_000_000
            if name.endswith("/"):
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            elif isinstance(content, tuple):
                ti.type = tarfile.SYMTYPE if content[0] == "symlink" else tarfile.LNKTYPE
                ti.linkname = content[1]
                tf.addfile(ti)
            else:
                data = content.encode() if isinstance(content, str) else content
                ti.size, ti.mode = len(data), 0o644
                tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)

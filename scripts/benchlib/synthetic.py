"""Synthetic images the Debian ones cannot stand in for: many files, one big file.

Layer blobs are made once and kept under ``.bench/cache`` (they are the
same bytes every run: seeded data, fixed times), then pushed with the test
harness's ``push_image``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path

from lazyfs.testing.push import OCI_LAYER_GZIP, OCI_LAYER_TAR, push_image

from .common import BENCH_DIR, log

MTIME = 1_700_000_000
PER_DIR = 1000


@dataclass(frozen=True)
class Synthetic:
    ref: str
    blob_bytes: int
    entries: int = 0


def many_files_tar(files: int) -> bytes:
    """``files`` small files in directories of a thousand, plus /etc/os-release."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        _add(tf, "etc/", None)
        _add(tf, "etc/os-release", b"ID=bench\n")
        for d in range(0, files, PER_DIR):
            _add(tf, f"d{d // PER_DIR:03d}/", None)
            for i in range(d, min(d + PER_DIR, files)):
                _add(tf, f"d{d // PER_DIR:03d}/f{i:06d}", f"{i}\n".encode())
    return buf.getvalue()


def big_file_tar(size: int) -> bytes:
    """One file of ``size`` bytes that compresses to about 80%: seeded random
    blocks with some text between them, like a binary with data sections."""
    rnd = random.Random(20240101)
    block = 1 << 16
    filler = b"lazyfs benchmark data " * (block // 4 // 22 + 1)
    pieces, n = [], 0
    while n < size:
        piece = rnd.randbytes(block * 3 // 4) + filler[:block // 4]
        pieces.append(piece)
        n += len(piece)
    data = b"".join(pieces)[:size]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        _add(tf, "etc/", None)
        _add(tf, "etc/os-release", b"ID=bench\n")
        _add(tf, "data/", None)
        _add(tf, "data/big.bin", data)
    return buf.getvalue()


def _add(tf: tarfile.TarFile, name: str, data: bytes | None) -> None:
    ti = tarfile.TarInfo(name.rstrip("/"))
    ti.mtime = MTIME
    if data is None:
        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
        tf.addfile(ti)
    else:
        ti.size, ti.mode = len(data), 0o644
        tf.addfile(ti, io.BytesIO(data))


def cached_blobs(name: str, make_tar) -> tuple[bytes, bytes]:
    """(tar, tar.gz) for ``name``, built on first use."""
    d = BENCH_DIR / "cache"
    d.mkdir(parents=True, exist_ok=True)
    tar_path, gz_path = d / f"{name}.tar", d / f"{name}.tar.gz"
    if not gz_path.exists():
        log(f"building synthetic layer {name}")
        tar = make_tar()
        _write(tar_path, tar)
        _write(gz_path, gzip.compress(tar, compresslevel=1, mtime=0))
    return tar_path.read_bytes(), gz_path.read_bytes()


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def push_synthetic(registry, repo: str, name: str, make_tar, fmts=("gzip",),
                   entries: int = 0) -> dict[str, Synthetic]:
    tar, gz = cached_blobs(name, make_tar)
    out = {}
    with registry.client() as client:
        for fmt in fmts:
            blob, media = (gz, OCI_LAYER_GZIP) if fmt == "gzip" else (tar, OCI_LAYER_TAR)
            push_image(client, repo, fmt, [blob], layer_media_type=media,
                       diff_ids=[_diff_id(tar)])
            out[fmt] = Synthetic(f"{registry.host}/{repo}:{fmt}", len(blob), entries)
    return out


def _diff_id(tar: bytes) -> str:
    return "sha256:" + hashlib.sha256(tar).hexdigest()



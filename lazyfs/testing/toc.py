"""Layers that carry their own table of contents: eStargz and zstd:chunked.

Both are written the way their producers write them, so that lazyfs reads
them as it reads real ones. eStargz as stargz-snapshotter's writer: a tar
header shares a gzip member with the end of the previous file, each chunk of
a file opens a member of its own, the TOC (``stargz.index.json``) is the last
tar entry in its own member, and a 51-byte footer points at it. zstd:chunked
as containers/storage's compressor: headers in one frame, each chunk of a
payload in a frame of its own (runs of zeros as ``chunkType: zeros``), the
compressed TOC in a skippable frame and a 64-byte footer in another.
"""

from __future__ import annotations

import base64
import datetime
import io
import json
import tarfile
import zlib

import zstandard

from ..formats.estargz import footer_bytes
from .layers import (OCI_LAYER_GZIP, OCI_LAYER_ZSTD, Entries, File, Layer, make_tar, sha256,
                     uncompressed)

ESTARGZ_TOC_DIGEST = "containerd.io/snapshot/stargz/toc.digest"
ESTARGZ_UNCOMPRESSED_SIZE = "io.containers.estargz.uncompressed-size"
ZSTD_CHUNKED_CHECKSUM = "io.github.containers.zstd-chunked.manifest-checksum"
ZSTD_CHUNKED_POSITION = "io.github.containers.zstd-chunked.manifest-position"
TOC_NAME = "stargz.index.json"
PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
HOLE_MIN = 1 << 10
"""Zero runs at least this long become holes in zstd:chunked, as in containers/storage."""

_TYPES = {tarfile.REGTYPE: "reg", tarfile.AREGTYPE: "reg", tarfile.LNKTYPE: "hardlink",
          tarfile.SYMTYPE: "symlink", tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block",
          tarfile.DIRTYPE: "dir", tarfile.FIFOTYPE: "fifo"}


def _walk(tar: bytes):
    """``(header bytes, info, payload, padding)`` of each member, without the
    end-of-archive blocks."""
    pos = 0
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:", encoding="utf-8",
                      errors="surrogateescape") as tf:
        for ti in tf:
            size = ti.size if ti.isreg() else 0
            padded = -(-size // 512) * 512
            yield (tar[pos:ti.offset_data], ti, tar[ti.offset_data:ti.offset_data + size],
                   tar[ti.offset_data + size:ti.offset_data + padded])
            pos = ti.offset_data + padded


def _metadata(ti: tarfile.TarInfo) -> dict:
    """A TOC entry's fields, named and left out when zero as both producers do."""
    m = {"name": ti.name + "/" if ti.isdir() and ti.name != "." else ti.name,
         "type": _TYPES[ti.type]}
    if ti.isreg() and ti.size:
        m["size"] = ti.size
    if ti.mtime:
        m["modtime"] = datetime.datetime.fromtimestamp(
            ti.mtime, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    for key, value in (("linkName", ti.linkname), ("mode", ti.mode), ("uid", ti.uid),
                       ("gid", ti.gid)):
        if value:
            m[key] = value
    if ti.isdev():
        m.update({k: v for k, v in (("devMajor", ti.devmajor), ("devMinor", ti.devminor)) if v})
    xattrs = {k[len("SCHILY.xattr."):]:
              base64.b64encode(v.encode("utf-8", "surrogateescape")).decode()
              for k, v in ti.pax_headers.items() if k.startswith("SCHILY.xattr.")}
    if xattrs:
        m["xattrs"] = xattrs
    return m


# --- eStargz ------------------------------------------------------------------------

def estargz_layer(entries: Entries, chunk_size: int = 64 << 10,
                  prefetch: list[str] | None = None) -> Layer:
    """An eStargz layer with files cut into ``chunk_size`` chunks. With
    ``prefetch`` (paths put first) a ``.prefetch.landmark`` follows those
    files; with ``prefetch=[]`` a ``.no.prefetch.landmark`` comes first."""
    out = bytearray()
    pending = bytearray()

    def flush() -> None:
        if pending:
            out.extend(_gzip(bytes(pending)))
            pending.clear()

    toc: list[dict] = []
    for header, ti, payload, padding in _walk(make_tar(_landmarked(entries, prefetch))):
        pending += header
        m = _metadata(ti)
        if not payload:
            toc.append(m)
        written = 0
        while written < len(payload):
            flush()
            chunk = payload[written:written + chunk_size]
            entry = m if written == 0 else {"name": m["name"], "type": "chunk"}
            entry["offset"] = len(out)
            if written:
                entry["chunkOffset"] = written
            if len(payload) - written > chunk_size:
                entry["chunkSize"] = chunk_size
            entry["chunkDigest"] = sha256(chunk)
            toc.append(entry)
            pending += chunk
            written += len(chunk)
        if payload:
            m["digest"] = sha256(payload)
        pending += padding
    flush()
    toc_json = json.dumps({"version": 1, "entries": toc}, indent="\t").encode()
    toc_offset = len(out)
    toc_tar = make_tar({TOC_NAME: File(toc_json, mtime=0)})
    out += _gzip(toc_tar) + footer_bytes(toc_offset)
    blob = bytes(out)
    tar = uncompressed(blob)
    annotations = {ESTARGZ_TOC_DIGEST: sha256(toc_json),
                   ESTARGZ_UNCOMPRESSED_SIZE: str(len(tar))}
    return Layer(blob, OCI_LAYER_GZIP, sha256(tar), annotations, "estargz")


def _landmarked(entries: Entries, prefetch: list[str] | None) -> Entries:
    if prefetch is None:
        return entries
    if not prefetch:
        return {NO_PREFETCH_LANDMARK: b"\x0f", **entries}
    first = {p: entries[p] for p in prefetch}
    rest = {p: c for p, c in entries.items() if p not in first}
    return {**first, PREFETCH_LANDMARK: b"\x0f", **rest}


def _gzip(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


# --- zstd:chunked -------------------------------------------------------------------

def zstd_chunked_layer(entries: Entries, chunk_size: int = 64 << 10,
                       position: bool = True) -> Layer:
    """A zstd:chunked layer; without ``position`` the layer carries only the
    checksum annotation and readers find the TOC through the footer."""
    cctx = zstandard.ZstdCompressor(level=3)
    out = io.BytesIO()
    pending = bytearray()

    def flush() -> int:
        if pending:
            out.write(cctx.compress(bytes(pending)))
            pending.clear()
        return out.tell()

    toc: list[dict] = []
    tar = make_tar(entries)
    consumed = 0
    for header, ti, payload, padding in _walk(tar):
        consumed += len(header) + len(payload) + len(padding)
        pending += header
        m = _metadata(ti)
        if payload:
            m["digest"] = sha256(payload)
            m["offset"] = flush()
            group = []
            for start, end, zeros in _chunks(payload, chunk_size):
                entry = m if start == 0 else {"type": "chunk", "name": m["name"],
                                              "chunkOffset": start}
                entry.update(offset=out.tell(), chunkSize=end - start,
                             chunkDigest=sha256(payload[start:end]))
                if zeros:
                    entry["chunkType"] = "zeros"
                out.write(cctx.compress(payload[start:end]))
                group.append(entry)
            m["endOffset"] = out.tell()
            toc += group
        else:
            toc.append(m)
        pending += padding
    pending += tar[consumed:]
    flush()
    toc_json = json.dumps({"version": 1, "entries": toc}, separators=(",", ":")).encode()
    toc_z = cctx.compress(toc_json)
    toc_at = out.tell() + 8
    out.write(_skippable(toc_z))
    footer = b"".join(v.to_bytes(8, "little") for v in (toc_at, len(toc_z), len(toc_json), 1,
                                                          0, 0, 0))
    out.write(_skippable(footer + b"GNUlInUx"))
    annotations = {ZSTD_CHUNKED_CHECKSUM: sha256(toc_z)}
    if position:
        annotations[ZSTD_CHUNKED_POSITION] = f"{toc_at}:{len(toc_z)}:{len(toc_json)}:1"
    blob = out.getvalue()
    return Layer(blob, OCI_LAYER_ZSTD, sha256(uncompressed(blob)), annotations, "zstd:chunked")


def _chunks(payload: bytes, size: int) -> list[tuple[int, int, bool]]:
    """``(start, end, zeros)``: runs of at least ``HOLE_MIN`` zeros on their
    own, the rest cut every ``size`` bytes."""
    out = []
    pos = 0
    while pos < len(payload):
        hole = payload.find(bytes(HOLE_MIN), pos)
        stop = len(payload) if hole < 0 else hole
        while pos < stop:
            end = min(stop, pos + size)
            out.append((pos, end, False))
            pos = end
        if hole >= 0:
            end = hole
            while end < len(payload) and payload[end] == 0:
                end += 1
            out.append((hole, end, True))
            pos = end
    return out


def _skippable(data: bytes) -> bytes:
    return b"\x50\x2a\x4d\x18" + len(data).to_bytes(4, "little") + data

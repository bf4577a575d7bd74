"""The layer builders of ``lazyfs.testing``, checked against ``tarfile`` and
against the structure each format promises (chunks, frames, TOC, footer),
so a test built on them reads what it thinks it built."""

from __future__ import annotations

import io
import json
import tarfile
from types import SimpleNamespace

import pytest

from lazyfs.blob import FileBlob
from lazyfs.formats import build_table, detect_format, open_reader, read_content
from lazyfs.formats.entry import EntryType
from lazyfs.formats.estargz import prioritized
from lazyfs.formats.toc import ZEROS, unpack_chunks
from lazyfs.formats.zstd import frames
from lazyfs.testing import (FORMATS, OPAQUE, WHITEOUT, Device, Dir, File, MemoryRegistry,
                            build_layer, image, index, make_tar, uncompressed)
from lazyfs.testing.layers import sha256

PAYLOAD = bytes(range(256)) * 300 + bytes(4096) + b"after the hole" * 100
ENTRIES = {
    "etc/": Dir(mode=0o750),
    "etc/hostname": "host\n",
    "usr/bin/tool": File(PAYLOAD, mode=0o755, uid=7, gid=8),
    "usr/bin/link": ("symlink", "tool"),
    "usr/bin/hard": ("hardlink", "usr/bin/tool"),
    "dev/null": Device("char", 1, 3, 0o666),
    "x": File("attrs", xattrs={"user.k": b"v\0w"}),
    "gone": WHITEOUT,
    "hidden": OPAQUE,
    "empty": b"",
}


def members(tar: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        return {ti.name: ti for ti in tf}


async def table_of(layer, tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(layer.blob)
    desc = SimpleNamespace(media_type=layer.media_type, annotations=layer.annotations,
                           digest=layer.digest, size=layer.size)
    blob = FileBlob(path, layer.digest)
    return await build_table(desc, blob), blob


def test_tar_holds_what_the_dict_says():
    got = members(make_tar(ENTRIES))
    assert sorted(got) == sorted(["etc", "etc/hostname", "usr/bin/tool", "usr/bin/link",
                                  "usr/bin/hard", "dev/null", "x", ".wh.gone", "hidden",
                                  "hidden/.wh..wh..opq", "empty"])
    assert got["etc"].isdir() and got["etc"].mode == 0o750
    tool = got["usr/bin/tool"]
    assert (tool.size, tool.mode, tool.uid, tool.gid) == (len(PAYLOAD), 0o755, 7, 8)
    assert got["usr/bin/link"].issym() and got["usr/bin/link"].linkname == "tool"
    assert got["usr/bin/hard"].islnk() and got["usr/bin/hard"].linkname == "usr/bin/tool"
    null = got["dev/null"]
    assert null.ischr() and (null.devmajor, null.devminor) == (1, 3)
    assert got["x"].pax_headers["SCHILY.xattr.user.k"] == "v\0w"


@pytest.mark.parametrize("fmt", FORMATS)
async def test_every_format_reads_back(tmp_path, fmt):
    layer = build_layer(fmt, ENTRIES)
    assert layer.format == fmt
    assert detect_format(layer.media_type, layer.annotations) == fmt
    assert layer.diff_id == sha256(uncompressed(layer.blob))
    want = members(make_tar(ENTRIES))
    assert set(members(uncompressed(layer.blob))) - {"stargz.index.json"} == set(want)
    table, blob = await table_of(layer, tmp_path)
    by_name = {e.name.strip("/"): e for e in table.entries}
    assert sorted(by_name) == sorted(want)
    reader = open_reader(table)
    tool = by_name["usr/bin/tool"]
    assert (tool.mode, tool.uid, tool.gid) == (0o755, 7, 8)
    assert await read_content(reader, blob, tool.data, 0, tool.size) == PAYLOAD
    assert by_name["x"].xattrs == {"user.k": b"v\0w"}
    assert by_name["dev/null"].type is EntryType.CHAR


async def test_estargz_chunks_and_landmark(tmp_path):
    layer = build_layer("estargz", ENTRIES, chunk_size=10_000, prefetch=["etc/hostname"])
    toc = json.loads(_estargz_toc(layer.blob))
    names = [e["name"] for e in toc["entries"] if e["type"] != "chunk"]
    assert names[:2] == ["etc/hostname", ".prefetch.landmark"]
    assert layer.annotations["containerd.io/snapshot/stargz/toc.digest"] == \
        sha256(_estargz_toc(layer.blob))
    table, _ = await table_of(layer, tmp_path)
    tool = next(e for e in table.entries if e.name == "usr/bin/tool")
    assert len(unpack_chunks(tool.data)) == -(-len(PAYLOAD) // 10_000)
    assert [e.name for e in prioritized(table)] == ["etc/hostname"]


async def test_zstd_chunked_holes_and_footer(tmp_path):
    layer = build_layer("zstd:chunked", ENTRIES, chunk_size=20_000, position=False)
    assert list(layer.annotations) == ["io.github.containers.zstd-chunked.manifest-checksum"]
    assert layer.blob.endswith(b"GNUlInUx")
    table, blob = await table_of(layer, tmp_path)
    tool = next(e for e in table.entries if e.name == "usr/bin/tool")
    chunks = [(c.offset, c.size, c.kind) for c in unpack_chunks(tool.data)]
    assert chunks == [(0, 20_000, 0), (20_000, 20_000, 0), (40_000, 20_000, 0),
                      (60_000, 16_800, 0), (76_800, 4096, ZEROS), (80_896, 1400, 0)]
    assert await read_content(open_reader(table), blob, tool.data, 76_000, 5_000) == \
        PAYLOAD[76_000:81_000]


@pytest.mark.parametrize("frame_size, count, lazy", [(None, 1, False), (8192, None, True)])
async def test_zstd_frames(tmp_path, frame_size, count, lazy):
    layer = build_layer("zstd", ENTRIES, frame_size=frame_size)
    n = len(list(frames(layer.blob, "test")))
    assert n == count if count else n == -(-len(make_tar(ENTRIES)) // 8192)
    table, _ = await table_of(layer, tmp_path)
    assert table.lazy is lazy


def test_unknown_format_and_content_are_refused():
    with pytest.raises(ValueError):
        build_layer("lz4", ENTRIES)
    with pytest.raises(TypeError):
        make_tar({"x": 42})


def test_manifest_and_index_assembly():
    layer = build_layer("gzip", {"a": "1"})
    built = image([layer], oci=False, platform={"os": "linux", "architecture": "arm",
                                                  "variant": "v7"})
    manifest = json.loads(built.manifest)
    config = json.loads(built.config)
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert manifest["config"]["digest"] == sha256(built.config)
    assert manifest["layers"] == [layer.descriptor()]
    assert config["rootfs"]["diff_ids"] == [layer.diff_id]
    assert (config["architecture"], config["variant"]) == ("arm", "v7")
    registry = MemoryRegistry()
    pushed = built.push(registry, "r", None)
    top = json.loads(index([pushed]).raw)
    assert top["manifests"][0]["platform"] == {"os": "linux", "architecture": "arm",
                                               "variant": "v7"}
    assert pushed.ref == f"registry.test/r@{built.digest}"


def _estargz_toc(blob: bytes) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(uncompressed(blob))) as tf:
        return tf.extractfile("stargz.index.json").read()

"""eStargz and zstd:chunked layers, checked against the golden samples from
the real producers (tests/data/PROVENANCE.md) with the fully decompressed
blob read by ``tarfile`` as the oracle."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import random
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import zstandard

from lazyfs.blob import FileBlob
from lazyfs.formats.entry import Entry, EntryType
from lazyfs.errors import CorruptData, DigestMismatch, LayerFormatError
from lazyfs.formats import build_table, detect_format, open_reader, read_content
from lazyfs.formats import estargz, zstdchunked
from lazyfs.formats import toc as tocfmt
from lazyfs.formats.estargz import footer_bytes
from lazyfs.formats.toc import parse_time, unpack_chunks
from lazyfs.testing.layers import File
from lazyfs.testing.toc import estargz_layer

DATA = Path(__file__).resolve().parent.parent / "data"
ESTARGZ = "estargz-ctr-remote"
ZC_CTR = "zstdchunked-ctr-remote"
ZC_SKOPEO = "zstdchunked-skopeo"
ZC_STORAGE = "zstdchunked-storage"
SAMPLES = [ESTARGZ, ZC_CTR, ZC_SKOPEO, ZC_STORAGE]
FORMAT_META = {"stargz.index.json", ".prefetch.landmark", ".no.prefetch.landmark"}


class CountingBlob(FileBlob):
    """A local blob that records every range asked of it."""

    def __init__(self, path, digest):
        super().__init__(path, digest)
        self.ranges: list[tuple[int, int]] = []

    async def read_range(self, start, end):
        self.ranges.append((start, end))
        return await super().read_range(start, end)


@dataclasses.dataclass
class Sample:
    name: str
    desc: SimpleNamespace
    path: Path

    @property
    def bytes(self) -> bytes:
        return self.path.read_bytes()

    def blob(self, path: Path | None = None) -> CountingBlob:
        return CountingBlob(path or self.path, self.desc.digest)

    def with_annotations(self, **changes) -> SimpleNamespace:
        ann = dict(self.desc.annotations)
        for k, v in changes.items():
            key = k.replace("__", ".").replace("_", "-")
            if v is None:
                ann.pop(key, None)
            else:
                ann[key] = v
        return SimpleNamespace(**{**vars(self.desc), "annotations": ann})


def load(name: str) -> Sample:
    layout = DATA / name
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(_blob_path(layout, index["manifests"][0]["digest"]).read_bytes())
    layer = manifest["layers"][0]
    desc = SimpleNamespace(media_type=layer["mediaType"], annotations=layer.get("annotations", {}),
                           digest=layer["digest"], size=layer["size"])
    return Sample(name, desc, _blob_path(layout, layer["digest"]))


def _blob_path(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":")[1]


def _norm(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    name = name.strip("/")
    return "" if name == "." else name


def oracle(sample: Sample) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    """Every tar member of the fully decompressed blob, by normalised name."""
    raw = sample.bytes
    if raw[:2] == b"\x1f\x8b":
        tar = gzip.decompress(raw)
    else:
        tar = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw), read_across_frames=True).read()
    out = {}
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        for ti in tf:
            data = tf.extractfile(ti).read() if ti.isreg() else b""
            out[_norm(ti.name)] = (ti, data)
    return out


_TAR_TYPES = {tarfile.REGTYPE: EntryType.FILE, tarfile.AREGTYPE: EntryType.FILE,
              tarfile.DIRTYPE: EntryType.DIR, tarfile.SYMTYPE: EntryType.SYMLINK,
              tarfile.LNKTYPE: EntryType.HARDLINK, tarfile.CHRTYPE: EntryType.CHAR,
              tarfile.BLKTYPE: EntryType.BLOCK, tarfile.FIFOTYPE: EntryType.FIFO}


def _by_name(entries: list[Entry]) -> dict[str, Entry]:
    return {_norm(e.name): e for e in entries}


async def _build(sample: Sample, desc=None, path=None):
    blob = sample.blob(path)
    table = await build_table(desc or sample.desc, blob)
    return table, blob


# --- the samples against the oracle ---------------------------------------------

@pytest.mark.parametrize("name", SAMPLES)
async def test_entries_and_contents_match_tar(name):
    sample = load(name)
    table, blob = await _build(sample)
    assert table.format == ("estargz" if name == ESTARGZ else "zstd:chunked")
    assert table.lazy
    want = {k: v for k, v in oracle(sample).items() if k not in FORMAT_META}
    got = _by_name(table.entries)
    assert len(got) == len(table.entries)
    assert sorted(got) == sorted(want)
    reader = open_reader(table)
    for name_, entry in got.items():
        ti, content = want[name_]
        assert entry.type == _TAR_TYPES[ti.type], name_
        assert entry.mode == ti.mode & 0o7777, name_
        assert (entry.uid, entry.gid) == (ti.uid, ti.gid), name_
        assert (entry.uname, entry.gname) == (ti.uname, ti.gname), name_
        assert entry.mtime_ns == int(ti.mtime) * 10**9, name_
        assert entry.linkname == ti.linkname, name_
        assert (entry.devmajor, entry.devminor) == ((ti.devmajor, ti.devminor) if ti.isdev() else (0, 0))
        xattrs = {k[len("SCHILY.xattr."):]: v.encode("utf-8", "surrogateescape")
                  for k, v in ti.pax_headers.items() if k.startswith("SCHILY.xattr.")}
        assert entry.xattrs == xattrs, name_
        if entry.type is EntryType.FILE:
            assert entry.size == ti.size == len(content), name_
            assert await read_content(reader, blob, entry.data, 0, entry.size) == content, name_
        else:
            assert entry.data == b""


async def test_sample_covers_what_it_should():
    """The samples hold what the tests above rely on, so they cannot pass vacuously."""
    es = _by_name((await _build(load(ESTARGZ)))[0].entries)
    assert len(unpack_chunks(es["usr/bin/big"].data)) == 6
    assert es["data/xattr-file"].xattrs == {"user.lazyfs.note": b"golden\x00bytes"}
    assert es["data/xattr-file"].mode == 0o4755
    assert es["etc/hostname"].type is EntryType.HARDLINK
    assert es["etc/hostname"].linkname == "data/hostname-hard"
    assert es["data/null"].type is EntryType.CHAR and (es["data/null"].devmajor, es["data/null"].devminor) == (1, 3)
    assert es["etc/empty"].size == 0 and es["etc/empty"].data == b""
    assert (es["data/sparse"].uid, es["data/sparse"].gid) == (1234, 5678)
    st = _by_name((await _build(load(ZC_STORAGE)))[0].entries)
    kinds = [c.kind for c in unpack_chunks(st["data/sparse"].data)]
    assert kinds == [tocfmt.DATA, tocfmt.ZEROS, tocfmt.DATA]
    assert len(unpack_chunks(st["usr/share/words.txt"].data)) > 10


async def test_own_writer_chunks_like_skopeo():
    """The containers/storage-style sample (our writer, today's layout) cuts
    the same chunks with the same digests as skopeo's real writer."""
    ours = (await _build(load(ZC_STORAGE)))[0].entries
    real = (await _build(load(ZC_SKOPEO)))[0].entries
    assert len(ours) == len(real)
    for a, b in zip(ours, real):
        assert dataclasses.replace(a, data=b"") == dataclasses.replace(b, data=b""), a.name
        assert [(c.offset, c.size, c.digest, c.kind) for c in unpack_chunks(a.data)] == \
            [(c.offset, c.size, c.digest, c.kind) for c in unpack_chunks(b.data)], a.name


@pytest.mark.parametrize("name", SAMPLES)
async def test_random_reads(name):
    sample = load(name)
    table, blob = await _build(sample)
    want = oracle(sample)
    reader = open_reader(table)
    rnd = random.Random(7)
    files = [e for e in table.entries if e.type is EntryType.FILE and e.size > 0]
    for _ in range(150):
        e = rnd.choice(files)
        content = want[_norm(e.name)][1]
        off = rnd.randrange(e.size + 10)
        size = rnd.choice([0, 1, 100, 4096, 70000, 600000])
        assert await read_content(reader, blob, e.data, off, size) == content[off:off + size]


@pytest.mark.parametrize("name", SAMPLES)
async def test_pieces_are_chunks(name):
    table, _ = await _build(load(name))
    reader = open_reader(table)
    files = _by_name(table.entries)
    small = files["etc/hostname"] if files["etc/hostname"].data else files["data/hostname-hard"]
    assert len(reader.pieces(small.data, 0, small.size)) == 1
    big = files["usr/bin/big"]
    chunks = unpack_chunks(big.data)
    whole = reader.pieces(big.data, 0, big.size)
    assert len(whole) == len(chunks)
    assert [p.content_offset for p in whole] == [sum(c.size for c in chunks[:i]) for i in range(len(chunks))]
    assert all(p.start < p.end for p in whole)
    if len(chunks) > 1:
        first = chunks[0].size
        assert len(reader.pieces(big.data, first - 1, 2)) == 2
        assert len(reader.pieces(big.data, first, 10)) == 1
    assert reader.pieces(big.data, 5, 0) == []
    assert reader.pieces(big.data, big.size, 10) == []
    for e in table.entries:
        cs = unpack_chunks(e.data)
        assert all(a.end == b.start for a, b in zip(cs, cs[1:])), e.name


@pytest.mark.parametrize("name", SAMPLES)
async def test_small_read_fetches_little(name):
    """Reading a 14-byte file costs one small range, not the layer."""
    table, _ = await _build(load(name))
    files = _by_name(table.entries)
    small = files["etc/hostname"] if files["etc/hostname"].data else files["data/hostname-hard"]
    blob = load(name).blob()
    assert await read_content(open_reader(table), blob, small.data, 0, small.size) == b"lazyfs-golden\n"
    assert len(blob.ranges) == 1
    start, end = blob.ranges[0]
    assert end - start < 1024


# --- how few requests a build makes ----------------------------------------------

async def test_estargz_build_asks_for_footer_and_toc_at_once():
    sample = load(ESTARGZ)
    _, blob = await _build(sample)
    size = sample.desc.size
    assert blob.ranges == [(size - estargz.toc_guess(size), size)]


async def test_estargz_toc_beyond_the_guessed_tail_is_asked_for_apart(monkeypatch):
    monkeypatch.setattr(estargz, "TOC_GUESS", 60)
    sample = load(ESTARGZ)
    table, blob = await _build(sample)
    size = sample.desc.size
    toc_offset = tocfmt.unpack_state(table.state)["toc_offset"]
    assert blob.ranges == [(size - 60, size), (toc_offset, size - 60)], "nothing in front of the TOC"
    monkeypatch.undo()
    reference, _ = await _build(sample)
    assert [(e.name, e.data) for e in table.entries] == [(e.name, e.data) for e in reference.entries]


async def test_estargz_build_of_a_big_layer_fetches_its_end_not_a_share_of_it(tmp_path):
    """8 MiB that do not compress behind a TOC of two entries: the build asks
    for the last ``TOC_GUESS`` bytes, not for a share of the layer's size
    (most of which would be the file in front of the TOC)."""
    layer = estargz_layer({"big": File(random.Random(7).randbytes(8 << 20))}, chunk_size=4 << 20)
    path = tmp_path / "layer"
    path.write_bytes(layer.blob)
    desc = SimpleNamespace(media_type=layer.media_type, digest=layer.digest, size=layer.size,
                           annotations=layer.annotations)
    blob = CountingBlob(path, layer.digest)
    table = await build_table(desc, blob)
    assert blob.ranges == [(layer.size - estargz.TOC_GUESS, layer.size)]
    assert [e.name for e in table.entries] == ["big"]


@pytest.mark.parametrize("name", [ZC_CTR, ZC_STORAGE])
async def test_zstdchunked_build_uses_one_request_with_position(name):
    sample = load(name)
    _, blob = await _build(sample)
    assert len(blob.ranges) == 1


@pytest.mark.parametrize("name", [ZC_CTR, ZC_STORAGE])
async def test_zstdchunked_without_position_reads_footer(name):
    sample = load(name)
    desc = sample.with_annotations(**{
        "io.github.containers.zstd-chunked.manifest-position": None,
        "io.containers.zstd-chunked.manifest-position": None})
    desc.annotations = {k: v for k, v in desc.annotations.items() if "position" not in k}
    table, blob = await _build(sample, desc)
    assert len(blob.ranges) == 2
    assert blob.ranges[0][1] == sample.desc.size
    reference, _ = await _build(sample)
    assert [(e.name, e.data) for e in table.entries] == [(e.name, e.data) for e in reference.entries]


async def test_legacy_stargz_footer(tmp_path):
    sample = load(ESTARGZ)
    raw = sample.bytes
    toc_offset, size = estargz.parse_footer(raw[-51:])
    assert size == 51
    legacy = raw[:-51] + footer_bytes(toc_offset, legacy=True)
    assert len(footer_bytes(toc_offset, legacy=True)) == 47
    assert gzip.decompress(legacy) == gzip.decompress(raw)
    path = tmp_path / "legacy"
    path.write_bytes(legacy)
    desc = SimpleNamespace(**{**vars(sample.desc), "size": len(legacy)})
    table, blob = await _build(sample, desc, path)
    assert len(blob.ranges) == 1
    reference, _ = await _build(sample)
    assert [(e.name, e.data) for e in table.entries] == [(e.name, e.data) for e in reference.entries]


# --- tampering --------------------------------------------------------------

def _flip(raw: bytes, at: int) -> bytes:
    return raw[:at] + bytes([raw[at] ^ 0x55]) + raw[at + 1:]


@pytest.mark.parametrize("name", SAMPLES)
async def test_flipped_byte_fails_only_its_chunk(name, tmp_path):
    sample = load(name)
    table, _ = await _build(sample)
    target = _by_name(table.entries)["usr/share/words.txt" if name in (ZC_SKOPEO, ZC_STORAGE)
                                     else "usr/bin/big"]
    chunks = unpack_chunks(target.data)
    bad = chunks[2]
    path = tmp_path / "tampered"
    path.write_bytes(_flip(sample.bytes, (bad.start + bad.end) // 2))
    tampered = FileBlob(path, sample.desc.digest)
    reader = open_reader(table)
    pos = sum(c.size for c in chunks[:2])
    # the flip breaks the stream (CorruptData) or changes what it inflates to
    with pytest.raises((CorruptData, DigestMismatch), match=sample.desc.digest):
        await read_content(reader, tampered, target.data, pos, 1)
    want = oracle(sample)[_norm(target.name)][1]
    assert await read_content(reader, tampered, target.data, 0, pos) == want[:pos]
    after = pos + bad.size
    assert await read_content(reader, tampered, target.data, after, 5000) == want[after:after + 5000]


@pytest.mark.parametrize("name", [ESTARGZ, ZC_STORAGE])
async def test_chunk_digest_is_checked_after_decoding(name, tmp_path):
    """Bytes that decompress cleanly but differ from what the TOC promises
    (here: a re-signed TOC with another chunk digest) are refused."""
    sample = load(name)
    wrong = "sha256:" + hashlib.sha256(b"something else").hexdigest()

    def edit(entries):
        e = _entry(entries, "data/hostname-hard")
        e["chunkDigest" if name == ESTARGZ else "digest"] = wrong
        _entry(entries, "usr/bin/big", nth=0)["chunkDigest" if name == ESTARGZ else "digest"] = wrong

    rewrite = _estargz_with_toc if name == ESTARGZ else _storage_with_toc
    blob, desc = rewrite(sample, edit)
    path = tmp_path / "blob"
    path.write_bytes(blob)
    table, fb = await _build(sample, desc, path)
    reader = open_reader(table)
    files = _by_name(table.entries)
    with pytest.raises(DigestMismatch, match="hashes to"):
        await read_content(reader, fb, files["data/hostname-hard"].data, 0, 14)
    big = files["usr/bin/big"]
    if name == ESTARGZ:
        with pytest.raises(DigestMismatch, match="hashes to"):
            await read_content(reader, fb, big.data, 0, 1)
        assert await read_content(reader, fb, big.data, 524288, 6) == b"block "
    assert await read_content(reader, fb, files["etc/hostname"].data or files["data/xattr-file"].data,
                              0, 3) in (b"laz", b"has")


async def test_zero_chunk_is_served_without_decoding(tmp_path):
    """A hole is zeros by the (verified) TOC; its frame's bytes do not matter."""
    sample = load(ZC_STORAGE)
    table, _ = await _build(sample)
    sparse = _by_name(table.entries)["data/sparse"]
    hole = unpack_chunks(sparse.data)[1]
    path = tmp_path / "tampered"
    path.write_bytes(_flip(sample.bytes, hole.start + 4))
    got = await read_content(open_reader(table), FileBlob(path, sample.desc.digest), sparse.data, 4096, 65536)
    assert got == bytes(65536)


@pytest.mark.parametrize("name,key", [
    (ESTARGZ, "containerd.io/snapshot/stargz/toc.digest"),
    (ZC_CTR, "io.containers.zstd-chunked.manifest-checksum"),
    (ZC_STORAGE, "io.github.containers.zstd-chunked.manifest-checksum"),
])
async def test_toc_digest_mismatch_refused(name, key):
    sample = load(name)
    desc = sample.with_annotations()
    desc.annotations[key] = "sha256:" + "0" * 64
    with pytest.raises(DigestMismatch, match=sample.desc.digest):
        await _build(sample, desc)


@pytest.mark.parametrize("name,key", [
    (ESTARGZ, "containerd.io/snapshot/stargz/toc.digest"),
    (ZC_STORAGE, "io.github.containers.zstd-chunked.manifest-checksum"),
])
async def test_toc_without_digest_refused(name, key):
    sample = load(name)
    desc = sample.with_annotations()
    del desc.annotations[key]
    module = estargz if name == ESTARGZ else zstdchunked
    with pytest.raises(LayerFormatError, match="annotation"):
        await module.build(desc, sample.blob())


@pytest.mark.parametrize("name", SAMPLES)
async def test_truncated_blob(name, tmp_path):
    sample = load(name)
    path = tmp_path / "truncated"
    path.write_bytes(sample.bytes[: sample.desc.size // 2])
    desc = SimpleNamespace(**{**vars(sample.desc), "size": sample.desc.size // 2})
    with pytest.raises(LayerFormatError, match=sample.desc.digest):
        await _build(sample, desc, path)


# --- TOC consistency (TOCs edited and re-signed, so only the check can fail) ----

def _estargz_with_toc(sample: Sample, edit) -> tuple[bytes, SimpleNamespace]:
    """The sample blob with its TOC rewritten by ``edit`` and the TOC digest
    annotation updated to match."""
    raw = sample.bytes
    toc_offset, _ = estargz.parse_footer(raw[-51:])
    toc = json.loads(estargz.toc_json_from_member(raw[toc_offset:-51], "x"))
    edit(toc["entries"])
    toc_json = json.dumps(toc, indent="\t").encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        ti = tarfile.TarInfo(estargz.TOC_NAME)
        ti.size = len(toc_json)
        tf.addfile(ti, io.BytesIO(toc_json))
    blob = raw[:toc_offset] + gzip.compress(buf.getvalue()[:512 + (len(toc_json) + 511) // 512 * 512])
    blob += footer_bytes(toc_offset)
    desc = sample.with_annotations()
    desc.annotations[estargz.TOC_DIGEST_ANNOTATION] = "sha256:" + hashlib.sha256(toc_json).hexdigest()
    desc.size = len(blob)
    return blob, desc


def _storage_with_toc(sample: Sample, edit) -> tuple[bytes, SimpleNamespace]:
    raw = sample.bytes
    key = "io.github.containers.zstd-chunked.manifest-position"
    off, length, _ = zstdchunked.parse_position(sample.desc.annotations[key])
    toc = json.loads(zstandard.ZstdDecompressor().decompress(raw[off:off + length]))
    edit(toc["entries"])
    toc_json = json.dumps(toc).encode()
    frame = zstandard.ZstdCompressor().compress(toc_json)
    blob = raw[:off - 8] + b"\x50\x2a\x4d\x18" + struct.pack("<I", len(frame)) + frame
    desc = sample.with_annotations()
    desc.annotations[key] = f"{off}:{len(frame)}:{len(toc_json)}:1"
    desc.annotations["io.github.containers.zstd-chunked.manifest-checksum"] = \
        "sha256:" + hashlib.sha256(frame).hexdigest()
    desc.size = len(blob)
    return blob, desc


def _entry(entries, name, nth=0, kind=None):
    found = [e for e in entries if _norm(e["name"]) == name and (kind is None or e["type"] == kind)]
    return found[nth]


def _set(name, field, value, nth=0):
    def edit(entries):
        _entry(entries, name, nth)[field] = value
    return edit


def _drop_last_chunk(name):
    def edit(entries):
        last = max(i for i, e in enumerate(entries) if _norm(e["name"]) == name and e["type"] == "chunk")
        del entries[last]
    return edit


ESTARGZ_BAD = [
    ("offset past the TOC", _set("usr/bin/big", "offset", 10**9), "usr/bin/big.*outside"),
    ("negative offset", _set("data/sparse", "offset", -5), "data/sparse.*outside"),
    ("overlapping chunks", _set("usr/bin/big", "chunkSize", 600000), "usr/bin/big.*overlaps"),
    ("chunks short of the size", _drop_last_chunk("usr/bin/big"), "usr/bin/big.*chunks hold"),
    ("chunk beyond the size", _set("usr/bin/big", "chunkSize", 4_000_000), "usr/bin/big.*does not fit"),
    ("two files in one stream", _set("data/sparse", "offset", None), "data/sparse"),
    ("unknown type", _set("data/fifo", "type", "socket"), "data/fifo.*socket"),
    ("missing chunk digest", _set("usr/bin/big", "chunkDigest", None, nth=1), "usr/bin/big.*digest"),
    ("bad digest algorithm", _set("data/sparse", "chunkDigest", "md5:abc"), "data/sparse.*digest"),
]


@pytest.mark.parametrize("case,edit,match", ESTARGZ_BAD, ids=[c[0] for c in ESTARGZ_BAD])
async def test_estargz_inconsistent_toc_refused(case, edit, match, tmp_path):
    sample = load(ESTARGZ)
    if case == "two files in one stream":
        def edit(entries):  # noqa: F811 - sparse claims hostname-hard's stream
            _entry(entries, "data/sparse")["offset"] = _entry(entries, "data/hostname-hard")["offset"]
        match = "overlap"
    blob, desc = _estargz_with_toc(sample, edit)
    path = tmp_path / "blob"
    path.write_bytes(blob)
    with pytest.raises(LayerFormatError, match=match):
        await _build(sample, desc, path)


async def test_estargz_rewritten_toc_is_accepted(tmp_path):
    """The TOC rewriting used above yields a readable layer when unchanged."""
    sample = load(ESTARGZ)
    blob, desc = _estargz_with_toc(sample, lambda entries: None)
    path = tmp_path / "blob"
    path.write_bytes(blob)
    table, _ = await _build(sample, desc, path)
    reference, _ = await _build(sample)
    assert [(e.name, e.data) for e in table.entries] == [(e.name, e.data) for e in reference.entries]


STORAGE_BAD = [
    ("endOffset past the data", _set("usr/bin/big", "endOffset", 10**9), "usr/bin/big.*endOffset"),
    ("offset past the data", _set("usr/bin/big", "offset", 10**9), "usr/bin/big.*outside"),
    ("overlapping chunks", _set("data/sparse", "chunkOffset", 100, nth=1), "data/sparse.*overlaps"),
    ("chunks short of the size", _drop_last_chunk("usr/share/words.txt"), "words.txt.*chunks hold"),
    ("unknown chunk type", _set("data/sparse", "chunkType", "ones", nth=1), "data/sparse.*chunkType"),
    ("chunk without its file", lambda es: es.insert(0, {"type": "chunk", "name": "x", "offset": 5}), "'x'"),
]


@pytest.mark.parametrize("case,edit,match", STORAGE_BAD, ids=[c[0] for c in STORAGE_BAD])
async def test_zstdchunked_inconsistent_toc_refused(case, edit, match, tmp_path):
    sample = load(ZC_STORAGE)
    blob, desc = _storage_with_toc(sample, edit)
    path = tmp_path / "blob"
    path.write_bytes(blob)
    with pytest.raises(LayerFormatError, match=match):
        await _build(sample, desc, path)


async def test_zstdchunked_position_outside_blob():
    sample = load(ZC_STORAGE)
    desc = sample.with_annotations()
    key = "io.github.containers.zstd-chunked.manifest-position"
    desc.annotations[key] = f"{sample.desc.size - 10}:500:1000:1"
    with pytest.raises(LayerFormatError, match="outside"):
        await _build(sample, desc)


async def test_prefetch_landmark_recorded_in_state(tmp_path):
    sample = load(ESTARGZ)
    table, _ = await _build(sample)
    assert estargz.unpack_state(table.state)["prefetch_end"] == 0

    def prioritise(entries):
        landmark = _entry(entries, ".no.prefetch.landmark")
        landmark["name"] = ".prefetch.landmark"
    blob, desc = _estargz_with_toc(sample, prioritise)
    path = tmp_path / "blob"
    path.write_bytes(blob)
    table, _ = await _build(sample, desc, path)
    offset = json.loads(estargz.toc_json_from_member(blob[estargz.parse_footer(blob[-51:])[0]:-51], "x"))
    landmark_offset = _entry(offset["entries"], ".prefetch.landmark")["offset"]
    assert estargz.unpack_state(table.state)["prefetch_end"] == landmark_offset > 0
    assert ".prefetch.landmark" not in _by_name(table.entries)


# --- innerOffset: several payloads in one gzip stream ---------------------------

def _gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _tar_header(name: str, size: int) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode = size, 1_700_000_000, 0o644
    return ti.tobuf(tarfile.USTAR_FORMAT)


def _pad(n: int) -> bytes:
    return bytes(-n % 512)


def estargz_packed(files: dict[str, bytes]) -> tuple[bytes, str]:
    """An eStargz blob whose files all share one gzip stream, located by
    ``innerOffset`` (as ``--estargz-min-chunk-size`` makes them)."""
    head = b""
    stream = b""
    toc = []
    for i, (name, data) in enumerate(files.items()):
        header = _tar_header(name, len(data))
        if i == 0:
            head = header
        else:
            stream += header
        toc.append({"name": name, "type": "reg", "size": len(data), "mode": 0o644,
                    "modtime": "2023-11-14T22:13:20Z", "innerOffset": len(stream),
                    "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
                    "chunkDigest": "sha256:" + hashlib.sha256(data).hexdigest()})
        stream += data + _pad(len(data))
    first = _gz(head)
    for t in toc:
        t["offset"] = len(first)
    member = _gz(stream)
    toc_offset = len(first) + len(member)
    toc_json = json.dumps({"version": 1, "entries": toc}).encode()
    toc_member = _gz(_tar_header(estargz.TOC_NAME, len(toc_json)) + toc_json + _pad(len(toc_json))
                     + bytes(1024))
    blob = first + member + toc_member + footer_bytes(toc_offset)
    return blob, "sha256:" + hashlib.sha256(toc_json).hexdigest()


async def test_inner_offset(tmp_path):
    files = {"a.txt": b"alpha" * 300, "b.bin": bytes(range(256)) * 9, "c": b"", "d": b"delta\n"}
    blob, toc_digest = estargz_packed(files)
    path = tmp_path / "packed"
    path.write_bytes(blob)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    desc = SimpleNamespace(media_type="application/vnd.oci.image.layer.v1.tar+gzip", digest=digest,
                           size=len(blob), annotations={estargz.TOC_DIGEST_ANNOTATION: toc_digest})
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tf:
        assert {ti.name: tf.extractfile(ti).read() for ti in tf if ti.isreg()
                and ti.name != estargz.TOC_NAME} == files
    fb = FileBlob(path, digest)
    table = await build_table(desc, fb)
    reader = open_reader(table)
    for e in table.entries:
        assert await read_content(reader, fb, e.data, 0, e.size) == files[e.name]
        assert await read_content(reader, fb, e.data, 3, 7) == files[e.name][3:10]
        if e.size:
            assert len(reader.pieces(e.data, 0, e.size)) == 1


# --- pure helpers --------------------------------------------------------------

@pytest.mark.parametrize("text,ns", [
    ("2024-01-02T03:04:05Z", 1_704_164_645 * 10**9),
    ("2024-01-02T03:04:05.123456789Z", 1_704_164_645 * 10**9 + 123_456_789),
    ("2024-01-02T03:04:05.5+01:00", (1_704_164_645 - 3600) * 10**9 + 500_000_000),
    ("2024-01-02T03:04:05-00:30", (1_704_164_645 + 1800) * 10**9),
    ("1970-01-01T00:00:00Z", 0),
    ("0001-01-01T00:00:00Z", 0),
    ("1969-12-31T23:59:59Z", -10**9),
])
def test_parse_time(text, ns):
    assert parse_time(text) == ns


def test_parse_time_rejects_garbage():
    with pytest.raises(ValueError):
        parse_time("yesterday")


def test_footers_are_recognised_and_garbage_is_not():
    assert estargz.parse_footer(b"x" * 10 + footer_bytes(1234)) == (1234, 51)
    assert estargz.parse_footer(b"x" * 10 + footer_bytes(1234, legacy=True)) == (1234, 47)
    assert gzip.decompress(footer_bytes(99)) == b""
    with pytest.raises(LayerFormatError):
        estargz.parse_footer(bytes(51))
    with pytest.raises(LayerFormatError):
        zstdchunked.parse_footer(bytes(64))
    with pytest.raises(LayerFormatError, match="type"):
        zstdchunked.parse_position("1:2:3:2")


def test_legacy_zstdchunked_key_is_detected():
    zstd = "application/vnd.oci.image.layer.v1.tar+zstd"
    assert detect_format(zstd, {"io.containers.zstd-chunked.manifest-checksum": "x"}) == "zstd:chunked"
    assert detect_format(zstd, {"io.github.containers.zstd-chunked.manifest-checksum": "x"}) == "zstd:chunked"
    assert detect_format(zstd, {}) == "zstd"


def test_corrupt_state_is_a_format_error():
    with pytest.raises(LayerFormatError):
        unpack_chunks(b"\x00" * 7)


# --- the producer itself, live ----------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("ctr-remote") or not shutil.which("containerd"),
                    reason="ctr-remote and containerd are needed")
async def test_live_ctr_remote_conversion(tmp_path):
    """Convert the umoci sample with a private containerd (other chunk size),
    then check the result against its own decompressed tar."""
    from lazyfs.testing.containerd import start_containerd
    archive = tmp_path / "in.tar"
    subprocess.run(["tar", "-C", str(DATA / "gzip-umoci"), "-cf", str(archive), "."], check=True)
    out = tmp_path / "out"
    out.mkdir()
    with start_containerd(tmp_path / "containerd") as ctd:
        ctd.ctr("images", "import", "--base-name", "live/img", "--no-unpack", str(archive))
        ctd.ctr("images", "convert", "--estargz", "--oci", "--estargz-chunk-size", "1048576",
                "live/img:golden", "live/img:esgz")
        ctd.ctr("images", "export", str(tmp_path / "out.tar"), "live/img:esgz")
    subprocess.run(["tar", "-C", str(out), "-xf", str(tmp_path / "out.tar")], check=True)
    index = json.loads((out / "index.json").read_text())
    manifest = json.loads(_blob_path(out, index["manifests"][0]["digest"]).read_bytes())
    layer = manifest["layers"][0]
    sample = Sample("live", SimpleNamespace(media_type=layer["mediaType"], annotations=layer["annotations"],
                                            digest=layer["digest"], size=layer["size"]),
                    _blob_path(out, layer["digest"]))
    table, blob = await _build(sample)
    assert len(blob.ranges) == 1
    want = oracle(sample)
    reader = open_reader(table)
    big = _by_name(table.entries)["usr/bin/big"]
    assert len(unpack_chunks(big.data)) == 3
    for e in table.entries:
        if e.type is EntryType.FILE:
            assert await read_content(reader, blob, e.data, 0, e.size) == want[_norm(e.name)][1]


def test_plan_finds_chunks_by_bisection():
    rnd = random.Random(3)
    chunks, pos = [], 0
    for i in range(5000):
        size = rnd.randint(1, 100)
        chunks.append(tocfmt.Chunk(pos, i * 10, i * 10 + 10, 0, size, bytes(32)))
        pos += size
    data = tocfmt.pack_chunks(chunks)
    assert tocfmt.unpack_chunks(data) == chunks
    for _ in range(300):
        off, size = rnd.randrange(pos + 5), rnd.randint(0, 400)
        want = [c.offset for c in chunks if size and c.offset < off + size and c.offset + c.size > off]
        got = tocfmt.plan(data, off, size, lambda c: "gzip-member")
        assert [p.content_offset for p in got] == want
        assert [(p.start, p.length) for p in got] == [
            (c.start, c.size) for c in chunks if c.offset in set(want)]


def test_prioritized_files_are_those_before_the_landmark():
    from lazyfs.formats.entry import Entry, EntryType
    from lazyfs.formats.base import LayerTable

    def file(name, start):
        chunk = tocfmt.Chunk(0, start, start + 10, 0, 5, b"\0" * 32)
        return Entry(name, EntryType.FILE, 0o644, size=5, data=tocfmt.pack_chunks([chunk]))
    entries = [file("early", 100), file("late", 900),
               Entry("dir", EntryType.DIR, 0o755), file("edge", 500)]
    table = LayerTable("estargz", True, state=tocfmt.pack_state(prefetch_end=500),
                       entries=entries)
    assert [e.name for e in estargz.prioritized(table)] == ["early"]
    none = LayerTable("estargz", True, state=tocfmt.pack_state(prefetch_end=0), entries=entries)
    assert estargz.prioritized(none) == []

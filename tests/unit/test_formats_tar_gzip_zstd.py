import gzip
import hashlib
import os
import random
import shutil
import subprocess
import sysconfig
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zstandard

from lazyfs.blob import FileBlob, file_digest
from lazyfs.formats.entry import EntryType
from lazyfs.errors import DigestMismatch, LayerFormatError
from lazyfs.formats import build_table, gzip as gzfmt, open_reader, read_content
from lazyfs.formats import spans as spanfmt
from lazyfs.formats import zstd as zfmt
from tests.support import tarbytes as tb

TAR = "application/vnd.docker.image.rootfs.diff.tar"
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"


@dataclass
class Desc:
    media_type: str
    digest: str
    size: int
    annotations: dict = field(default_factory=dict)


class CountingBlob(FileBlob):
    """A local blob that remembers which ranges were fetched."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ranges: list[tuple[int, int]] = []

    async def read_range(self, start, end):
        self.ranges.append((start, end))
        return await super().read_range(start, end)


def layer(path: Path, media_type: str, digest: str | None = None):
    digest = digest or file_digest(path)
    return Desc(media_type, digest, path.stat().st_size), CountingBlob(path, digest)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Real files: stdlib sources, random bytes, large text, links, an empty file;
    its tar as GNU tar writes it, and what GNU tar extracts from that."""
    root = tmp_path_factory.mktemp("tree")
    src = root / "src"
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for sub in ("json", "email", "asyncio"):
        shutil.copytree(stdlib / sub, src / "lib" / sub,
                        ignore=shutil.ignore_patterns("__pycache__"))
    rng = random.Random(1)
    (src / "data").mkdir()
    (src / "data/random.bin").write_bytes(rng.randbytes(3_000_000))
    text = b"".join(p.read_bytes() for p in sorted((stdlib / "email").glob("*.py")))
    (src / "data/text.txt").write_bytes((text * (6_000_000 // len(text) + 1))[:6_000_000])
    (src / "data/empty").write_bytes(b"")
    (src / "data/one").write_bytes(b"1")
    os.symlink("text.txt", src / "data/link")
    os.link(src / "data/one", src / "data/hard")
    tar = root / "layer.tar"
    subprocess.run(["tar", "--format=posix", "-C", src, "-cf", tar, "lib", "data"], check=True)
    out = root / "out"
    out.mkdir()
    subprocess.run(["tar", "-C", out, "-xf", tar], check=True)
    return tar, out


def gzip_file(src: Path, dst: Path, level: int = 6) -> Path:
    with open(dst, "wb") as f:
        subprocess.run(["gzip", f"-{level}", "-n", "-c", src], check=True, stdout=f)
    return dst


async def check_reads(table, blob, extracted: Path, seed: int = 0, n_random: int = 60):
    reader = open_reader(table)
    files = [e for e in table.entries if e.type is EntryType.FILE]
    assert files
    for e in files:
        assert await read_content(reader, blob, e.data, 0, e.size) == \
            (extracted / e.name).read_bytes(), e.name
    rng = random.Random(seed)
    sized = [e for e in files if e.size > 0]
    for _ in range(n_random):
        e = rng.choice(sized)
        want = (extracted / e.name).read_bytes()
        off = rng.randrange(e.size)
        size = rng.choice([1, 4096, 200_000, 3_000_000])
        got = await read_content(reader, blob, e.data, off, size)
        assert got == want[off:off + size], (e.name, off, size)
    e = max(files, key=lambda e: e.size)
    assert await read_content(reader, blob, e.data, e.size, 10) == b""
    assert await read_content(reader, blob, e.data, e.size - 3, 100) == \
        (extracted / e.name).read_bytes()[-3:]


def names(table):
    return sorted(e.name.rstrip("/") for e in table.entries)


def tar_names(tar: Path):
    out = subprocess.run(["tar", "-tf", tar], check=True, capture_output=True, text=True).stdout
    return sorted(n.rstrip("/") for n in out.splitlines())


def flipped(path: Path, at: int, dst: Path) -> Path:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x20
    dst.write_bytes(bytes(data))
    return dst


# -- uncompressed tar ---------------------------------------------------------

async def test_tar_reads_match_gnu_tar(tree):
    tar, out = tree
    desc, blob = layer(tar, TAR)
    table = await build_table(desc, blob)
    assert (table.format, table.lazy) == ("tar", True)
    assert names(table) == tar_names(tar)
    await check_reads(table, blob, out)


async def test_tar_reads_whole_verified_chunks(tree, tmp_path):
    tar, out = tree
    desc, blob = layer(tar, TAR)
    table = await build_table(desc, blob)
    reader = open_reader(table)
    big = next(e for e in table.entries if e.name == "data/text.txt")
    pieces = reader.pieces(big.data, 1_500_000, 1_000_000)
    mib = 1 << 20
    assert [(p.content_offset, p.length) for p in pieces] == [(mib, mib), (2 * mib, mib)]
    blob.ranges.clear()
    one = next(e for e in table.entries if e.name == "data/one")
    assert await read_content(reader, blob, one.data, 0, 1) == b"1"
    assert blob.ranges == [(p.start, p.end) for p in reader.pieces(one.data, 0, 1)]
    assert blob.ranges[0][1] - blob.ranges[0][0] == 1
    empty = next(e for e in table.entries if e.name == "data/empty")
    assert reader.pieces(empty.data, 0, 10) == []

    offset = pieces[0].start + 10
    bad = CountingBlob(flipped(tar, offset, tmp_path / "bad.tar"), desc.digest)
    with pytest.raises(DigestMismatch, match=desc.digest):
        await read_content(reader, bad, big.data, 1_500_000, 10)
    assert await read_content(reader, bad, big.data, 0, 10) == (out / big.name).read_bytes()[:10]


async def test_tar_build_verifies_the_blob_and_the_stream(tree, tmp_path):
    tar, _ = tree
    desc, _ = layer(tar, TAR)
    with pytest.raises(DigestMismatch):
        await build_table(desc, CountingBlob(flipped(tar, 5000, tmp_path / "x.tar"), desc.digest))
    cut = tmp_path / "cut.tar"
    cut.write_bytes(tar.read_bytes()[:700_000])
    with pytest.raises(LayerFormatError, match="truncated"):
        await build_table(*layer(cut, TAR))
    bad = tmp_path / "bad-header.tar"
    bad.write_bytes(tb.member("a", b"x" * 5000) + tb.member("b", checksum=5) + tb.end())
    with pytest.raises(LayerFormatError, match="'b' at offset 5632: bad header checksum"):
        await build_table(*layer(bad, TAR))


# -- gzip ------------------------------------------------------------------------

async def test_gzip_reads_match_gnu_tar(tree, tmp_path):
    tar, out = tree
    gz = gzip_file(tar, tmp_path / "layer.tar.gz")
    desc, blob = layer(gz, GZIP)
    table = await build_table(desc, blob)
    assert (table.format, table.lazy) == ("gzip", True)
    assert names(table) == tar_names(tar)
    await check_reads(table, blob, out)


async def test_gzip_small_spans_with_bit_offsets(tree, tmp_path):
    tar, out = tree
    gz = gzip_file(tar, tmp_path / "layer.tar.gz", level=9)
    desc, blob = layer(gz, GZIP)
    table = gzfmt.build_from_file(gz, desc.digest, span=256 << 10)
    spans = gzfmt.reader(table)._spans
    assert len(spans) > 20
    assert any(s.bits for s in spans)
    assert spans[0].ustart == 0 and spans[-1].end == desc.size
    assert all(a.ustart + a.ulen == b.ustart for a, b in zip(spans, spans[1:]))
    await check_reads(table, blob, out, seed=1, n_random=150)


async def test_gzip_multi_member(tree, tmp_path):
    """Concatenated members, as pigz and layer concatenation write them."""
    tar, out = tree
    data = tar.read_bytes()
    cuts = [0, 333_333, 1_500_001, 4_000_000, 7_777_777, len(data)]
    gz = tmp_path / "multi.tar.gz"
    members = []
    with open(gz, "wb") as f:
        for a, b in zip(cuts, cuts[1:]):
            part = tmp_path / "part"
            part.write_bytes(data[a:b])
            members.append(gzip_file(part, tmp_path / "part.gz").read_bytes())
            f.write(members[-1])
    desc, blob = layer(gz, GZIP)
    table = gzfmt.build_from_file(gz, desc.digest, span=200 << 10)
    bounds = [sum(map(len, members[:i])) for i in range(1, len(members))]
    spans = gzfmt.reader(table)._spans
    assert any(s.start < b < s.end - 8 for s in spans for b in bounds)
    await check_reads(table, blob, out, seed=2, n_random=100)
    table = await build_table(desc, blob)
    await check_reads(table, blob, out, seed=3, n_random=20)


async def test_gzip_span_digest_checked_on_every_read(tree, tmp_path):
    tar, out = tree
    gz = gzip_file(tar, tmp_path / "layer.tar.gz")
    desc, blob = layer(gz, GZIP)
    table = await build_table(desc, blob)
    reader = open_reader(table)
    e = next(e for e in table.entries if e.name == "data/text.txt")
    piece = reader.pieces(e.data, 100, 10)[0]
    bad = CountingBlob(flipped(gz, (piece.start + piece.end) // 2, tmp_path / "bad.gz"),
                       desc.digest)
    with pytest.raises(DigestMismatch, match=desc.digest):
        await read_content(reader, bad, e.data, 100, 10)


@pytest.mark.parametrize("damage", ["not gzip", "bad crc", "truncated"])
async def test_gzip_broken_blobs_are_refused(tree, tmp_path, damage):
    tar, _ = tree
    gz = gzip_file(tar, tmp_path / "layer.tar.gz").read_bytes()
    bad = {
        "not gzip": tar.read_bytes()[:100_000],
        "bad crc": gz[:-8] + bytes([gz[-8] ^ 1]) + gz[-7:],
        "truncated": gz[:len(gz) // 2],
    }[damage]
    path = tmp_path / "bad.gz"
    path.write_bytes(bad)
    desc, blob = layer(path, GZIP)
    with pytest.raises(LayerFormatError, match=desc.digest):
        await build_table(desc, blob)


async def test_gzip_of_an_empty_stream_has_no_entries(tmp_path):
    (tmp_path / "nothing").write_bytes(b"")
    desc, blob = layer(gzip_file(tmp_path / "nothing", tmp_path / "e.gz"), GZIP)
    table = await build_table(desc, blob)
    assert table.entries == []


async def test_gzip_small_read_in_a_big_layer_fetches_one_span(tmp_path):
    """~100 MB of output; a small file in the middle costs one span, not the layer."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    rng = random.Random(5)
    chunk = rng.randbytes(1 << 20).hex().encode()
    for i in range(50):
        (src / "d" / f"big{i:02}").write_bytes(chunk)
        (src / "d" / f"small{i:02}").write_bytes(b"small file %d\n" % i)
    tar = tmp_path / "big.tar"
    subprocess.run(["tar", "-C", src, "-cf", tar, "d"], check=True)
    gz = gzip_file(tar, tmp_path / "big.tar.gz", level=1)
    desc, blob = layer(gz, GZIP)
    table = await build_table(desc, blob)
    reader = open_reader(table)
    spans = reader._spans
    assert len(spans) >= 30
    assert len(table.state) < 300_000
    e = next(e for e in table.entries if e.name == "d/small25")
    blob.ranges.clear()
    assert await read_content(reader, blob, e.data, 0, e.size) == b"small file 25\n"
    assert len(blob.ranges) == 1
    start, end = blob.ranges[0]
    assert end - start <= max(s.end - s.start for s in spans) < desc.size // 20


# -- zstd -------------------------------------------------------------------------

def zstd_frames(parts: list[bytes]) -> bytes:
    return b"".join(zstandard.ZstdCompressor(level=3, write_checksum=True).compress(p)
                    for p in parts)


def skippable(payload: bytes) -> bytes:
    return (0x184D2A53).to_bytes(4, "little") + len(payload).to_bytes(4, "little") + payload


async def test_zstd_single_frame_from_the_cli(tree, tmp_path):
    tar, out = tree
    zst = tmp_path / "layer.tar.zst"
    subprocess.run(["zstd", "-q", "-3", tar, "-o", zst], check=True)
    desc, blob = layer(zst, ZSTD)
    table = await build_table(desc, blob)
    assert (table.format, table.lazy, table.reason) == ("zstd", False, zfmt.NOT_SEEKABLE)
    assert names(table) == tar_names(tar)
    e = next(e for e in table.entries if e.name == "data/one")
    assert [(p.start, p.end) for p in open_reader(table).pieces(e.data, 0, 1)] == [(0, desc.size)]
    await check_reads(table, blob, out, n_random=10)


async def test_zstd_multi_frame_reads_by_frame(tree, tmp_path):
    tar, out = tree
    data = tar.read_bytes()
    cuts = list(range(0, len(data), 1_000_000)) + [len(data)]
    blob_bytes = skippable(b"meta") + zstd_frames([data[a:b] for a, b in zip(cuts, cuts[1:])])
    blob_bytes += skippable(b"")
    zst = tmp_path / "multi.tar.zst"
    zst.write_bytes(blob_bytes)
    desc, blob = layer(zst, ZSTD)
    table = await build_table(desc, blob)
    assert (table.format, table.lazy) == ("zstd", True)
    await check_reads(table, blob, out, seed=4)
    reader = open_reader(table)
    e = next(e for e in table.entries if e.name == "data/one")
    blob.ranges.clear()
    assert await read_content(reader, blob, e.data, 0, 1) == b"1"
    assert len(blob.ranges) == 1 and blob.ranges[0][1] - blob.ranges[0][0] < 1_100_000

    big = next(e for e in table.entries if e.name == "data/random.bin")
    piece = reader.pieces(big.data, 0, 1)[0]
    bad = CountingBlob(flipped(zst, piece.start + 100, tmp_path / "bad.zst"), desc.digest)
    with pytest.raises(DigestMismatch, match=desc.digest):
        await read_content(reader, bad, big.data, 0, 1)


async def test_zstd_frame_walk_matches_content_sizes(tree):
    tar, _ = tree
    data = tar.read_bytes()[:3_000_000]
    blob = zstd_frames([data[:1_000_000], b"", data[1_000_000:]])
    frames = list(zfmt.frames(blob, "x"))
    assert len(frames) == 3
    sizes = [zstandard.frame_content_size(blob[a:b]) for a, b in frames]
    assert sizes == [1_000_000, 0, 2_000_000]
    assert frames[-1][1] == len(blob)


def with_dictionary_id(frame: bytes) -> bytes:
    fhd = frame[4]
    at = 5 + (0 if fhd & 0x20 else 1)
    return frame[:4] + bytes([fhd | 1]) + frame[5:at] + b"\x07" + frame[at:]


@pytest.mark.parametrize("damage", ["not zstd", "truncated", "bad checksum", "garbage after",
                                    "reserved bit", "dictionary"])
async def test_zstd_broken_blobs_are_refused(tree, tmp_path, damage):
    tar, _ = tree
    good = zstd_frames([tar.read_bytes()[:2_000_000], tar.read_bytes()[2_000_000:]])
    bad = {
        "not zstd": tar.read_bytes()[:10_000],
        "truncated": good[:len(good) // 3],
        "bad checksum": good[:-1] + bytes([good[-1] ^ 1]),
        "garbage after": good + b"\x00junk",
        "reserved bit": good[:4] + bytes([good[4] | 0x08]) + good[5:],
        "dictionary": with_dictionary_id(good),
    }[damage]
    path = tmp_path / "bad.zst"
    path.write_bytes(bad)
    desc, blob = layer(path, ZSTD)
    with pytest.raises(LayerFormatError, match=desc.digest):
        await build_table(desc, blob)


def test_span_state_round_trip():
    spans = [spanfmt.Span(10, 500, 0, 4096, 3, b"w" * 9, hashlib.sha256(b"a").digest()),
             spanfmt.Span(499, 900, 4096, 100, 0, b"", hashlib.sha256(b"b").digest())]
    state = spanfmt.encode_state("sha256:x", spans, gzfmt.MAGIC)
    assert spanfmt.decode_state(state, gzfmt.MAGIC) == ("sha256:x", spans)
    with pytest.raises(LayerFormatError):
        spanfmt.decode_state(spanfmt.encode_state("sha256:x", spans, zfmt.MAGIC), gzfmt.MAGIC)


def test_gzip_resume_inside_a_byte():
    """Deflate data that starts mid-byte after a block flushed with Z_BLOCK,
    as at a real checkpoint: stored blocks (random bytes) keep their
    alignment, back-references reach into the window, and the window's last
    byte (which the resume prefix emits) takes many values."""
    rng = random.Random(3)
    seen = set()
    for i in range(80):
        head = rng.randbytes(rng.randrange(100, 3000)) + b"abc" * rng.randrange(50)
        body = rng.randbytes(70_000 if i % 8 == 0 else 200) + head[-60:] * 5
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        first = c.compress(head) + c.flush(zlib.Z_BLOCK)
        raw = (first + c.compress(body) + c.flush())[len(first):]
        matches = []
        for bits in range(8):
            try:
                if gzfmt.inflate(raw, bits, head, len(body)) == body:
                    matches.append(bits)
            except zlib.error:
                pass
        # a stored block can also be reached from a wrong bit that happens to
        # read as another stored-block header; elsewhere the offset is unique
        assert len(matches) == 1 or (matches and i % 8 == 0), (i, matches)
        seen.add(matches[0])
        assert gzfmt.inflate(raw, matches[0], head, 5) == body[:5]
    assert len(seen - {0}) >= 5


def test_gzip_inflate_from_a_member_header_across_members():
    parts = [b"first member " * 1000, b"", b"third " * 3000]
    raw = b"".join(gzip.compress(p, mtime=0) for p in parts)
    assert gzfmt.inflate(raw, 0, b"", 10**9) == b"".join(parts)
    assert gzfmt.inflate(raw, 0, b"", 100) == parts[0][:100]


@pytest.mark.parametrize("media_type,annotations,name", [
    ("application/vnd.oci.image.layer.v1.tar", {}, "tar"),
    ("application/vnd.docker.image.rootfs.diff.tar.gzip", {}, "gzip"),
    ("application/vnd.oci.image.layer.v1.tar+gzip",
     {"containerd.io/snapshot/stargz/toc.digest": "sha256:" + "0" * 64}, "estargz"),
    ("application/vnd.oci.image.layer.v1.tar+zstd", {}, "zstd"),
    ("application/vnd.oci.image.layer.v1.tar+zstd",
     {"io.github.containers.zstd-chunked.manifest-checksum": "x"}, "zstd:chunked"),
    ("application/vnd.oci.image.layer.v1.tar+zstd",
     {"io.containers.zstd-chunked.manifest-checksum": "x"}, "zstd:chunked"),
])
def test_format_of_descriptor(media_type, annotations, name):
    from lazyfs.formats import format_named, format_of
    fmt = format_of(media_type, annotations)
    assert fmt.name == name
    assert format_named(name) is fmt


def test_format_flags_say_what_callers_branch_on():
    from lazyfs.formats import format_named
    assert [f for f in ("tar", "gzip", "estargz", "zstd", "zstd:chunked")
            if format_named(f).streamable] == ["gzip"]
    assert [f for f in ("tar", "gzip", "estargz", "zstd", "zstd:chunked")
            if format_named(f).costly] == ["gzip"]
    assert [f for f in ("tar", "gzip", "estargz", "zstd", "zstd:chunked")
            if format_named(f).marks_prefetch] == ["estargz"]


def test_unknown_media_type_and_format_name_are_refused():
    from lazyfs.errors import UnsupportedMediaType
    from lazyfs.formats import format_named, format_of
    with pytest.raises(UnsupportedMediaType):
        format_of("application/vnd.oci.image.layer.v1.tar+bzip2", {})
    with pytest.raises(UnsupportedMediaType):
        format_named("bzip2")

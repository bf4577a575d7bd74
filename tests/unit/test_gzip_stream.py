"""StreamIndexer: the gzip layer table built from the blob's bytes as they
arrive must be the one ``build_from_file`` builds, and serve the same bytes."""

import gzip
import hashlib
import io
import itertools
import random
import subprocess
import sysconfig
import tarfile
import zlib
from pathlib import Path

import pytest

from lazyfs.blob import FileBlob
from lazyfs.formats.entry import EntryType
from lazyfs.errors import LayerFormatError
from lazyfs.formats import gzip as gzfmt
from lazyfs.formats.spans import LOCATOR
from lazyfs.formats.base import read_content

SPAN = 64 << 10
LAYER = "sha256:" + "ab" * 32


def empty_tar() -> bytes:
    buf = io.BytesIO()
    tarfile.open(fileobj=buf, mode="w").close()
    return buf.getvalue()


def make_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        d = tarfile.TarInfo("lib")
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        t.addfile(d)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            t.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("lib/link")
        link.type, link.linkname = tarfile.SYMTYPE, "big.txt"
        t.addfile(link)
    return buf.getvalue()


@pytest.fixture(scope="module")
def tar() -> bytes:
    """Many small real files, random bytes (stored blocks) and text over many spans."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = {f"lib/{p.relative_to(stdlib)}": p.read_bytes()
             for p in sorted((stdlib / "email").rglob("*.py"))}
    text = b"".join(files.values())
    files["lib/big.txt"] = (text * 3)[:900_000]
    files["lib/random.bin"] = random.Random(1).randbytes(300_000)
    files["lib/empty"] = b""
    return make_tar(files)


def members(parts: list[bytes], level: int = 6) -> bytes:
    return b"".join(gzip.compress(p, level, mtime=0) for p in parts)


def gzip_cli(data: bytes) -> bytes:
    return subprocess.run(["gzip", "-6", "-n", "-c"], input=data, capture_output=True,
                          check=True).stdout


def trailing_empty_blocks(data: bytes) -> bytes:
    """As Go's writer ends a layer: the data blocks, then empty blocks only."""
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush(zlib.Z_FULL_FLUSH) + c.flush(zlib.Z_SYNC_FLUSH) + c.flush()


BLOBS = {
    "level1": lambda t: gzip.compress(t, 1, mtime=0),
    "level6": lambda t: gzip.compress(t, 6, mtime=0),
    "level9": lambda t: gzip.compress(t, 9, mtime=0),
    "gzip-cli": gzip_cli,
    "multi-member": lambda t: members([t[:1000], t[1000:700_001], b"", t[700_001:]]),
    "random": lambda t: gzip.compress(make_tar({"r": random.Random(2).randbytes(400_000)}), 6),
    "empty-tar": lambda t: gzip.compress(empty_tar(), 6),
    "empty-gzip": lambda t: gzip.compress(b""),
    "go-style-end": trailing_empty_blocks,
}


def stream(blob: bytes, pieces, span: int = SPAN) -> tuple[gzfmt.StreamIndexer, gzfmt.LayerTable]:
    ix = gzfmt.StreamIndexer(LAYER, span)
    at = 0
    for n in pieces:
        if at >= len(blob):
            break
        ix.feed(blob[at:at + n])
        at += n
    ix.feed(blob[at:])
    return ix, ix.finish()


def sizes(seed: int, lo: int, hi: int):
    rng = random.Random(seed)
    while True:
        yield rng.randrange(lo, hi)


def tar_contents(blob: bytes) -> dict[str, bytes]:
    if not gzip.decompress(blob):
        return {}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as t:
        return {m.name: t.extractfile(m).read() for m in t if m.isfile()}


def check_spans(blob: bytes, spans, total: int) -> None:
    assert spans[0].start == 0 and spans[0].ustart == 0
    assert spans[-1].end == len(blob)
    assert sum(s.ulen for s in spans) == total
    for a, b in itertools.pairwise(spans):
        assert a.ustart + a.ulen == b.ustart
        assert a.end == b.start + (1 if b.bits else 0)
    for s in spans:
        assert hashlib.sha256(blob[s.start:s.end]).digest() == s.digest


async def read_all(reader, path: Path, blob: bytes, entries) -> dict[str, bytes]:
    src = FileBlob(path, LAYER, len(blob))
    return {e.name: await read_content(reader, src, e.data, 0, e.size)
            for e in entries if e.type is EntryType.FILE}


@pytest.mark.parametrize("kind", BLOBS)
async def test_stream_table_matches_the_file_build(kind, tar, tmp_path):
    blob = BLOBS[kind](tar)
    path = tmp_path / "layer.gz"
    path.write_bytes(blob)
    want = gzfmt.build_from_file(path, LAYER, span=SPAN)
    ix, got = stream(blob, sizes(1, 1, 200_000))
    assert (got.format, got.lazy) == ("gzip", True)
    assert got.entries == want.entries
    spans = gzfmt.GzipReader(got.state)._spans
    out = gzip.decompress(blob)
    if out:
        check_spans(blob, spans, len(out))
    assert ix.spans == spans and ix.covered == len(out)
    if kind.startswith("level"):
        assert any(e.size > 3 * SPAN for e in got.entries)
        assert len(spans) > len(out) // SPAN // 2
    assert await read_all(gzfmt.GzipReader(got.state), path, blob, got.entries) \
        == tar_contents(blob)


@pytest.mark.parametrize("pieces", [[7] * 10**6, sizes(2, 1, 70_000), [8 << 20] * 2],
                         ids=["7-bytes", "random", "8MiB"])
async def test_piece_sizes_do_not_change_the_table(pieces, tar):
    blob = gzip.compress(tar[:400_000] + bytes(10240), 9, mtime=0)
    _, whole = stream(blob, [])
    _, got = stream(blob, pieces)
    assert got.state == whole.state and got.entries == whole.entries


def test_one_byte_pieces_of_a_small_blob(tar):
    """Short blocks (flushed with Z_BLOCK) so checkpoints fall inside bytes."""
    small = make_tar({"a": tar[100_000:120_000], "b": random.Random(3).randbytes(3000)})
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    blob = b"".join(c.compress(small[i:i + 1000]) + c.flush(zlib.Z_BLOCK)
                    for i in range(0, len(small), 1000)) + c.flush()
    _, whole = stream(blob, [], span=2000)
    _, got = stream(blob, [1] * len(blob), span=2000)
    assert got.state == whole.state and got.entries == whole.entries
    spans = gzfmt.GzipReader(got.state)._spans
    assert len(spans) > 4 and any(s.bits for s in spans)
    check_spans(blob, spans, len(small))


async def test_a_checkpoint_at_the_end_of_the_output_is_dropped(tar, tmp_path):
    """With a checkpoint at every block, the data's last block ends on one
    (its output is all there is); the empty blocks after it go to the last
    span, so spans still run to the end of the blob."""
    blob = trailing_empty_blocks(tar)
    path = tmp_path / "layer.gz"
    path.write_bytes(blob)
    ix, table = stream(blob, [1 << 20] * 4, span=1)
    out = gzip.decompress(blob)
    check_spans(blob, ix.spans, len(out))
    assert ix.spans[-1].ustart + ix.spans[-1].ulen == len(out)
    assert await read_all(gzfmt.reader(table), path, blob, table.entries) == tar_contents(blob)


async def test_entries_and_content_are_served_before_the_end(tar, tmp_path):
    blob = gzip.compress(tar, 6, mtime=0)
    path = tmp_path / "layer.gz"
    path.write_bytes(blob)
    ix = gzfmt.StreamIndexer(LAYER, SPAN)
    entries, covered, produced = [], [0], 0
    d = zlib.decompressobj(31)
    half = len(blob) // 2
    for at in range(0, half, 50_000):
        part = blob[at:min(at + 50_000, half)]
        entries += ix.feed(part)
        produced += len(d.decompress(part))
        assert covered[-1] <= ix.covered <= produced
        covered.append(ix.covered)
    want = tar_contents(blob)
    assert 0 < len(entries) < len(want)
    assert len(ix.spans) >= 3 and ix.covered > 0
    done = [e for e in entries if e.type is EntryType.FILE and
            LOCATOR.unpack(e.data)[0] + e.size <= ix.covered]
    assert len(done) > 10 and any(e.size > SPAN for e in done)
    got = await read_all(gzfmt.GzipReader.from_spans(LAYER, ix.spans), path, blob, done)
    assert got == {e.name: want[e.name] for e in done}
    entries += ix.feed(blob[half:])
    table = ix.finish()
    assert entries == table.entries
    assert {e.name for e in entries if e.type is EntryType.FILE} == set(want)


def damaged(blob: bytes, how: str) -> bytes:
    if how == "flipped":
        mid = len(blob) // 2
        return blob[:mid] + bytes([blob[mid] ^ 0x55]) + blob[mid + 1:]
    if how == "truncated":
        return blob[:len(blob) // 2]
    if how == "trailing-garbage":
        return blob + b"garbage!" * 4
    if how == "trailing-zeros":
        return blob + bytes(64)
    if how == "not-gzip":
        return blob[2:]
    return blob[:-8] + bytes([blob[-8] ^ 1]) + blob[-7:]


@pytest.mark.parametrize("how", ["flipped", "truncated", "trailing-garbage", "trailing-zeros",
                                 "not-gzip", "bad-crc"])
@pytest.mark.parametrize("piece", [1 << 20, 4093])
def test_damage_is_a_layer_format_error(how, piece, tar):
    blob = damaged(gzip.compress(tar[:600_000], 6, mtime=0), how)
    with pytest.raises(LayerFormatError, match=f"^layer {LAYER}: "):
        stream(blob, [piece] * len(blob))


def test_a_failed_indexer_refuses_more_bytes(tar):
    blob = damaged(gzip.compress(tar[:600_000], 6, mtime=0), "flipped")
    ix = gzfmt.StreamIndexer(LAYER, SPAN)
    with pytest.raises(LayerFormatError):
        ix.feed(blob)
    with pytest.raises(LayerFormatError):
        ix.feed(b"more")


def test_windows_keep_only_the_bytes_a_span_uses(tar):
    """Window bytes nothing refers to are zeroed: the state stays near what
    rapidgzip's sparse windows cost, and the output is unchanged."""
    blob = gzip.compress(tar, 6, mtime=0)
    out = gzip.decompress(blob)
    _, table = stream(blob, [1 << 20] * 8)
    spans = gzfmt.GzipReader(table.state)._spans
    windows = [zlib.decompress(s.window) for s in spans if s.window]
    assert len(windows) == len(spans) - 1 > 10
    kept = sum(len(w) - w.count(0) for w in windows)
    assert kept < sum(map(len, windows)) // 3
    assert len(table.state) < len(windows) * 6000
    for s in spans[1:]:
        raw, w = blob[s.start:s.end], zlib.decompress(s.window)
        assert gzfmt.inflate(raw, s.bits, w, s.ulen) == out[s.ustart:s.ustart + s.ulen]


def test_a_window_is_kept_whole_when_its_span_head_is_missing(tar):
    blob = gzip.compress(tar, 6, mtime=0)
    _, table = stream(blob, [1 << 20] * 8)
    s = gzfmt.GzipReader(table.state)._spans[3]
    out = gzip.decompress(blob)
    window = out[s.ustart - 32768:s.ustart]
    raw = blob[s.start:s.end]
    assert gzfmt.used_window(window, raw[:100], s.bits, 32768) == window
    sparse = gzfmt.used_window(window, raw, s.bits, 32768)
    assert len(sparse) == len(window) and sparse != window
    assert gzfmt.inflate(raw, s.bits, sparse, 40_000) == out[s.ustart:s.ustart + 40_000]

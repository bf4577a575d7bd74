"""The streaming inflater over libz: its output, and checkpoints from which
the read path (``gzip.inflate``) resumes to exactly the same bytes."""

import gc
import gzip
import itertools
import random
import sysconfig
import zlib
from pathlib import Path

import pytest

from lazyfs.errors import LayerFormatError
from lazyfs.formats import gzip as gzfmt
from lazyfs.formats.zran import WINDOW, Inflater, Point

LAYER = "sha256:" + "cd" * 32


@pytest.fixture(scope="module")
def text() -> bytes:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    data = b"".join(p.read_bytes() for p in sorted((stdlib / "email").rglob("*.py")))
    assert len(data) > 300_000
    return data[:300_000]


def short_blocks(data: bytes, every: int = 3000) -> bytes:
    """One member whose deflate blocks end every ``every`` bytes, mostly mid-byte."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    return b"".join(c.compress(data[i:i + every]) + c.flush(zlib.Z_BLOCK)
                    for i in range(0, len(data), every)) + c.flush()


def blobs(text: bytes) -> dict[str, tuple[bytes, bytes]]:
    rnd = random.Random(4).randbytes(150_000)
    parts = [text[:70_000], b"", rnd, text[70_000:]]
    return {
        "level6": (gzip.compress(text, 6), text),
        "short-blocks": (short_blocks(text + rnd), text + rnd),
        "stored": (gzip.compress(rnd, 6), rnd),
        "members": (b"".join(gzip.compress(p, 6) for p in parts), b"".join(parts)),
    }


def run(blob: bytes, span: int, piece: int, upto: int | None = None) -> tuple[Inflater, bytes]:
    """Feed ``blob`` in pieces of ``piece`` bytes up to ``upto``, the rest whole."""
    inf = Inflater(LAYER, span)
    out = []
    upto = len(blob) if upto is None else upto
    for i in range(0, upto, piece):
        out += inf.feed(blob[i:min(i + piece, upto)])
    out += inf.feed(blob[upto:])
    inf.finish()
    return inf, b"".join(out)


@pytest.mark.parametrize("kind", ["level6", "short-blocks", "stored", "members"])
def test_output_and_points_do_not_depend_on_piece_sizes(kind, text):
    blob, want = blobs(text)[kind]
    first, out = run(blob, 10_000, len(blob))
    assert out == want
    assert (first.total_in, first.total_out) == (len(blob), len(want))
    for piece, upto in ((1, 15_000), (7, 60_000), (4096, None)):
        inf, out = run(blob, 10_000, piece, upto)
        assert out == want and inf.points == first.points


@pytest.mark.parametrize("kind", ["level6", "short-blocks", "stored", "members"])
def test_every_checkpoint_resumes_to_the_same_bytes(kind, text):
    """The convention of ``gzip.Point``, checked by the code that reads spans."""
    blob, want = blobs(text)[kind]
    inf, _ = run(blob, 4000, 65536)
    points = inf.points
    assert points[0] == Point(0, 0, 0, b"")
    assert len(points) > 2
    if kind == "short-blocks":
        assert len(points) > 50 and any(p.bits for p in points)
    for p, nxt in itertools.pairwise(points):
        assert nxt.out - p.out >= 4000
    # a block can end where the output does (the empty final block follows);
    # dropping that point is the indexer's business
    assert all(p.out < len(want) for p in points[:-1])
    for p in points:
        assert len(p.window) <= WINDOW and want[:p.out].endswith(p.window)
        start = p.cmp - 1 if p.bits else p.cmp
        got = gzfmt.inflate(blob[start:], p.bits, p.window, 5000)
        assert got == want[p.out:p.out + 5000], p


def test_a_member_starts_with_an_empty_window(text):
    """A window never reaches back into the member before: the first
    checkpoint inside a member has only that member's output."""
    blob, want = blobs(text)["members"]
    inf, _ = run(blob, 1, 1 << 20)
    header_end, first_block = [p for p in inf.points if p.out >= 70_000][:2]
    assert (header_end.out, header_end.bits, header_end.window) == (70_000, 0, b"")
    assert 0 < len(first_block.window) < WINDOW
    assert first_block.window == want[70_000:first_block.out]


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "zeros", "one-byte", "header"])
def test_damaged_streams_raise_layer_format_errors(damage, text):
    blob = gzip.compress(text, 6)
    bad = {
        "flip": blob[:5000] + bytes([blob[5000] ^ 0x40]) + blob[5001:],
        "truncate": blob[:-3],
        "garbage": blob + b"not gzip at all",
        "zeros": blob + bytes(16),
        "one-byte": blob + b"\x1f",
        "header": blob + blob[:10],
    }[damage]
    with pytest.raises(LayerFormatError, match=f"^layer {LAYER}: broken gzip stream: "):
        run(bad, 10_000, 1000)


@pytest.mark.parametrize("blob", [b"", b"\x1f", b"PK\x03\x04", zlib.compress(b"x" * 100)])
def test_not_gzip(blob):
    with pytest.raises(LayerFormatError, match="not gzip"):
        run(blob, 10_000, 1)


def test_libz_state_is_freed_on_finish_error_and_drop(text):
    blob = gzip.compress(text, 6)
    inf, _ = run(blob, 10_000, 1 << 20)
    assert not inf._end.alive
    inf = Inflater(LAYER, 10_000)
    with pytest.raises(LayerFormatError):
        list(inf.feed(b"\x1f\x8b\x08\x00" + bytes(6) + b"\xff" * 100))
    assert not inf._end.alive
    with pytest.raises(LayerFormatError, match="after its end"):
        list(inf.feed(blob))
    inf = Inflater(LAYER, 10_000)
    list(inf.feed(blob[:1000]))
    end = inf._end
    del inf
    gc.collect()
    assert not end.alive

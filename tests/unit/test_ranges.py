import pytest

from lazyfs.errors import RegistryError
from lazyfs.registry.ranges import (ContentRange, Part, batches, boundary_of, coalesce, cut,
                           parse_content_range, parse_multipart, range_header)


def test_coalesce_merges_overlapping_adjacent_and_near_spans():
    assert coalesce([(10, 20), (0, 5), (5, 8), (15, 30), (40, 50)]) == [(0, 8), (10, 30), (40, 50)]
    assert coalesce([(0, 5), (9, 12)], gap=4) == [(0, 12)]
    assert coalesce([(0, 5), (10, 12)], gap=4) == [(0, 5), (10, 12)]
    assert coalesce([(3, 3), (7, 2)]) == []
    assert coalesce([(0, 100), (10, 20)]) == [(0, 100)]


def test_batches_cut_long_lists():
    spans = [(i * 10, i * 10 + 5) for i in range(7)]
    assert [len(b) for b in batches(spans, 3)] == [3, 3, 1]
    assert sum(batches(spans, 3), []) == spans


def test_range_header_uses_inclusive_ends():
    assert range_header([(0, 1)]) == "bytes=0-0"
    assert range_header([(0, 10), (20, 31)]) == "bytes=0-9,20-30"
    for bad in ([], [(5, 5)], [(-1, 3)]):
        with pytest.raises(ValueError):
            range_header(bad)


@pytest.mark.parametrize("value, expected", [
    ("bytes 0-9/100", ContentRange(0, 10, 100)),
    ("BYTES 5-5/*", ContentRange(5, 6, None)),
    ("  bytes 90-99/100 ", ContentRange(90, 100, 100)),
    ("bytes 90-100/100", None),
    ("bytes 9-0/100", None),
    ("bytes */100", None),
    ("items 0-9/100", None),
    ("bytes 0-9", None),
    ("", None),
    (None, None),
])
def test_parse_content_range(value, expected):
    assert parse_content_range(value) == expected


def test_boundary_of():
    assert boundary_of("multipart/byteranges; boundary=abc123") == "abc123"
    assert boundary_of('Multipart/ByteRanges;charset=x; boundary="q u"') == "q u"
    assert boundary_of("multipart/byteranges") is None
    assert boundary_of("application/octet-stream") is None
    assert boundary_of(None) is None


def _multipart(boundary: str, parts: list[tuple[int, bytes]], total: int) -> bytes:
    out = b""
    for start, data in parts:
        out += (f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Range: bytes {start}-{start + len(data) - 1}/{total}\r\n\r\n").encode()
        out += data
    return out + f"\r\n--{boundary}--\r\n".encode()


def test_parse_multipart_reads_parts_by_length_even_when_data_holds_the_boundary():
    boundary = "3d6b6a416f9b5"
    tricky = b"x\r\n--3d6b6a416f9b5\r\nContent-Range: bytes 0-1/2\r\n\r\nzz"
    body = _multipart(boundary, [(0, b"hello"), (100, tricky), (500, b"\x00" * 10)], 1000)
    parts = parse_multipart(body, boundary)
    assert parts == [Part(0, 5, b"hello"), Part(100, 100 + len(tricky), tricky),
                     Part(500, 510, b"\x00" * 10)]


@pytest.mark.parametrize("mangle", [
    lambda b: b.replace(b"--B--", b""),                        # no closing boundary
    lambda b: b[:b.index(b"hello") + 3],                       # truncated part
    lambda b: b.replace(b"bytes 0-4/9", b"bytes 4-0/9"),       # impossible Content-Range
    lambda b: b.replace(b"Content-Range", b"X-Range"),         # no Content-Range
    lambda b: b.replace(b"--B", b"--C"),                       # wrong boundary
])
def test_parse_multipart_refuses_broken_bodies(mangle):
    body = _multipart("B", [(0, b"hello")], 9)
    with pytest.raises(RegistryError):
        parse_multipart(mangle(body), "B", "blob x")


def test_cut_takes_each_span_from_the_part_that_covers_it():
    parts = [Part(100, 110, bytes(range(100, 110))), Part(0, 10, bytes(range(10)))]
    assert cut([(2, 4), (100, 101), (105, 110)], parts) == [b"\x02\x03", b"d", bytes(range(105, 110))]
    with pytest.raises(RegistryError, match="5-10"):
        cut([(5, 11)], parts)

import io
import os
import random
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from lazyfs.formats.entry import EntryType
from lazyfs.errors import LayerFormatError
from lazyfs.formats.tarheader import TarParser, parse
from tests.support import tarbytes as tb

LAYER = "sha256:" + "ab" * 32


def one(data: bytes):
    members = parse(data + tb.end(), LAYER)
    assert len(members) == 1
    return members[0].entry


# -- hand-written headers ----------------------------------------------------

FIELD_CASES = [
    ("ustar file", tb.member("a/b.txt", b"hello", mode=0o640, uid=1000, gid=100,
                             uname="alice", gname="staff", mtime=1_600_000_000),
     dict(name="a/b.txt", type=EntryType.FILE, mode=0o640, uid=1000, gid=100, uname="alice",
          gname="staff", size=5, mtime_ns=1_600_000_000 * 10**9)),
    ("setuid setgid sticky, file-type bits masked",
     tb.member("x", b"", mode=0o107755), dict(mode=0o7755)),
    ("ustar prefix", tb.member("name.txt", b"", prefix="p" * 150),
     dict(name="p" * 150 + "/name.txt")),
    ("gnu magic has no prefix field", tb.member("n", b"", prefix="atime-junk", magic=tb.GNU),
     dict(name="n")),
    ("v7 header", tb.member("old", b"abc", magic=tb.V7), dict(name="old", size=3)),
    ("NUL type is a file", tb.member("f", b"z", type=b"\0"), dict(type=EntryType.FILE, size=1)),
    ("NUL type with slash is a dir", tb.member("d/", type=b"\0"), dict(type=EntryType.DIR)),
    ("contiguous is a file", tb.member("c", b"12", type=b"7"), dict(type=EntryType.FILE, size=2)),
    ("hardlink", tb.member("h", type=b"1", linkname="a/b.txt"),
     dict(type=EntryType.HARDLINK, linkname="a/b.txt", size=0)),
    ("symlink", tb.member("s", type=b"2", linkname="../t"), dict(type=EntryType.SYMLINK)),
    ("char device", tb.member("dev/null", type=b"3", devmajor=1, devminor=3),
     dict(type=EntryType.CHAR, devmajor=1, devminor=3)),
    ("block device", tb.member("dev/sda", type=b"4", devmajor=8, devminor=0),
     dict(type=EntryType.BLOCK, devmajor=8)),
    ("dir", tb.member("d", type=b"5", mode=0o1777), dict(type=EntryType.DIR, mode=0o1777)),
    ("fifo", tb.member("p", type=b"6"), dict(type=EntryType.FIFO)),
    ("gnu long name", tb.gnu_long(b"L", "n" * 300) + tb.member("short", b"", magic=tb.GNU),
     dict(name="n" * 300)),
    ("gnu long link", tb.gnu_long(b"K", "t" * 200) + tb.member("s", type=b"2", magic=tb.GNU),
     dict(linkname="t" * 200)),
    ("base-256 uid, gid, mtime",
     tb.member("b", b"", uid=tb.base256(2**40, 8), gid=tb.base256(70000, 8),
               mtime=tb.base256(2**40, 12), magic=tb.GNU),
     dict(uid=2**40, gid=70000, mtime_ns=2**40 * 10**9)),
    ("negative base-256 mtime", tb.member("b", b"", mtime=tb.base256(-10, 12), magic=tb.GNU),
     dict(mtime_ns=-10 * 10**9)),
    ("space-padded octal", tb.member("o", b"", mode=b"   755 \0", uid=b"      7\0"),
     dict(mode=0o755, uid=7)),
    ("utf-8 name", tb.member("caf\u00e9".encode(), b""), dict(name="caf\u00e9")),
    ("non-utf-8 name survives", tb.member(b"bad\xff", b""), dict(name="bad\udcff")),
    ("pax path, linkpath, ids, names",
     tb.pax({"path": "p" * 400, "linkpath": "l" * 300, "uid": "3000000", "gid": "7",
             "uname": "\u00e9ric", "gname": "g"}) + tb.member("x", type=b"2"),
     dict(name="p" * 400, linkname="l" * 300, uid=3000000, gid=7, uname="\u00e9ric", gname="g")),
    ("pax mtime with fraction", tb.pax({"mtime": "1700000000.123456789"}) + tb.member("m"),
     dict(mtime_ns=1700000000123456789)),
    ("pax mtime short fraction", tb.pax({"mtime": "5.5"}) + tb.member("m"),
     dict(mtime_ns=5_500_000_000)),
    ("pax negative mtime", tb.pax({"mtime": "-1.25"}) + tb.member("m"),
     dict(mtime_ns=-1_250_000_000)),
    ("pax schily xattrs, binary value",
     tb.pax({"SCHILY.xattr.user.a": b"\x00\xffv", "SCHILY.xattr.security.capability": b"cap"})
     + tb.member("x"),
     dict(xattrs={"user.a": b"\x00\xffv", "security.capability": b"cap"})),
    ("pax libarchive xattr, base64 without padding, url-encoded name",
     tb.pax({"LIBARCHIVE.xattr.user.a%3Db": "aGVsbG8"}) + tb.member("x"),
     dict(xattrs={"user.a=b": b"hello"})),
    ("pax device numbers", tb.pax({"SCHILY.devmajor": "300", "SCHILY.devminor": "70000"})
     + tb.member("d", type=b"3"), dict(devmajor=300, devminor=70000)),
    ("pax size overrides header", tb.pax({"size": "3"}) + tb.member("s", b"abc", size=0),
     dict(size=3)),
    ("pax empty value keeps the header value", tb.pax({"path": ""}) + tb.member("keep"),
     dict(name="keep")),
    ("unknown pax keys ignored", tb.pax({"atime": "1.5", "comment": "hi"}) + tb.member("k"),
     dict(name="k")),
    ("signed checksum", tb.member("\u00e9\u00e9", b"", signed_checksum=True),
     dict(name="\u00e9\u00e9")),
]


@pytest.mark.parametrize("data, want", [c[1:] for c in FIELD_CASES],
                         ids=[c[0] for c in FIELD_CASES])
def test_header_fields(data, want):
    e = one(data)
    for key, value in want.items():
        assert getattr(e, key) == value, key


def test_offsets_skip_content_and_padding():
    data = (tb.member("a", b"x" * 700) + tb.pax({"path": "long/" + "b" * 200})
            + tb.member("b", b"yy") + tb.member("d", type=b"5") + tb.member("c", b"") + tb.end())
    ms = parse(data, LAYER)
    assert [m.entry.name for m in ms] == ["a", "long/" + "b" * 200, "d", "c"]
    for m in ms:
        if m.entry.size:
            assert data[m.offset:m.offset + m.entry.size] in (b"x" * 700, b"yy")
    assert ms[0].offset == 512 and ms[1].offset == 512 + 1024 + 1024 + 512


def test_header_only_types_have_no_content_whatever_the_size_field():
    data = tb.header("h", type=b"1", linkname="a", size=5) + tb.member("next", b"n") + tb.end()
    ms = parse(data, LAYER)
    assert [(m.entry.name, m.entry.size) for m in ms] == [("h", 0), ("next", 1)]


def test_global_pax_applies_to_later_entries_but_not_path():
    data = (tb.member("before") + tb.pax({"uid": "42", "path": "everything", "mtime": "9"},
                                        type=b"g")
            + tb.member("a") + tb.pax({"uid": "7"}) + tb.member("b") + tb.member("c") + tb.end())
    got = [(m.entry.name, m.entry.uid, m.entry.mtime_ns) for m in parse(data, LAYER)]
    assert got == [("before", 0, 1_700_000_000 * 10**9), ("a", 42, 9 * 10**9),
                   ("b", 7, 9 * 10**9), ("c", 42, 9 * 10**9)]


def test_per_entry_records_do_not_leak_to_the_next_entry():
    data = (tb.gnu_long(b"L", "x" * 200) + tb.pax({"uid": "5"}) + tb.member("a", magic=tb.GNU)
            + tb.member("b") + tb.end())
    got = [(m.entry.name, m.entry.uid) for m in parse(data, LAYER)]
    assert got == [("x" * 200, 5), ("b", 0)]


def test_end_of_archive():
    body = tb.member("a", b"1")
    assert len(parse(body + tb.end() + b"garbage after the end", LAYER)) == 1
    assert len(parse(body, LAYER)) == 1
    assert len(parse(body + bytes(512), LAYER)) == 1
    p = TarParser(LAYER)
    p.feed(body + tb.end())
    assert p.done


BAD_CASES = [
    ("bad checksum", tb.member("a", b"", checksum=1234), "bad header checksum"),
    ("checksum field not octal", tb.member("a")[:148] + b"zzzzzz\0 " + tb.member("a")[156:],
     "bad header checksum"),
    ("gnu sparse type", tb.member("sp", b"", type=b"S"), "sparse"),
    ("pax gnu sparse", tb.pax({"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}) + tb.member("s"),
     "sparse"),
    ("unknown type", tb.member("v", type=b"V"), "unsupported entry type 'V'"),
    ("negative size", tb.member("n", size=tb.base256(-1, 12), magic=tb.GNU), "impossible size"),
    ("absurd size", tb.member("n", size=tb.base256(2**63, 12), magic=tb.GNU), "impossible size"),
    ("absurd pax size", tb.pax({"size": str(2**64)}) + tb.member("n"), "impossible size"),
    ("bad octal", tb.member("n", size=b"12x\0"), "bad size field"),
    ("negative uid", tb.member("n", uid=tb.base256(-2, 8), magic=tb.GNU), "negative uid"),
    ("malformed pax length", tb.member("PaxHeaders/x", b"99 path=a\n", type=b"x")
     + tb.member("n"), "malformed PAX record"),
    ("pax record without =", tb.member("PaxHeaders/x", b"9 pathab\n", type=b"x")
     + tb.member("n"), "PAX record without '='"),
    ("bad pax number", tb.pax({"uid": "-3"}) + tb.member("n"), "bad PAX uid"),
    ("bad pax mtime", tb.pax({"mtime": "1e9"}) + tb.member("n"), "bad PAX mtime"),
    ("huge pax record", tb.header("PaxHeaders/x", type=b"x", size=(1 << 20) + 1),
     "too large"),
    ("lone zero block then header", tb.member("a") + bytes(512) + tb.member("b"),
     "lone zero block"),
]


@pytest.mark.parametrize("data, message", [c[1:] for c in BAD_CASES],
                         ids=[c[0] for c in BAD_CASES])
def test_rejects(data, message):
    with pytest.raises(LayerFormatError, match=message) as info:
        parse(data + tb.end(), LAYER)
    assert LAYER in str(info.value)


def test_error_names_the_entry():
    data = tb.member("ok", b"") + tb.member("the/bad/one", b"", checksum=1)
    with pytest.raises(LayerFormatError, match=r"'the/bad/one' at offset 512: bad header checksum"):
        parse(data, LAYER)


TRUNCATIONS = {
    "inside a header": 512 + 100,
    "inside content": 512 + 512 + 200,
    "inside padding": 512 + 512 + 1000,
    "after a pax header": 512 + 512 + 1024 + 1024,
}


@pytest.mark.parametrize("cut", TRUNCATIONS.values(), ids=TRUNCATIONS.keys())
def test_truncated(cut):
    data = (tb.member("a", b"1") + tb.member("b", b"2" * 1000)
            + tb.pax({"path": "c"}) + tb.member("c") + tb.end())
    with pytest.raises(LayerFormatError, match="truncated"):
        parse(data[:cut], LAYER)


def test_pieces_of_any_size_give_the_same_members():
    data = (tb.member("a", b"x" * 1000) + tb.gnu_long(b"L", "L" * 150) + tb.member("b", b"y")
            + tb.pax({"path": "p" * 120, "SCHILY.xattr.user.k": "v"}) + tb.member("c", b"z" * 513)
            + tb.member("d", type=b"5") + tb.end())
    whole = [(m.offset, m.entry) for m in parse(data, LAYER)]
    rng = random.Random(7)
    for split in list(range(1, len(data), 37)) + [None] * 20:
        p = TarParser(LAYER)
        got = []
        if split is None:
            pos = 0
            while pos < len(data):
                n = rng.randint(1, 700)
                got += p.feed(data[pos:pos + n])
                pos += n
        else:
            got = p.feed(data[:split]) + p.feed(memoryview(data)[split:])
        p.close()
        assert [(m.offset, m.entry) for m in got] == whole


# -- archives written by GNU tar, checked against what GNU tar extracts -----

def _tree(root: Path, long_names: bool) -> None:
    (root / "dir/sub").mkdir(parents=True)
    (root / "dir/file.txt").write_bytes(b"hello\n")
    (root / "dir/empty").write_bytes(b"")
    (root / "dir/big.bin").write_bytes(os.urandom(300_000))
    os.chmod(root / "dir/big.bin", 0o4755)
    os.chmod(root / "dir/sub", 0o3775)
    os.link(root / "dir/file.txt", root / "dir/hard")
    os.symlink("file.txt", root / "dir/link")
    os.mkfifo(root / "dir/fifo")
    os.mknod(root / "dir/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(root / "dir/blk", 0o660 | stat.S_IFBLK, os.makedev(259, 1048575))
    os.utime(root / "dir/file.txt", ns=(0, 1_234_567_891_987_654_321))
    if long_names:
        os.chown(root / "dir/empty", 4_000_000, 123456)
    subprocess.run(["setfattr", "-n", "user.note", "-v", "0x00ff10", str(root / "dir/file.txt")],
                   check=True)
    subprocess.run(["setfattr", "-n", "user.other", "-v", "text", str(root / "dir/big.bin")],
                   check=True)
    if long_names:
        deep = root / "dir" / ("d" * 120) / ("e" * 120)
        deep.mkdir(parents=True)
        (deep / ("f" * 100)).write_bytes(b"deep")
        os.symlink("t" * 150, root / "dir/longlink")


@pytest.mark.parametrize("fmt", ["gnu", "posix", "ustar"])
def test_matches_gnu_tar(tmp_path, fmt):
    src = tmp_path / "src"
    src.mkdir()
    _tree(src, long_names=fmt != "ustar")
    archive = tmp_path / "a.tar"
    subprocess.run(["tar", f"--format={fmt}", "--xattrs", "--xattrs-include=*", "--numeric-owner",
                    "-C", src, "-cf", archive, "dir"], check=True, capture_output=True)
    data = archive.read_bytes()
    members = parse(data, LAYER)
    listed = subprocess.run(["tar", "-tf", archive], check=True, capture_output=True,
                            text=True).stdout.splitlines()
    assert [m.entry.name for m in members] == listed

    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner",
                    "--same-permissions", "--same-owner", "-C", out, "-xf", archive], check=True)
    seen_types = set()
    for m in members:
        e = m.entry
        p = out / e.name
        st = os.lstat(p)
        seen_types.add(e.type)
        if e.type is EntryType.HARDLINK:
            assert st.st_ino == os.lstat(out / e.linkname).st_ino
            continue
        assert stat.S_IMODE(st.st_mode) == e.mode, e.name
        assert (st.st_uid, st.st_gid) == (e.uid, e.gid), e.name
        if e.type is not EntryType.DIR and e.type is not EntryType.SYMLINK:
            assert e.mtime_ns // 10**9 == st.st_mtime_ns // 10**9, e.name
        kind = {EntryType.FILE: stat.S_ISREG, EntryType.DIR: stat.S_ISDIR,
                EntryType.SYMLINK: stat.S_ISLNK, EntryType.CHAR: stat.S_ISCHR,
                EntryType.BLOCK: stat.S_ISBLK, EntryType.FIFO: stat.S_ISFIFO}[e.type]
        assert kind(st.st_mode), e.name
        if e.type is EntryType.FILE:
            assert data[m.offset:m.offset + e.size] == p.read_bytes()
        if e.type is EntryType.SYMLINK:
            assert os.readlink(p) == e.linkname
        if e.type in (EntryType.CHAR, EntryType.BLOCK):
            assert (e.devmajor, e.devminor) == (os.major(st.st_rdev), os.minor(st.st_rdev))
        if fmt == "posix" and e.type is not EntryType.SYMLINK:
            want = {k: os.getxattr(p, k, follow_symlinks=False)
                    for k in os.listxattr(p, follow_symlinks=False) if k.startswith("user.")}
            assert e.xattrs == want, e.name
    assert seen_types == set(EntryType)
    if fmt == "posix":
        by_name = {m.entry.name: m.entry for m in members}
        assert by_name["dir/file.txt"].xattrs == {"user.note": b"\x00\xff\x10"}
        assert by_name["dir/file.txt"].mtime_ns == 1_234_567_891_987_654_321
        assert by_name["dir/empty"].uid == 4_000_000



# -- archives written by tarfile, read back by tarfile -------------------------

_TARFILE_TYPES = {tarfile.REGTYPE: EntryType.FILE, tarfile.DIRTYPE: EntryType.DIR,
                  tarfile.SYMTYPE: EntryType.SYMLINK, tarfile.LNKTYPE: EntryType.HARDLINK,
                  tarfile.CHRTYPE: EntryType.CHAR, tarfile.BLKTYPE: EntryType.BLOCK,
                  tarfile.FIFOTYPE: EntryType.FIFO}


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_random_archives_match_tarfile(fmt):
    rng = random.Random(fmt)
    buf = io.BytesIO()
    ustar = fmt == tarfile.USTAR_FORMAT
    limit, link_limit = (120, 99) if ustar else (400, 400)
    alphabet = "abxyz-_." if ustar else "ab\u00e9\u4e2dxyz-_."
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for i in range(300):
            name = "/".join("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
                            for _ in range(rng.randint(1, 6)))[:limit] + str(i)
            ti = tarfile.TarInfo(name)
            ti.type = rng.choice(list(_TARFILE_TYPES))
            ti.mode = rng.randrange(0o10000)
            ti.uid, ti.gid = rng.randrange(1 << 21), rng.randrange(1 << 21)
            ti.mtime = rng.randrange(1 << 33)
            ti.uname, ti.gname = "u" * rng.randint(0, 31), "g"
            data = b""
            if ti.type == tarfile.REGTYPE:
                data = rng.randbytes(rng.choice([0, 1, 511, 512, 513, 5000]))
                ti.size = len(data)
            elif ti.type in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                ti.linkname = "t" * rng.randint(1, link_limit)
            elif ti.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
                ti.devmajor, ti.devminor = rng.randrange(4096), rng.randrange(1 << 20)
            tf.addfile(ti, io.BytesIO(data) if data else None)
    data = buf.getvalue()
    ours = parse(data, LAYER)
    theirs = tarfile.open(fileobj=io.BytesIO(data)).getmembers()
    assert len(ours) == len(theirs) == 300
    for m, ti in zip(ours, theirs):
        e = m.entry
        assert (e.name.rstrip("/"), e.type, e.mode, e.uid, e.gid, e.mtime_ns, e.uname, e.gname,
                e.linkname) == (ti.name, _TARFILE_TYPES[ti.type], ti.mode, ti.uid, ti.gid,
                                int(ti.mtime) * 10**9, ti.uname, ti.gname, ti.linkname)
        if e.type is EntryType.FILE:
            assert (e.size, m.offset) == (ti.size, ti.offset_data)
        if e.type in (EntryType.CHAR, EntryType.BLOCK):
            assert (e.devmajor, e.devminor) == (ti.devmajor, ti.devminor)


@pytest.mark.parametrize("declare", ["pax", "base256"])
def test_file_over_8_gib_is_listed_from_its_header_alone(declare):
    """The 12-byte octal field tops out at 8 GiB; PAX ``size`` and GNU base-256
    carry larger files. Listing one needs only its header: the content is
    skipped, never buffered."""
    big = 9 * 2**30 + 7
    if declare == "pax":
        head = tb.pax({"size": str(big)}) + tb.header("huge.img", size=0)
    else:
        head = tb.header("huge.img", size=tb.base256(big, 12))
    parser = TarParser("sha256:" + "0" * 64)
    (member,) = parser.feed(head)
    assert member.entry.size == big and member.entry.name == "huge.img"
    assert member.offset == len(head)
    assert parser.feed(b"\0" * 4096) == []  # inside the content: nothing more is emitted

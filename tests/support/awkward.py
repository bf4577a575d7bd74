"""The awkward three-layer image every reader and view is checked on.

It holds what real images hold and naive unpackers get wrong: whiteouts and
opaque directories across layers, a directory replaced by a file and back,
hardlinks, absolute symlinks, device nodes, setuid files, xattrs, unicode and
space names, empty files, and a directory of 10,000 entries.
"""

from __future__ import annotations

from lazyfs.formats.entry import Entry, EntryType
from tests.support.ocilayout import tar_from_entries

T = 1_700_000_000 * 10**9
F, D, L, H = EntryType.FILE, EntryType.DIR, EntryType.SYMLINK, EntryType.HARDLINK


def _f(name: str, data: bytes | str, mode: int = 0o644, **kw) -> Entry:
    data = data.encode() if isinstance(data, str) else data
    return Entry(name, F, mode, size=len(data), mtime_ns=T, data=data, **kw)


def _d(name: str, mode: int = 0o755, **kw) -> Entry:
    return Entry(name, D, mode, mtime_ns=T, **kw)


def awkward_layers(many: int = 10_000) -> list[list[Entry]]:
    big = bytes(range(256)) * 12_000  # ~3 MB: several chunks and spans
    l1 = [
        _d("etc/"), _f("etc/os-release", "ID=awkward\nVERSION_ID=1\n"),
        _f("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n"),
        _f("etc/group", "root:x:0:\nusers:x:100:\n"),
        _d("usr/"), _d("usr/bin/"),
        _f("usr/bin/tool", b"\x7fELF" + b"t" * 5000, 0o755),
        Entry("usr/bin/tool-link", H, 0o755, mtime_ns=T, linkname="usr/bin/tool"),
        _f("usr/bin/su", "setuid", 0o4755), _f("usr/bin/wall", "setgid", 0o2755),
        _d("tmp/", 0o1777),
        Entry("bin", L, 0o777, mtime_ns=T, linkname="usr/bin"),
        Entry("etc/localtime", L, 0o777, mtime_ns=T, linkname="/usr/share/zoneinfo/UTC"),
        _d("dev/"),
        Entry("dev/null", EntryType.CHAR, 0o666, mtime_ns=T, devmajor=1, devminor=3),
        Entry("dev/sda", EntryType.BLOCK, 0o660, gid=6, mtime_ns=T, devmajor=8, devminor=0),
        Entry("dev/fifo", EntryType.FIFO, 0o644, mtime_ns=T),
        _d("opt/"), _f("opt/a", "a"), _f("opt/b", "b"),
        _d("data/"), _d("data/old/"), _f("data/old/x", "old"), _f("data/keep", "lower"),
        _f("x", "x is a file"), _d("d2/"), _f("d2/inner", "inner"),
        _f("empty", b""), _f("ünï cödé.txt", "unicode\n"), _f("with space", "space\n"),
        _f("caps", "cap", 0o755, xattrs={"user.comment": b"hello"}),
        _f("owned", "owned", 0o640, uid=1000, gid=100, uname="user", gname="users"),
        _f("big.bin", big),
        _d("many/"),
        *(_f(f"many/f{i:05d}", f"{i}\n") for i in range(many)),
    ]
    l2 = [
        _f("opt/.wh.a", b""),
        _d("data/"), _f("data/.wh..wh..opq", b""), _f("data/new", "upper"),
        _f("d2", "d2 is now a file"),
        _d("x/"), _f("x/child", "x is now a dir"),
        _f("etc/os-release", "ID=awkward\nVERSION_ID=2\n"),
    ]
    l3 = [
        _f(".wh.d2", b""), _d("d2/"), _f("d2/again", "dir again"),
        _f("usr/bin/tool", b"\x7fELF" + b"u" * 7000, 0o755),
        Entry("usr/bin/tool-link2", H, 0o755, mtime_ns=T, linkname="usr/bin/tool"),
        _f("many/.wh.f00000", b""),
    ]
    return [l1, l2, l3]


def awkward_tars(many: int = 10_000) -> list[bytes]:
    return [tar_from_entries(layer) for layer in awkward_layers(many)]

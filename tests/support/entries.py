"""Tar entries in a line each, for tables of overlay cases."""

from __future__ import annotations

from lazyfs.formats.entry import Entry, EntryType

T = EntryType


def F(name, data=b"", mode=0o644, **kw):
    return Entry(name, T.FILE, mode, size=len(data), data=data, **kw)


def D(name, mode=0o755, **kw):
    return Entry(name, T.DIR, mode, **kw)


def L(name, target):
    return Entry(name, T.SYMLINK, 0o777, linkname=target)


def H(name, target):
    return Entry(name, T.HARDLINK, 0o644, linkname=target)


def W(path):
    head, _, base = path.rpartition("/")
    return F(f"{head}/.wh.{base}" if head else f".wh.{base}")


def OPQ(dir):
    return F(f"{dir}/.wh..wh..opq")


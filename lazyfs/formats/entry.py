"""What a layer format yields: one tar entry, before any merging.

The layer formats produce these; the merged index consumes them. ``data`` is
opaque outside the format that made it: it says where the entry's content
lies in the blob (a tar offset, a list of chunks, ...), and only that format's
``read`` knows how to use it.
"""

from __future__ import annotations

import enum
import gc
from contextlib import contextmanager
from dataclasses import dataclass, field


class EntryType(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"


@dataclass(slots=True)
class Entry:
    name: str
    """The name as stored in the archive; normalising it is the index's job."""
    type: EntryType
    mode: int
    """Permission bits including setuid/setgid/sticky (``& 0o7777``)."""
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    size: int = 0
    mtime_ns: int = 0
    linkname: str = ""
    """Symlink target, or for hardlinks the archive name of the target."""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    data: bytes = b""
    """Format-specific locator of the content; empty for non-files."""


@contextmanager
def gc_paused():
    """For building or loading a whole layer's entries (or an index of them):
    a few objects per entry, none garbage until the end, and the cyclic
    collector would rescan them all every few thousand allocations (~30% of
    the work) for nothing."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()

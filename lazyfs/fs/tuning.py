"""Settings a daemon makes for itself and its mount: the C heap, the open
files limit, the kernel's readahead for the mount."""

from __future__ import annotations

import ctypes
import logging
import resource

log = logging.getLogger(__name__)

READ_AHEAD_KB = 1024
_M_ARENA_MAX = -8
"""mallopt(3): the most malloc arenas glibc makes."""
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 4200 << 10
_M_TRIM_THRESHOLD = -1
_TRIM_THRESHOLD = 8 << 20


def tune_heap() -> None:
    """Two glibc malloc arenas instead of eight per core: each worker thread
    that decodes or hashes would otherwise get an arena of its own, which
    keeps what it once held, so the daemon's RSS grew with the number of
    threads ever busy rather than with the bytes actually live. And a fixed
    mmap threshold: glibc otherwise raises it to the size of the largest
    block freed, after which multi-MiB buffers (fetched spans, decoded
    pieces) come from the heap, which keeps its high-water mark, rather than
    from mmap, which gives them back when freed. It is just above a 4 MiB
    piece: a fresh mapping costs page faults on every use, and FUSE answers
    (1 MiB) and pieces come and go all the time (cold reads ran ~15% slower
    with 2 MiB); for the same reason up to 8 MiB free at the top of the
    heap is kept rather than trimmed after every answer (warm reads took
    twice the CPU). Free memory inside the heap goes back to the system
    from the reader, at most once a second (``read.memory.trim_heap``)."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_ARENA_MAX, 2)
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    except (OSError, AttributeError):
        pass


def more_open_files() -> None:
    """The soft limit on open files raised to the hard one (as Go programs
    do by themselves): each image's reader keeps up to 32 chunk-cache files
    open, and ``lazyfs serve`` holds many images in one process, where
    1024 descriptors would run out."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError):
        pass


def raise_readahead(dev: str) -> None:
    """Bigger kernel readahead doubles sequential throughput; best effort.
    ``dev``: the mount's ``major:minor``."""
    bdi = f"/sys/class/bdi/{dev}/read_ahead_kb"
    try:
        with open(bdi, "w") as f:
            f.write(str(READ_AHEAD_KB))
    except OSError as e:
        log.debug("cannot raise readahead via %s: %s", bdi, e)

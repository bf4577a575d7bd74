"""Decoded, verified pieces of layer content, on disk and shared by every
lazyfs process. (Keeping pieces in memory is the reader's business.)

A piece lives at ``chunks/<algo>/<hex[:2]>/<hex>/<key>`` (one directory per
layer): a header holding its length, a CRC-32 per 64 KiB block, seeded with
the piece's key, then its bytes (``piecefile``). Files appear only by renaming
a complete tmp file, and every read checks the blocks it serves, so neither a
crash mid-write nor a torn or corrupted file after a power cut can put wrong
bytes in front of a reader: such a file is deleted and its piece fetched
again. That check is also why writes are not fsynced: durability would buy
nothing the check does not already give. It guards against accidents, not
forgery (whoever can write the cache could forge any checksum; the format
verified each piece before it was kept), so it is CRC-32: a warm read of a
large file is mostly this check, and per block it can be done for each read
as it is served rather than for a whole piece loaded first.

The disk part is bounded (``LAZYFS_CACHE_SIZE``, at most the size of the file
system it is on), and the bound counts, besides the pieces, the whole blobs
no pulled image keeps (``WholeBlobs``: a first mount's gzip layers, single-
frame zstd layers' decompressed copies), which are as re-fetchable as a
piece. Eviction drops the least recently used files, going by mtime, which a
hit refreshes at most once a minute so that hits stay read-only on the disk.
Files of layers that a live process holds a *lease* on go last, but they do
go: a mounted image fetches again what it needs, where a cache that kept
everything a mount ever read would hold no bound at all. A lease is a small
file under ``chunks/leases/`` listing layer digests, held with a shared
``flock`` that dies with its process, so a lease nobody holds any more is
recognised as stale without trusting pids.

The bound holds within one piece per writing process: a write that crosses
it evicts before returning, and the size on disk is looked at afresh every
``RESCAN_EVERY`` seconds of writing, so whole blobs that other code stored
are counted too.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ..errors import CacheError, UsageError, warn
from ..formats import Piece
from .piecefile import Damaged, PieceFile, header, header_size
TOUCH_EVERY = 60.0
"""Seconds between mtime refreshes of a piece that keeps being hit."""
DEFAULT_CACHE_SIZE = 10 << 30
DEFAULT_FRACTION = 0.10
"""Without ``LAZYFS_CACHE_SIZE``: this share of the file system, at most ``DEFAULT_CACHE_SIZE``."""
EVICT_TO = 0.9
"""Eviction goes this far below the limit, so it does not run again on the next put."""
STALE_TMP_SECONDS = 600
RESCAN_EVERY = 2.0
"""Seconds after which a write counts the files on disk again rather than adding."""
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
_TMP = re.compile(r"^\..*\.(\d+)\.[0-9a-f]+\.tmp$")


@dataclass(frozen=True)
class ChunkPrune:
    files: int = 0
    bytes_freed: int = 0


def parse_size(text: str) -> int:
    """``10G``, ``500M``, ``1.5GiB``, ``4096``: binary units, as ``du -h`` shows them."""
    m = _SIZE.match(text)
    if not m:
        raise UsageError(f"not a size: {text!r} (use e.g. 500M or 10G)")
    return int(float(m[1]) * _UNITS[m[2].upper()])


def cache_size_limit(root: Path) -> int:
    """``LAZYFS_CACHE_SIZE``, or a tenth of the file system the cache is on (at most 10 GiB).

    A size larger than that file system is clamped to it, with a warning,
    rather than refused: the user asked for "as much as there is", and
    eviction keeps working, where a limit that can never be reached would
    let the disk fill up before any piece is dropped."""
    text = os.environ.get("LAZYFS_CACHE_SIZE")
    asked = parse_size(text) if text else None
    try:
        st = os.statvfs(_existing(root))
    except OSError:
        return DEFAULT_CACHE_SIZE if asked is None else asked
    fs_size = st.f_blocks * st.f_frsize
    if asked is None:
        return min(DEFAULT_CACHE_SIZE, int(fs_size * DEFAULT_FRACTION))
    if asked > fs_size:
        _warn_once(f"cache size {text.strip()} is larger than the file system holding "
                   f"{root} ({_gib(fs_size)}); using {_gib(fs_size)}")
        return fs_size
    return asked


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """Each process opens several caches on one store: one warning each."""
    if message not in _warned:
        _warned.add(message)
        warn(message)


def _gib(size: int) -> str:
    return f"{size / (1 << 30):.1f}G"


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


class Lease:
    """Held while a reader may use pieces of ``layers``; see the module docstring."""

    def __init__(self, directory: Path, layers: Iterable[str]):
        name = f"{os.getpid()}.{secrets.token_hex(6)}"
        tmp = directory / f".{name}.tmp"
        self.path = directory / name
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._file = open(tmp, "w+")
            fcntl.flock(self._file.fileno(), fcntl.LOCK_SH)
            self._file.write("".join(f"{d}\n" for d in sorted(set(layers))))
            self._file.flush()
            os.rename(tmp, self.path)
        except OSError as e:
            raise CacheError(f"cannot take a lease in {directory}: {e.strerror}") from None

    def close(self) -> None:
        if not self._file.closed:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self._file.close()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class WholeBlobs:
    """The store's ``blobs/`` directory as the cache's bound sees it."""

    directory: Path
    kept: Callable[[], set[str]]
    """Digests of the blobs pulled images keep: not counted, never evicted."""
    no_pull: Callable[[], contextlib.AbstractContextManager[bool]]
    """Held while blobs are evicted; False while a pull may be about to
    record blobs it fetched (then none is evicted)."""


class ChunkCache:
    """The pieces on disk; every method blocks (call from a worker thread)."""

    def __init__(self, root: Path | None, limit: int | None = None,
                 blobs: WholeBlobs | None = None):
        self.root = root
        self.blobs = blobs
        self.limit = limit if limit is not None else (cache_size_limit(root) if root else 0)
        self._scanned = 0.0
        self.corrupt = 0
        """Pieces found torn or corrupted on disk (and deleted) by this process."""
        self.loads = 0
        """Piece files opened (and checked) by this process."""
        self._disk_bytes: int | None = None

    def path(self, layer: str, piece: Piece) -> Path:
        if self.root is None:
            raise CacheError("this chunk cache has no directory")
        algo, _, hexd = layer.partition(":")
        return self.root / algo / hexd[:2] / hexd / _tag(piece)

    def open(self, layer: str, piece: Piece) -> PieceFile | None:
        """The piece's file, open, if it is there and its header and size are
        right (its blocks are checked as they are read); a bad file is deleted."""
        if self.root is None:
            return None
        path = self.path(layer, piece)
        try:
            f = PieceFile.open(path, _tag(piece))
        except Damaged:
            self.discard(layer, piece)
            return None
        if f is None:
            return None
        self.loads += 1
        if time.time() - f.mtime > TOUCH_EVERY:
            with contextlib.suppress(OSError):
                os.utime(path)
        return f

    def load(self, layer: str, piece: Piece) -> bytes | None:
        """The piece's bytes from disk if it is there and intact; a bad file is deleted."""
        f = self.open(layer, piece)
        if f is None:
            return None
        try:
            return f.read_all()
        except Damaged:
            self.discard(layer, piece)
            return None
        finally:
            f.close()

    def discard(self, layer: str, piece: Piece) -> None:
        """Delete a piece's file found damaged (by this cache or by a reader of its file)."""
        self.corrupt += 1
        with contextlib.suppress(OSError, CacheError):
            self.path(layer, piece).unlink()

    def store(self, layer: str, piece: Piece, data: bytes) -> PieceFile | None:
        """Write the piece (already verified by its format) and keep the size
        limit; the file written, open for reading (``None`` without a directory)."""
        if self.root is None:
            return None
        path = self.path(layer, piece)
        tag = _tag(piece)
        head = header(tag, data)
        try:
            try:
                written = _write_piece(path, head, data)
            except FileNotFoundError:
                # An eviction elsewhere removed the layer's directory once it was empty.
                written = _write_piece(path, head, data)
        except OSError as e:
            raise CacheError(f"cannot write to chunk cache {self.root}: {e.strerror}") from None
        if self._disk_bytes is None or time.monotonic() - self._scanned > RESCAN_EVERY:
            self._disk_bytes = self.disk_bytes()
        else:
            self._disk_bytes += header_size(len(data)) + len(data)
        if self._disk_bytes > self.limit:
            self.evict()
        try:
            return PieceFile.adopt(written, tag)
        except (Damaged, OSError):
            os.close(written)
            return None

    def disk_bytes(self) -> int:
        """What the bound counts: pieces (tmp files too) and unkept whole blobs."""
        self._scanned = time.monotonic()
        return sum(f.size for f in self._scan()) + sum(f.size for f in self._scan_blobs())

    def lease(self, layers: Iterable[str]) -> Lease | contextlib.nullcontext:
        if self.root is None:
            return contextlib.nullcontext()
        return Lease(self.root / "leases", layers)

    def leased(self) -> set[str]:
        """Layer digests some live process holds a lease on; stale leases are removed."""
        found: set[str] = set()
        if self.root is None or not (self.root / "leases").is_dir():
            return found
        for entry in os.scandir(self.root / "leases"):
            if entry.name.startswith("."):
                continue
            try:
                f = open(entry.path)
            except FileNotFoundError:
                continue
            with f:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    found.update(line.strip() for line in f if line.strip())
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
        return found

    def evict(self, target: int | None = None, everything: bool = False) -> ChunkPrune:
        """Drop least recently used files until the cache holds at most
        ``target`` bytes (default: just under the limit); ``everything``:
        every file of an unleased layer."""
        if self.root is None or not self.root.is_dir():
            return ChunkPrune()
        target = int(self.limit * EVICT_TO) if target is None else target
        with try_lock(self.root / "evict.lock") as locked:
            if not locked:
                return ChunkPrune()
            keep = self.leased()
            files = []
            n = freed = 0
            for f in self._scan():
                if not f.tmp:
                    files.append(f)
                elif _abandoned(f) and _unlink(f.path):
                    n, freed = n + 1, freed + f.size
            with self._blobs_free() as free:
                files += self._scan_blobs() if free else []
                n, freed = self._drop(files, keep, target, everything, n, freed)
            _remove_empty_dirs(self.root)
        return ChunkPrune(n, freed)

    @contextlib.contextmanager
    def _blobs_free(self) -> Iterator[bool]:
        if self.blobs is None:
            yield False
            return
        with self.blobs.no_pull() as free:
            yield free

    def _drop(self, files: list[_File], keep: set[str], target: int, everything: bool,
              n: int, freed: int) -> tuple[int, int]:
        """Unlink ``files`` until ``target`` bytes remain: unleased layers'
        first, then leased ones, each oldest first."""
        files.sort(key=lambda f: (f.layer in keep, f.mtime))
        total = sum(f.size for f in files)
        for f in files:
            if not everything and total <= target:
                break
            if everything and f.layer in keep:
                continue
            if _unlink(f.path):
                n, freed = n + 1, freed + f.size
            total -= f.size
        self._disk_bytes = total
        self._scanned = time.monotonic()
        return n, freed

    def _scan_blobs(self) -> list[_File]:
        """Whole blobs no pulled image keeps (their digest stands for their layer)."""
        if self.blobs is None:
            return []
        try:
            kept = self.blobs.kept()
        except CacheError:
            return []  # no image records to go by: whole blobs are left alone
        out = []
        for algo in _dirs(self.blobs.directory):
            for entry in os.scandir(algo.path):
                digest = f"{algo.name}:{entry.name}"
                if digest in kept:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                out.append(_File(entry.path, digest, st.st_size, st.st_mtime, False))
        return out

    def _scan(self) -> Iterator[_File]:
        if self.root is None:
            return
        for algo in _dirs(self.root):
            if algo.name == "leases":
                continue
            for prefix in _dirs(Path(algo.path)):
                for layer in _dirs(Path(prefix.path)):
                    digest = f"{algo.name}:{layer.name}"
                    for entry in os.scandir(layer.path):
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        yield _File(entry.path, digest, st.st_size, st.st_mtime,
                                    entry.name.startswith("."))


def prune_chunks(store, all: bool = False) -> ChunkPrune:
    """For ``lazyfs prune``: the chunk cache brought under its limit (abandoned
    tmp files and stale leases removed too); with ``all``, every piece of
    every layer no live process holds a lease on. Blocking."""
    cache = ChunkCache(Path(store.root) / "chunks")
    return cache.evict(target=0 if all else None, everything=all)


@dataclass(frozen=True, slots=True)
class _File:
    path: str
    layer: str
    size: int
    mtime: float
    tmp: bool


def _tag(piece: Piece) -> str:
    return hashlib.sha256(repr(piece.key).encode()).hexdigest()[:32]


def _write_piece(path: Path, head: bytes, data: bytes) -> int:
    """Write and rename into place; the file's descriptor, still open (for reading too)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, head)
        _write_all(fd, data)
        os.replace(tmp, path)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[:1 << 20]):]


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def _abandoned(f: _File) -> bool:
    """A tmp file whose writer died, or one so old that no writer can still be at it."""
    if time.time() - f.mtime > STALE_TMP_SECONDS:
        return True
    m = _TMP.match(os.path.basename(f.path))
    if not m:
        return True
    try:
        os.kill(int(m[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _dirs(path: Path) -> list[os.DirEntry]:
    try:
        return [e for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def _remove_empty_dirs(root: Path) -> None:
    for algo in _dirs(root):
        if algo.name == "leases":
            continue
        for prefix in _dirs(Path(algo.path)):
            for layer in _dirs(Path(prefix.path)):
                with contextlib.suppress(OSError):
                    os.rmdir(layer.path)
            with contextlib.suppress(OSError):
                os.rmdir(prefix.path)


@contextlib.contextmanager
def try_lock(path: Path) -> Iterator[bool]:
    """An exclusive ``flock`` on ``path`` held for the block if nobody holds
    one (True), else nothing (False), without waiting."""
    try:
        f = open(path, "a+b")
    except OSError:
        yield False
        return
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True

"""The local store: digest-addressed blobs and per-kind indexes; its image
records are ``records``'s.

A file under ``blobs/`` is only ever created by an atomic rename of a fully
written, fsynced and verified tmp file, so a crash (even SIGKILL) at any point
leaves either the complete blob or nothing there. Work in progress lives in
``tmp/`` under a per-process name and is held with an ``flock`` while it is
written: the lock dies with its process, which is how ``prune`` and a later
writer tell an abandoned partial file from a live one.

trio is imported only by the async methods: it is most of the start-up time
of ``lazyfs images``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterable, Iterator

from ..errors import CacheError, DigestMismatch, NotFound
from .chunks import try_lock
from .records import ImageRecords

_DIGEST = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")
_TMP_NAME = re.compile(r"^(?P<algo>sha256|sha512)-(?P<hex>[0-9a-f]+)\.(?P<pid>\d+)\.[0-9a-f]+\.part$")
STALE_TMP_SECONDS = 3600



def default_root() -> Path:
    """Where the store lives when nobody says otherwise."""
    if env := os.environ.get("LAZYFS_CACHE_DIR"):
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/lazyfs")
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "lazyfs"


def check_free_space(where: Path, needed: int, what: str) -> None:
    """Refuse, before writing, what cannot fit: running out halfway leaves
    work to clean up and fills the disk for everyone else."""
    st = os.statvfs(where)
    free = st.f_bavail * st.f_frsize
    if needed > free:
        raise CacheError(f"not enough space for {what} in {where}: "
                         f"{needed} bytes needed, {free} free")


@contextlib.contextmanager
def cache_errors(root: Path, doing: str) -> Iterator[None]:
    """The store's own file operations failing (a read-only file system, an
    immutable or foreign-owned directory, a full disk) are the user's
    environment, not a bug: one ``CacheError`` naming the directory and why."""
    try:
        yield
    except OSError as e:
        raise CacheError(f"cannot {doing} in cache directory {root}: "
                         f"{e.strerror or e}") from None


def check_digest(digest: str) -> str:
    """Digests become path names, so only well-formed ones are accepted."""
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise CacheError(f"not a valid digest: {digest!r}")
    return digest


@dataclass(frozen=True, slots=True)
class PruneResult:
    blobs: int = 0
    indexes: int = 0
    tmp: int = 0
    images: int = 0
    bytes_freed: int = 0


class BlobWriter:
    """File-like sink for one blob: hashes as it goes, commits on success only."""

    def __init__(self, store: Store, digest: str, size: int | None):
        self.digest = digest
        self.size = size
        self.written = 0
        self._store = store
        self._hash = hashlib.new(digest.split(":", 1)[0])
        self.tmp_path, self._file = store._claim_tmp(digest)

    def write(self, data: bytes) -> int:
        with cache_errors(self._store.root, f"write blob {self.digest}"):
            self._file.write(data)
        self._hash.update(data)
        self.written += len(data)
        return len(data)

    def write_at(self, offset: int, data: bytes) -> None:
        """Place bytes that arrive out of order (parallel ranges); ``absorb``
        hashes them later, in blob order, so the digest check stays whole."""
        view = memoryview(data)
        with cache_errors(self._store.root, f"write blob {self.digest}"):
            while view:
                n = os.pwrite(self._file.fileno(), view, offset)
                view, offset = view[n:], offset + n

    def absorb(self, data: bytes) -> None:
        """Hash and count bytes already placed with ``write_at``, in blob order."""
        self._hash.update(data)
        self.written += len(data)

    def keep_prefix(self) -> None:
        """Cut the file back to the bytes absorbed: bytes placed ahead of a
        gap are no prefix a later attempt could resume from."""
        self._file.truncate(self.written)

    def resume_offset(self) -> int:
        """Bytes already present from an abandoned earlier attempt (0 if none)."""
        return self.written

    def restart(self) -> None:
        """Drop what was written so far (e.g. the server ignored a Range request)."""
        self._file.seek(0)
        self._file.truncate()
        self._hash = hashlib.new(self.digest.split(":", 1)[0])
        self.written = 0

    def _commit(self) -> Path:
        with cache_errors(self._store.root, f"write blob {self.digest}"):
            return self._commit_verified()

    def _commit_verified(self) -> Path:
        self._file.flush()
        os.fsync(self._file.fileno())
        got = f"{self.digest.split(':', 1)[0]}:{self._hash.hexdigest()}"
        if got != self.digest:
            raise DigestMismatch(f"blob {self.digest}: content hashes to {got}")
        if self.size is not None and self.written != self.size:
            raise DigestMismatch(f"blob {self.digest}: got {self.written} bytes, expected {self.size}")
        final = self._store._blob_file(self.digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.fchmod(self._file.fileno(), 0o444)
        os.rename(self.tmp_path, final)
        _fsync_dir(final.parent)
        return final

    def _discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp_path)

    def _close(self) -> None:
        self._file.close()


class Store(ImageRecords):
    def __init__(self, root: Path | str | None = None):
        # absolute: a mount daemon changes to / after the store is opened
        self.root = (Path(root) if root is not None else default_root()).absolute()
        self._prepare_root()
        with cache_errors(self.root, "create the store"):
            for sub in ("blobs", "tmp", "indexes"):
                (self.root / sub).mkdir(mode=0o700, exist_ok=True)
            self.db_path = self.root / "images.db"
            self._create_records()

    def _prepare_root(self) -> None:
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = self.root.stat()
        except OSError as e:
            raise CacheError(f"cannot create cache directory {self.root}: {e.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise CacheError(f"cache directory {self.root} is not a directory")
        if st.st_mode & stat.S_IWOTH:
            raise CacheError(f"cache directory {self.root} is world-writable; refusing to use it")

    # -- blobs ---------------------------------------------------------------

    def _blob_file(self, digest: str) -> Path:
        algo, hexd = check_digest(digest).split(":", 1)
        return self.root / "blobs" / algo / hexd

    def blob_path(self, digest: str) -> Path | None:
        """The blob's file if it is in the store; files there are always complete."""
        p = self._blob_file(digest)
        return p if p.is_file() else None

    def sized_blob_path(self, digest: str, size: int) -> Path | None:
        """``blob_path``, for a descriptor that also states the size. A blob
        here is trusted by its digest, but a descriptor that misstates its
        size is a lying manifest all the same: refused, as a fetch would be."""
        local = self.blob_path(digest)
        if local is not None and (actual := local.stat().st_size) != size:
            raise DigestMismatch(f"blob {digest}: the manifest says {size} bytes, "
                                 f"the stored blob has {actual}")
        return local

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest) is not None

    def read_bytes(self, digest: str) -> bytes:
        p = self.blob_path(digest)
        if p is None:
            raise NotFound(f"blob {digest} is not in the local store")
        return p.read_bytes()

    def index_path(self, kind: str, digest: str) -> Path:
        """Where another module keeps its derived data for a digest; pruned with it."""
        if not re.fullmatch(r"[a-z0-9_-]+", kind):
            raise CacheError(f"not a valid index kind: {kind!r}")
        algo, hexd = check_digest(digest).split(":", 1)
        d = self.root / "indexes" / kind
        with cache_errors(self.root, f"create {kind} indexes"):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        return d / f"{algo}-{hexd}"

    def _claim_tmp(self, digest: str):
        """Open a locked tmp file for ``digest``, adopting an abandoned one if any."""
        algo, hexd = digest.split(":", 1)
        tmpdir = self.root / "tmp"
        mine = tmpdir / f"{algo}-{hexd}.{os.getpid()}.{secrets.token_hex(6)}.part"
        for old in tmpdir.glob(f"{algo}-{hexd}.*.part"):
            f = _lock_existing(old)
            if f is None:
                continue
            try:
                os.rename(old, mine)
            except FileNotFoundError:
                f.close()
                continue
            return mine, f
        # locked before it takes a name other writers look for: else one could
        # adopt it between our open and our lock, and we would then lock (and
        # write into) what that writer has committed
        fresh = mine.with_suffix(".new")
        f = open(fresh, "x+b")
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        os.rename(fresh, mine)
        return mine, f

    @contextlib.asynccontextmanager
    async def blob_writer(self, digest: str, size: int | None = None):
        """Write a blob through a file-like object; it lands in ``blobs/`` only if verified.

        The writer may start with bytes of an abandoned attempt
        (``resume_offset()``); callers that cannot resume call ``restart()``.
        Bytes that fail verification are deleted; an attempt cut short by any
        other error is left unlocked in ``tmp/`` to be resumed or pruned.
        """
        import trio
        check_digest(digest)
        with cache_errors(self.root, f"write blob {digest}"):
            w = await trio.to_thread.run_sync(self._open_writer, digest, size)
        try:
            yield w
            await trio.to_thread.run_sync(w._commit)
        except DigestMismatch:
            w._discard()
            raise
        except BaseException:
            # An interrupted download stays in tmp/ for a later writer to adopt.
            if not w.written:
                w._discard()
            raise
        finally:
            w._close()

    def _open_writer(self, digest: str, size: int | None) -> BlobWriter:
        if size is not None:
            check_free_space(self.root, size, f"blob {digest}")
        w = BlobWriter(self, digest, size)
        _rehash(w)
        return w

    async def write_blob(self, digest: str, chunks: AsyncIterable[bytes], size: int | None = None) -> Path:
        async with self.blob_writer(digest, size) as w:
            w.restart()
            async for chunk in chunks:
                w.write(chunk)
        return self._blob_file(digest)

    def put_bytes(self, digest: str, data: bytes) -> Path:
        """Store a small blob held in memory (manifests, configs). Blocking."""
        check_digest(digest)
        if (p := self.blob_path(digest)) is not None:
            return p
        with cache_errors(self.root, f"write blob {digest}"):
            w = BlobWriter(self, digest, len(data))
        try:
            w.restart()
            w.write(data)
            return w._commit()
        except BaseException:
            w._discard()
            raise
        finally:
            w._close()

    @contextlib.asynccontextmanager
    async def lease(self):
        """Held by a pull from its first blob to its record: ``prune`` waits for it.

        Without it, a prune running between a layer's download and the
        image's record would collect blobs that are about to be referenced.
        """
        import trio
        with cache_errors(self.root, "take the pull lease"):
            f = open(self.root / "gc.lock", "a+b")
        try:
            while True:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await trio.sleep(0.05)
            yield
        finally:
            f.close()

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        with cache_errors(self.root, "lock the store"):
            f = open(self.root / "gc.lock", "a+b")
        with f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            yield

    @contextlib.contextmanager
    def no_pull(self) -> Iterator[bool]:
        """Whether no pull is under way (none holds its lease), held for the
        block: blobs it fetched but has not recorded yet are then none."""
        with try_lock(self.root / "gc.lock") as free:
            yield free

    def kept_blobs(self) -> set[str]:
        """The blobs recorded images need (``prune`` keeps the same)."""
        keep: set[str] = set()
        with self._db() as db:
            for (blobs,) in db.execute("SELECT blobs FROM images"):
                keep.update(json.loads(blobs))
        return keep

    # -- pruning -------------------------------------------------------------

    def prune(self, all: bool = False) -> PruneResult:
        """Delete what no recorded image needs; ``all`` forgets every image first."""
        images = 0
        with self._exclusive(), self._db() as db:
            if all:
                images = db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
                db.execute("DELETE FROM images")
            keep = set()
            for (blobs,) in db.execute("SELECT blobs FROM images"):
                keep.update(json.loads(blobs))
            # Pulls hold a lease (shared gc.lock) until their record is
            # written, so every blob they fetched is in ``keep`` by now.
            tmp_n, tmp_bytes = self._prune_tmp()
            blob_n, blob_bytes = self._prune_blobs(keep)
            idx_n, idx_bytes = self._prune_indexes(keep)
        return PruneResult(blobs=blob_n, indexes=idx_n, tmp=tmp_n, images=images,
                           bytes_freed=tmp_bytes + blob_bytes + idx_bytes)

    def _prune_blobs(self, keep: set[str]) -> tuple[int, int]:
        n = freed = 0
        for algo_dir in (self.root / "blobs").iterdir():
            for f in algo_dir.iterdir():
                if f"{algo_dir.name}:{f.name}" not in keep:
                    freed += _unlink(f)
                    n += 1
        return n, freed

    def _prune_indexes(self, keep: set[str]) -> tuple[int, int]:
        n = freed = 0
        for kind in (self.root / "indexes").iterdir():
            for f in kind.iterdir():
                algo, _, hexd = f.name.partition("-")
                hexd = hexd.split(".", 1)[0]
                if f"{algo}:{hexd}" not in keep:
                    freed += _unlink(f)
                    n += 1
        return n, freed

    def _prune_tmp(self) -> tuple[int, int]:
        n = freed = 0
        now = time.time()
        for f in (self.root / "tmp").iterdir():
            try:
                old = now - f.stat().st_mtime > STALE_TMP_SECONDS
            except FileNotFoundError:
                continue
            held = _lock_existing(f)
            if held is None and not old:
                continue
            try:
                freed += _unlink(f)
                n += 1
            finally:
                if held is not None:
                    held.close()
        return n, freed


def _lock_existing(path: Path):
    """The file opened and exclusively locked, or None if a live writer holds it."""
    try:
        f = open(path, "r+b")
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def _rehash(w: BlobWriter) -> None:
    """Feed the hash with what an adopted tmp file already holds."""
    w._file.seek(0)
    while chunk := w._file.read(1 << 20):
        w._hash.update(chunk)
        w.written += len(chunk)


def _unlink(p: Path) -> int:
    try:
        if p.is_dir():
            size = sum(x.stat().st_size for x in p.rglob("*") if x.is_file())
            shutil.rmtree(p)
            return size
        size = p.stat().st_size
        p.unlink()
        return size
    except FileNotFoundError:
        return 0


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

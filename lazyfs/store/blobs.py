"""The local store: digest-addressed blobs, per-kind indexes, image records.

A file under ``blobs/`` is only ever created by an atomic rename of a fully
written, fsynced and verified tmp file, so a crash (even SIGKILL) at any point
leaves either the complete blob or nothing there. Work in progress lives in
``tmp/`` under a per-process name and is held with an ``flock`` while it is
written: the lock dies with its process, which is how ``prune`` and a later
writer tell an abandoned partial file from a live one.

Image records sit in SQLite (WAL) so several lazyfs processes can pull,
list and prune at once. trio is imported only by the async methods: it is
most of the start-up time of ``lazyfs images``.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import json
import os
import re
import secrets
import shutil
import sqlite3
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import AsyncIterable, Iterator

from ..errors import CacheError, DigestMismatch, NotFound

_DIGEST = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")
_TMP_NAME = re.compile(r"^(?P<algo>sha256|sha512)-(?P<hex>[0-9a-f]+)\.(?P<pid>\d+)\.[0-9a-f]+\.part$")
STALE_TMP_SECONDS = 3600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    repository      TEXT NOT NULL,
    tag             TEXT NOT NULL DEFAULT '',
    digest          TEXT NOT NULL,
    manifest_digest TEXT NOT NULL,
    config_digest   TEXT NOT NULL,
    media_type      TEXT NOT NULL,
    platform        TEXT NOT NULL,
    created         TEXT NOT NULL,
    size            INTEGER NOT NULL,
    pulled_at       REAL NOT NULL,
    blobs           TEXT NOT NULL,
    PRIMARY KEY (repository, tag, digest)
);
"""


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


def check_digest(digest: str) -> str:
    """Digests become path names, so only well-formed ones are accepted."""
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise CacheError(f"not a valid digest: {digest!r}")
    return digest


@dataclass(frozen=True, slots=True)
class ImageRecord:
    repository: str
    """``registry/repository``, fully qualified."""
    tag: str | None
    digest: str
    """What the reference resolved to: the index digest for a multi-platform image."""
    manifest_digest: str
    config_digest: str
    media_type: str
    platform: str
    created: str
    size: int
    """Sum of the layer sizes and the config size, as in the manifest."""
    pulled_at: float
    blobs: tuple[str, ...] = ()
    """Every blob the image needs: index, manifest, config and layers."""

    @property
    def image_id(self) -> str:
        return self.config_digest

    def to_json(self) -> dict:
        d = asdict(self)
        d["blobs"] = list(self.blobs)
        return d


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
        self._file.write(data)
        self._hash.update(data)
        self.written += len(data)
        return len(data)

    def write_at(self, offset: int, data: bytes) -> None:
        """Place bytes that arrive out of order (parallel ranges); ``absorb``
        hashes them later, in blob order, so the digest check stays whole."""
        view = memoryview(data)
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


class Store:
    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else default_root()
        self._prepare_root()
        for sub in ("blobs", "tmp", "indexes"):
            (self.root / sub).mkdir(mode=0o700, exist_ok=True)
        self.db_path = self.root / "images.db"
        with self._db() as db:
            db.execute(_SCHEMA)

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

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        except sqlite3.Error as e:
            raise CacheError(f"cannot open image database {self.db_path}: {e}") from None
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=30000")
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except sqlite3.Error as e:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise CacheError(f"image database {self.db_path}: {e}") from None
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

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
        f = open(mine, "x+b")
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
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
        with open(self.root / "gc.lock", "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            yield

    # -- image records -------------------------------------------------------

    def record_image(self, rec: ImageRecord) -> None:
        """Add or refresh an image; a tag moved elsewhere leaves its old image untagged."""
        with self._db() as db:
            if rec.tag:
                moved = db.execute(
                    "SELECT * FROM images WHERE repository=? AND tag=? AND digest<>?",
                    (rec.repository, rec.tag, rec.digest)).fetchall()
                for old in moved:
                    db.execute("DELETE FROM images WHERE repository=? AND tag=? AND digest=?",
                               (rec.repository, rec.tag, old[2]))
                    others = db.execute("SELECT COUNT(*) FROM images WHERE repository=? AND digest=?",
                                        (rec.repository, old[2])).fetchone()[0]
                    if not others:
                        db.execute("INSERT INTO images VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                                   (old[0], "", *old[2:]))
                db.execute("DELETE FROM images WHERE repository=? AND tag='' AND digest=?",
                           (rec.repository, rec.digest))
            db.execute("DELETE FROM images WHERE repository=? AND tag=? AND digest=?",
                       (rec.repository, rec.tag or "", rec.digest))
            db.execute("INSERT INTO images VALUES (?,?,?,?,?,?,?,?,?,?,?)", _row(rec))

    def list_images(self, filter_repo: str | None = None, filter_tag: str | None = None) -> list[ImageRecord]:
        """Records newest first; filters are shell-style patterns, as ``docker images`` takes."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM images").fetchall()
        recs = [_record(r) for r in rows]
        if filter_repo is not None:
            recs = [r for r in recs if fnmatch.fnmatchcase(r.repository, filter_repo)]
        if filter_tag is not None:
            recs = [r for r in recs if r.tag is not None and fnmatch.fnmatchcase(r.tag, filter_tag)]
        recs.sort(key=lambda r: (r.created, r.pulled_at), reverse=True)
        return recs

    def find_image(self, repository: str, tag: str | None = None, digest: str | None = None) -> ImageRecord | None:
        """The record a reference names: by digest (either kind) if given, else by tag."""
        with self._db() as db:
            if digest:
                rows = db.execute(
                    "SELECT * FROM images WHERE repository=? AND (digest=? OR manifest_digest=?)",
                    (repository, digest, digest)).fetchall()
            else:
                rows = db.execute("SELECT * FROM images WHERE repository=? AND tag=?",
                                  (repository, tag or "")).fetchall()
        return _record(rows[0]) if rows else None

    def remove_image(self, repository: str | None = None, tag: str | None = None,
                     digest: str | None = None, image_id: str | None = None) -> list[ImageRecord]:
        """Forget images by ``repository:tag``, ``repository@digest`` or image-ID prefix.

        Blobs stay until ``prune``: another image may share them.
        """
        if image_id is not None:
            where, args = "config_digest LIKE ?", (_id_pattern(image_id),)
            what = image_id
        elif digest is not None:
            where, args = "repository=? AND (digest=? OR manifest_digest=?)", (repository, digest, digest)
            what = f"{repository}@{digest}"
        else:
            where, args = "repository=? AND tag=?", (repository, tag or "")
            what = f"{repository}:{tag}"
        with self._db() as db:
            rows = db.execute(f"SELECT * FROM images WHERE {where}", args).fetchall()
            if image_id is not None and len({r[4] for r in rows}) > 1:
                raise CacheError(f"image ID prefix {image_id} is ambiguous")
            db.execute(f"DELETE FROM images WHERE {where}", args)
        if not rows:
            raise NotFound(f"no such image: {what}")
        return [_record(r) for r in rows]

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


def _id_pattern(image_id: str) -> str:
    hexd = image_id.removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{1,64}", hexd):
        raise NotFound(f"no such image: {image_id}")
    return f"sha256:{hexd}%"


def _row(rec: ImageRecord) -> tuple:
    return (rec.repository, rec.tag or "", rec.digest, rec.manifest_digest, rec.config_digest,
            rec.media_type, rec.platform, rec.created, rec.size, rec.pulled_at,
            json.dumps(sorted(set(rec.blobs))))


def _record(row: tuple) -> ImageRecord:
    (repo, tag, digest, mdigest, cdigest, mt, plat, created, size, pulled, blobs) = row
    return ImageRecord(repo, tag or None, digest, mdigest, cdigest, mt, plat, created, size,
                       pulled, tuple(json.loads(blobs)))

"""Image records: which images the store holds, under which names, and the
blobs each one needs; and the metadata a pull keeps beside its layers (index,
manifest, config) so an image can be described, and opened, offline.

Records sit in SQLite (WAL) so several lazyfs processes can pull, list and
prune at once; a record is written last, so it is what makes an image exist.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import re
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from ..errors import CacheError, NotFound, RegistryUnreachable
from ..manifest import (Index, Manifest, Platform, ResolvedImage, image_platforms, parse_config,
                        parse_manifest, select_platform, with_default_tag)
from ..reference import Reference

if TYPE_CHECKING:
    from .blobs import Store

_BUSY_S = 30
"""How long a transaction waits for another process's to end."""

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
    unpacked_size   INTEGER,
    PRIMARY KEY (repository, tag, digest)
);
"""

_PLACES = ",".join("?" * 12)


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
    unpacked_size: int | None = None
    """Sum of the regular files' sizes over all layers, as ``docker images``
    counts an image; ``None`` for a record from before it was kept."""

    @property
    def image_id(self) -> str:
        return self.config_digest

    def to_json(self) -> dict:
        d = asdict(self)
        d["blobs"] = list(self.blobs)
        return d


class ImageRecords:
    """The ``images`` table of a store, kept in ``db_path``."""

    db_path: Path

    def _create_records(self) -> None:
        self._use_wal()
        with self._db() as db:
            db.execute(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(images)")}
            if "unpacked_size" not in columns:
                db.execute("ALTER TABLE images ADD COLUMN unpacked_size INTEGER")

    def _use_wal(self) -> None:
        """The file is kept in WAL mode, which it remembers, so the mode is
        set once per store and not per transaction. SQLite does not wait on a
        busy database while it switches modes (processes creating one store
        at once could fail with "database is locked"), so the switch is
        retried here for as long as a transaction would wait."""
        deadline = time.monotonic() + _BUSY_S
        while True:
            try:
                with contextlib.closing(self._connect()) as db:
                    if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                        db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.Error as e:
                locked = isinstance(e, sqlite3.OperationalError) and "locked" in str(e)
                if not locked or time.monotonic() > deadline:
                    raise CacheError(f"image database {self.db_path}: {e}") from None
            time.sleep(0.02)

    def _connect(self) -> sqlite3.Connection:
        try:
            return sqlite3.connect(self.db_path, timeout=_BUSY_S, isolation_level=None)
        except sqlite3.Error as e:
            raise CacheError(f"cannot open image database {self.db_path}: {e}") from None

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = self._connect()
        try:
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
                        db.execute(f"INSERT INTO images VALUES ({_PLACES})", (old[0], "", *old[2:]))
                db.execute("DELETE FROM images WHERE repository=? AND tag='' AND digest=?",
                           (rec.repository, rec.digest))
            db.execute("DELETE FROM images WHERE repository=? AND tag=? AND digest=?",
                       (rec.repository, rec.tag or "", rec.digest))
            db.execute(f"INSERT INTO images VALUES ({_PLACES})", _row(rec))

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
                     digest: str | None = None, image_id: str | None = None,
                     force: bool = False) -> list[ImageRecord]:
        """Forget images by ``repository:tag``, ``repository@digest`` or image-ID prefix;
        an image ID several names point to only with ``force`` (docker's rule).

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
            if image_id is not None and len(rows) > 1 and not force:
                raise CacheError(f"unable to delete {image_id} (must be forced): image is "
                                 f"referenced by {len(rows)} names")
            db.execute(f"DELETE FROM images WHERE {where}", args)
        if not rows:
            raise NotFound(f"no such image: {what}")
        return [_record(r) for r in rows]


def keep_metadata(store: Store, image: ResolvedImage) -> None:
    """Index, manifest and config as blobs, so the image can be described offline. Blocking."""
    store.put_bytes(image.manifest.digest, image.manifest.raw)
    store.put_bytes(image.manifest.config.digest, image.config.raw)
    if image.index is not None:
        store.put_bytes(image.index.digest, image.index.raw)


def image_record(ref: Reference, image: ResolvedImage,
                 unpacked_size: int | None = None) -> ImageRecord:
    """The record of ``image`` pulled as ``ref``: by tag, or untagged when
    ``ref`` names a digest."""
    m = image.manifest
    blobs = [m.digest, m.config.digest, *(d.digest for d in m.layers)]
    if image.index is not None:
        blobs.append(image.index.digest)
    return ImageRecord(
        repository=ref.name,
        tag=ref.tag if ref.digest is None else None,
        digest=image.digest,
        manifest_digest=m.digest,
        config_digest=m.config.digest,
        media_type=image.media_type,
        platform=platform_of(image),
        created=image.config.created or "",
        size=m.config.size + sum(d.size for d in m.layers),
        pulled_at=time.time(),
        blobs=tuple(blobs),
        unpacked_size=unpacked_size,
    )


def platform_of(image: ResolvedImage) -> str:
    p = image.config.platform
    return str(p) if p is not None else ""


def resolve_from_store(store: Store, ref: Reference,
                       platform: Platform | None = None) -> ResolvedImage:
    """The image as a previous pull left it, for when the registry cannot be reached."""
    ref = with_default_tag(ref)
    rec = store.find_image(ref.name, ref.tag, ref.digest)
    if rec is None:
        raise NotFound(f"{ref} is not in the local store")
    top = _stored_document(store, rec.digest, rec.media_type)
    index = top if isinstance(top, Index) else None
    manifest = top
    if index is not None:
        if platform is not None:
            desc = select_platform(index, platform)
        else:
            desc = next((d for d in index.manifests if d.digest == rec.manifest_digest), None)
            if desc is None:
                raise NotFound(f"{ref}: manifest {rec.manifest_digest} is not in its index")
        manifest = _stored_document(store, desc.digest, desc.media_type)
    config = parse_config(store.read_bytes(manifest.config.digest), manifest.config.digest)
    platforms = tuple(image_platforms(index)) if index is not None else ()
    return ResolvedImage(ref, index, manifest, config, platforms)


def resolve_offline(store: Store, ref: Reference, platform: Platform | None,
                    unreachable: RegistryUnreachable) -> ResolvedImage:
    """The stored copy of an image whose registry cannot be reached; without
    one, the registry's failure is the error to report, not the empty store."""
    try:
        return resolve_from_store(store, ref, platform)
    except NotFound:
        raise RegistryUnreachable(f"{unreachable}, and no copy of {with_default_tag(ref)} "
                                  "in the local store") from None


def _stored_document(store: Store, digest: str, media_type: str) -> Manifest | Index:
    return parse_manifest(store.read_bytes(digest), media_type, digest)


def _id_pattern(image_id: str) -> str:
    hexd = image_id.removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{1,64}", hexd):
        raise NotFound(f"no such image: {image_id}")
    return f"sha256:{hexd}%"


def _row(rec: ImageRecord) -> tuple:
    return (rec.repository, rec.tag or "", rec.digest, rec.manifest_digest, rec.config_digest,
            rec.media_type, rec.platform, rec.created, rec.size, rec.pulled_at,
            json.dumps(sorted(set(rec.blobs))), rec.unpacked_size)


def _record(row: tuple) -> ImageRecord:
    (repo, tag, digest, mdigest, cdigest, mt, plat, created, size, pulled, blobs, unpacked) = row
    return ImageRecord(repo, tag or None, digest, mdigest, cdigest, mt, plat, created, size,
                       pulled, tuple(json.loads(blobs)), unpacked)

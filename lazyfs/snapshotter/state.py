"""The snapshotter's state in SQLite, with the rules of containerd's snapshot
storage (``snapshots/storage``), so a restart of the service finds every
snapshot, parent, label and kind again.

IDs are never reused: a snapshot's directory is named by its ID, and a
removed ID's directory may still be waiting for Cleanup. A remote snapshot
keeps the image reference and layer digest it was served from, so the
layer can be asked for again after a restart.
"""

from __future__ import annotations

import contextlib
import enum
import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import NotFound, UsageError
from .filters import Filter, matches

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    parent TEXT NOT NULL,
    kind INTEGER NOT NULL,
    labels TEXT NOT NULL,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    inodes INTEGER NOT NULL DEFAULT 0,
    remote TEXT
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent);
"""


class AlreadyExists(UsageError):
    """A snapshot of that name or key exists already (gRPC ALREADY_EXISTS)."""


class FailedPrecondition(UsageError):
    """The snapshot is not in a state the call needs (gRPC FAILED_PRECONDITION)."""


class Unavailable(NotFound):
    """A remote layer the snapshot stands on cannot be served now (gRPC UNAVAILABLE)."""


class Kind(enum.IntEnum):
    """The numbers of the ``Kind`` enum of snapshots.proto."""
    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3


@dataclass(frozen=True)
class RemoteLayer:
    """Where a lazily served layer comes from."""
    ref: str
    digest: str


@dataclass
class Snapshot:
    id: int
    name: str
    parent: str
    kind: Kind
    labels: dict[str, str]
    created_ns: int
    updated_ns: int
    size: int = 0
    inodes: int = 0
    remote: RemoteLayer | None = None
    chain: list["Snapshot"] = field(default_factory=list)
    """Its parents, nearest first (filled in by ``get`` and ``create``)."""

    def field(self, path: list[str]) -> str | None:
        """The filter adaptor of containerd's snapshot storage."""
        head, rest = path[0], path[1:]
        if head == "kind":
            return self.kind.name.lower()
        if head == "name":
            return self.name
        if head == "parent":
            return self.parent
        if head == "labels" and rest:
            return self.labels.get(".".join(rest))
        return None


def _now_ns() -> int:
    return time.time_ns()


class State:
    """One SQLite file; every call is one transaction, one at a time."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------ reading

    def _row(self, name: str) -> Snapshot | None:
        row = self._db.execute("SELECT * FROM snapshots WHERE name=?", (name,)).fetchone()
        return _snapshot(row) if row else None

    def _chain(self, s: Snapshot) -> list[Snapshot]:
        chain, parent = [], s.parent
        while parent:
            p = self._row(parent)
            if p is None:
                raise NotFound(f"parent {parent!r} of snapshot {s.name!r} does not exist")
            chain.append(p)
            parent = p.parent
        return chain

    def get(self, name: str) -> Snapshot:
        with self._lock:
            s = self._row(name)
            if s is None:
                raise NotFound(f"snapshot {name!r} does not exist")
            s.chain = self._chain(s)
            return s

    def walk(self, filters: list[Filter]) -> list[Snapshot]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM snapshots ORDER BY id").fetchall()
        return [s for s in map(_snapshot, rows) if matches(filters, s.field)]

    def ids(self) -> set[int]:
        with self._lock:
            return {i for (i,) in self._db.execute("SELECT id FROM snapshots")}

    # ------------------------------------------------------------ writing

    def create(self, kind: Kind, key: str, parent: str, labels: dict[str, str]) -> Snapshot:
        """A new active or view snapshot (``storage.CreateSnapshot``)."""
        return self._add(key, parent, kind, labels, None)

    def add_remote(self, name: str, parent: str, labels: dict[str, str],
                   remote: RemoteLayer) -> Snapshot:
        """A committed snapshot whose content is a lazily served layer."""
        return self._add(name, parent, Kind.COMMITTED, labels, remote)

    def _add(self, name: str, parent: str, kind: Kind, labels: dict[str, str],
             remote: RemoteLayer | None) -> Snapshot:
        with self._transaction():
            if parent:
                p = self._row(parent)
                if p is None:
                    raise NotFound(f"parent snapshot {parent!r} does not exist")
                if p.kind is not Kind.COMMITTED:
                    raise UsageError(f"parent {parent!r} is not a committed snapshot")
            if self._row(name) is not None:
                raise AlreadyExists(f"snapshot {name!r} already exists")
            now = _now_ns()
            where = json.dumps({"ref": remote.ref, "digest": remote.digest}) if remote else None
            self._db.execute(
                "INSERT INTO snapshots (name, parent, kind, labels, created, updated, remote)"
                " VALUES (?,?,?,?,?,?,?)",
                (name, parent, int(kind), json.dumps(labels), now, now, where))
            s = self._row(name)
            s.chain = self._chain(s)
            return s

    def commit(self, key: str, name: str, labels: dict[str, str], *, size: int = 0,
               inodes: int = 0) -> Snapshot:
        """The active snapshot ``key`` becomes the committed ``name``, keeping
        its ID and parent, with ``labels`` as its labels (``storage.CommitActive``)."""
        with self._transaction():
            if self._row(name) is not None:
                raise AlreadyExists(f"committed snapshot {name!r} already exists")
            s = self._row(key)
            if s is None:
                raise NotFound(f"active snapshot {key!r} does not exist")
            if s.kind is not Kind.ACTIVE:
                raise FailedPrecondition(f"snapshot {key!r} is not active")
            now = _now_ns()
            self._db.execute(
                "UPDATE snapshots SET name=?, kind=?, labels=?, created=?, updated=?, size=?,"
                " inodes=? WHERE id=?",
                (name, int(Kind.COMMITTED), json.dumps(labels), now, now, size, inodes, s.id))
            return self._row(name)

    def remove(self, key: str) -> Snapshot:
        with self._transaction():
            s = self._row(key)
            if s is None:
                raise NotFound(f"snapshot {key!r} does not exist")
            child = self._db.execute("SELECT name FROM snapshots WHERE parent=? LIMIT 1",
                                     (key,)).fetchone()
            if child:
                raise FailedPrecondition(f"cannot remove snapshot {key!r}: {child[0]!r} is its child")
            self._db.execute("DELETE FROM snapshots WHERE id=?", (s.id,))
            return s

    def update_labels(self, name: str, labels: dict[str, str], paths: Sequence[str]) -> Snapshot:
        """``storage.UpdateInfo``: only labels change; no paths means all of them."""
        with self._transaction():
            s = self._row(name)
            if s is None:
                raise NotFound(f"snapshot {name!r} does not exist")
            new = dict(s.labels) if paths else dict(labels)
            for path in paths:
                if path == "labels":
                    new = dict(labels)
                elif path.startswith("labels."):
                    key = path[len("labels."):]
                    if key in labels:
                        new[key] = labels[key]
                    else:
                        new.pop(key, None)
                else:
                    raise UsageError(f"cannot update field {path!r} of snapshot {name!r}")
            self._db.execute("UPDATE snapshots SET labels=?, updated=? WHERE id=?",
                             (json.dumps(new), _now_ns(), s.id))
            return self._row(name)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE … COMMIT under the lock; ROLLBACK on any error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")


def _snapshot(row) -> Snapshot:
    id_, name, parent, kind, labels, created, updated, size, inodes, remote = row
    r = json.loads(remote) if remote else None
    return Snapshot(id_, name, parent, Kind(kind), json.loads(labels), created, updated,
                    size, inodes, RemoteLayer(r["ref"], r["digest"]) if r else None)


def remote_snapshots(state: State) -> Iterator[Snapshot]:
    return (s for s in state.walk([]) if s.remote is not None)

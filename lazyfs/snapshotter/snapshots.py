"""The snapshotter itself: containerd's overlayfs snapshotter, plus layers
that lazyfs serves instead of containerd unpacking them.

Under the state directory each snapshot made here has ``snapshots/<id>/fs``
(its upper directory, or the whole tree of a snapshot without parent) and,
when active, ``snapshots/<id>/work``. A remote snapshot has no directory:
its tree is the layer directory the ``LayerSource`` serves, asked for again
by each new process (the path may change) and whenever it stops answering
(a FUSE mount whose server went away).

The methods are plain blocking calls, thread-safe, for the gRPC workers.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import LazyfsError
from .filters import parse_filters
from .remote import REMOTE, REMOTE_VALUE, TARGET, remote_layer
from .state import (AlreadyExists, FailedPrecondition, Kind, RemoteLayer, Snapshot, State,
                    Unavailable)

log = logging.getLogger(__name__)

NEW_DIR_GRACE = 600
"""Seconds a half-made snapshot directory is left alone by Cleanup."""

NO_LABELS = "no remote-layer labels (a plain pull)"

Resolve = Callable[[RemoteLayer], str]
"""Blocking: the directory serving a remote layer, or a LazyfsError."""


@dataclass(frozen=True)
class Mount:
    type: str
    source: str
    options: list[str]


@dataclass
class LayerRecord:
    """What ``stats`` reports per layer chain ID."""
    mode: str
    """'lazy', 'unpacked' or 'failed' (lazy once, not served now)."""
    ref: str = ""
    digest: str = ""
    reason: str = ""


@dataclass
class Snapshotter:
    root: Path
    resolve: Resolve
    state: State = field(init=False)
    _paths: dict[int, str] = field(default_factory=dict, init=False)
    _layers: dict[str, LayerRecord] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        (self.root / "snapshots").mkdir(parents=True, exist_ok=True)
        self.state = State(self.root / "metadata.db")
        self._index_off = _overlay_index_on()

    def close(self) -> None:
        self.state.close()

    # ------------------------------------------------------------ the API

    def prepare(self, key: str, parent: str, labels: dict[str, str]) -> list[Mount]:
        target = labels.get(TARGET)
        if target:
            self._try_remote(key, target, parent, labels)
        return self._create(Kind.ACTIVE, key, parent, labels)

    def view(self, key: str, parent: str, labels: dict[str, str]) -> list[Mount]:
        return self._create(Kind.VIEW, key, parent, labels)

    def mounts(self, key: str) -> list[Mount]:
        s = self.state.get(key)
        if s.kind is Kind.COMMITTED:
            raise FailedPrecondition(f"snapshot {key!r} is committed: it has no mounts")
        return self._mounts(s)

    def commit(self, name: str, key: str, labels: dict[str, str]) -> None:
        s = self.state.get(key)
        size, inodes = disk_usage(self._upper(s.id))
        self.state.commit(key, name, labels, size=size, inodes=inodes)
        with self._lock:
            pending = self._layers.pop(f"pending:{key}", None)
            if pending is not None:
                self._layers[chain_id(name, labels)] = pending

    def remove(self, key: str) -> None:
        s = self.state.remove(key)
        with self._lock:
            self._paths.pop(s.id, None)
            self._layers.pop(f"pending:{key}", None)
        if s.remote is None:
            _remove_dir(self.root / "snapshots" / str(s.id))

    def stat(self, key: str) -> Snapshot:
        return self.state.get(key)

    def update(self, name: str, labels: dict[str, str], paths: list[str]) -> Snapshot:
        return self.state.update_labels(name, labels, paths)

    def usage(self, key: str) -> tuple[int, int]:
        s = self.state.get(key)
        if s.kind is Kind.ACTIVE:
            return disk_usage(self._upper(s.id))
        return s.size, s.inodes

    def walk(self, filters: list[str]) -> list[Snapshot]:
        return self.state.walk(parse_filters(filters))

    def cleanup(self) -> None:
        """Remove the directories of snapshots that no longer exist."""
        ids = self.state.ids()
        for d in (self.root / "snapshots").iterdir():
            if d.name.isdigit() and int(d.name) in ids:
                continue
            if d.name.startswith("new-") and time.time() - d.stat().st_mtime < NEW_DIR_GRACE:
                continue  # a Prepare or View making it right now
            _remove_dir(d)

    def stats(self) -> dict:
        """Every layer snapshot by chain ID: served lazily, unpacked by
        containerd (with why, when this process saw it), or failed."""
        with self._lock:
            known = {k: dict(vars(r)) for k, r in self._layers.items()
                     if not k.startswith("pending:")}
        layers = {}
        for s in self.state.walk([]):
            if s.kind is not Kind.COMMITTED:
                continue
            cid = chain_id(s.name, s.labels)
            layers[cid] = known.get(cid) or (
                {"mode": "lazy", "ref": s.remote.ref, "digest": s.remote.digest, "reason": ""}
                if s.remote else {"mode": "unpacked", "ref": "", "digest": "", "reason": NO_LABELS})
        counts = {m: sum(1 for r in layers.values() if r["mode"] == m)
                  for m in ("lazy", "unpacked", "failed")}
        return {"root": str(self.root), "layers": layers, **counts}

    # ------------------------------------------------------------ remote layers

    def _try_remote(self, key: str, target: str, parent: str, labels: dict[str, str]) -> None:
        """Serve the layer lazily and raise AlreadyExists; return (after
        logging why) when containerd should unpack it instead."""
        layer = remote_layer(labels)
        if layer is None:
            self._note(key, NO_LABELS)
            return
        try:
            path = self.resolve(layer)
        except LazyfsError as e:
            log.warning("layer %s of %s: unpacking instead of serving it lazily: %s",
                        layer.digest, layer.ref, e)
            self._note(key, f"lazyfs cannot serve it: {e}")
            return
        try:
            s = self.state.add_remote(target, parent, {**labels, REMOTE: REMOTE_VALUE}, layer)
        except AlreadyExists:
            raise AlreadyExists(f"target snapshot {target!r} already exists") from None
        with self._lock:
            self._paths[s.id] = path
            self._layers[target] = LayerRecord("lazy", layer.ref, layer.digest)
        log.info("layer %s of %s served lazily from %s", layer.digest, layer.ref, path)
        raise AlreadyExists(f"target snapshot {target!r} (served lazily)")

    def _note(self, key: str, reason: str) -> None:
        with self._lock:
            self._layers[f"pending:{key}"] = LayerRecord("unpacked", reason=reason)

    def restore(self, s: Snapshot) -> None:
        """Ask for a remote snapshot's layer again (after a restart, or when
        its directory stopped answering)."""
        try:
            path = self.resolve(s.remote)
        except LazyfsError as e:
            with self._lock:
                self._paths.pop(s.id, None)
                self._layers[s.name] = LayerRecord("failed", s.remote.ref, s.remote.digest, str(e))
            raise Unavailable(f"layer {s.remote.digest} of {s.remote.ref} "
                              f"cannot be served: {e}") from None
        with self._lock:
            self._paths[s.id] = path
            self._layers[s.name] = LayerRecord("lazy", s.remote.ref, s.remote.digest)

    def _tree(self, s: Snapshot) -> str:
        if s.remote is None:
            return str(self._upper(s.id))
        with self._lock:
            path = self._paths.get(s.id)
        if path is None or not _answers(path):
            self.restore(s)
            with self._lock:
                path = self._paths[s.id]
        return path

    # ------------------------------------------------------------ directories and mounts

    def _upper(self, id_: int) -> Path:
        return self.root / "snapshots" / str(id_) / "fs"

    def _create(self, kind: Kind, key: str, parent: str, labels: dict[str, str]) -> list[Mount]:
        tmp = Path(tempfile.mkdtemp(prefix="new-", dir=self.root / "snapshots"))
        try:
            (tmp / "fs").mkdir(0o755)
            if kind is Kind.ACTIVE:
                (tmp / "work").mkdir(0o711)
            s = self.state.create(kind, key, parent, labels)
        except BaseException:
            _remove_dir(tmp)
            raise
        try:
            if s.chain:
                st = os.stat(self._tree(s.chain[0]))
                os.lchown(tmp / "fs", st.st_uid, st.st_gid)
            os.rename(tmp, self.root / "snapshots" / str(s.id))
            return self._mounts(s)
        except BaseException:
            self.state.remove(key)
            _remove_dir(tmp)
            _remove_dir(self.root / "snapshots" / str(s.id))
            raise

    def _mounts(self, s: Snapshot) -> list[Mount]:
        if not s.chain:
            mode = "ro" if s.kind is Kind.VIEW else "rw"
            return [Mount("bind", str(self._upper(s.id)), [mode, "rbind"])]
        lowers = [self._tree(p) for p in s.chain]
        options = []
        if s.kind is Kind.ACTIVE:
            options = [f"workdir={self._upper(s.id).parent / 'work'}",
                       f"upperdir={self._upper(s.id)}"]
        elif len(lowers) == 1:
            return [Mount("bind", lowers[0], ["ro", "rbind"])]
        if self._index_off:
            options.append("index=off")
        options.append("lowerdir=" + ":".join(lowers))
        return [Mount("overlay", "overlay", options)]


def chain_id(name: str, labels: dict[str, str]) -> str:
    """The layer chain ID a committed snapshot stands for: its target label,
    else its name without the ``NAMESPACE/SEQ/`` containerd's metadata store
    puts before each key (its Commit does not pass the labels on)."""
    if TARGET in labels:
        return labels[TARGET]
    m = re.fullmatch(r"[^/]+/\d+/(.+)", name)
    return m.group(1) if m else name


def disk_usage(path: Path) -> tuple[int, int]:
    """Bytes allocated and distinct inodes under ``path``, as containerd's
    ``fs.DiskUsage`` counts them."""
    seen: set[int] = set()
    size = 0
    for dirpath, dirnames, filenames in os.walk(path):
        links = [n for n in dirnames if os.path.islink(os.path.join(dirpath, n))]
        for p in [dirpath, *(os.path.join(dirpath, n) for n in [*filenames, *links])]:
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                size += st.st_blocks * 512
    return size, len(seen)


def _answers(path: str) -> bool:
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _overlay_index_on() -> bool:
    """containerd's overlayfs snapshotter adds ``index=off`` when the kernel
    turns overlay's inode index on by default; so do we."""
    try:
        return Path("/sys/module/overlay/parameters/index").read_text().strip() == "Y"
    except OSError:
        return False


def _remove_dir(path: Path) -> None:
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("cannot remove %s: %s", path, e)

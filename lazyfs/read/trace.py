"""First-read traces: which parts of which files a start needed, and when.

A container start reads the same files in the same order every time. Each
mount notes its reads (by layer digest, the format's locator of the file,
and the range) during its first minutes and keeps the result in the store,
keyed by manifest digest; a later cold mount of the same image, or of one
sharing layers, fetches those ranges ahead of the reads (``read.replay``).
``lazyfs trace push`` publishes a trace as an artifact referring to the
image, so a mount on another machine can use it too.

A trace is only a hint and never trusted: before it is replayed each entry
must name a layer of the image and the locator of a regular file in that
layer's table, and its range is clamped to the file. What is fetched then is
read and verified by the ordinary read path, so a hostile trace can make a
mount fetch more (bounded by ``MAX_ENTRIES`` files of the image), never serve
other bytes.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import CacheError, LayerFormatError, LazyfsError
from ..formats import LayerTable
from ..formats.entry import EntryType
from ..index.shared import find_artifacts, push_referrer
from ..manifest import Descriptor

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/vnd.lazyfs.trace.v1+json"
ARTIFACT_TYPE = "application/vnd.lazyfs.trace.v1"
MAX_ENTRIES = 20_000
"""Entries a trace keeps (recording stops there) and a loaded trace is cut to."""
MAX_TRACE_BYTES = 4 << 20
"""A trace blob larger than this is refused unread."""
RECORD_SECONDS = 300.0
"""How long after opening reads are recorded: the start, not the whole life."""
RANGES_PER_FILE = 256
"""Separate ranges noted per file (a database read at random): more are not
worth a replay, and each read is checked against those already noted."""
SAVE_EVERY = 5.0
RELATED_TRACES = 32
"""Other images' traces looked at for shared layers, newest first."""


@dataclass(frozen=True, slots=True)
class TraceEntry:
    at: float
    """Seconds after the image was opened that the range was first needed."""
    layer: str
    data: bytes
    """The layer format's locator of the file."""
    offset: int
    size: int


@dataclass
class Trace:
    manifest: str
    reference: str = ""
    created: str = ""
    formats: dict[str, str] = field(default_factory=dict)
    """Layer digest -> format, for showing paths (from the layer's table)."""
    entries: list[TraceEntry] = field(default_factory=list)

    @property
    def layers(self) -> list[str]:
        return list(dict.fromkeys(e.layer for e in self.entries))

    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)

    def to_json(self) -> bytes:
        layers = list(dict.fromkeys([*self.formats, *self.layers]))
        pos = {digest: i for i, digest in enumerate(layers)}
        doc = {"mediaType": MEDIA_TYPE, "manifest": self.manifest, "reference": self.reference,
               "created": self.created,
               "layers": [{"digest": d, "format": self.formats.get(d, "")} for d in layers],
               "entries": [[round(e.at * 1000), pos[e.layer],
                            base64.b64encode(e.data).decode(), e.offset, e.size]
                           for e in self.entries]}
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes, what: str = "trace") -> Trace:
        """Parse a trace; ``LayerFormatError`` for anything malformed, and one
        of more than ``MAX_ENTRIES`` entries is cut there (logged)."""
        if len(data) > MAX_TRACE_BYTES:
            raise LayerFormatError(f"{what}: {len(data)} bytes, more than a trace may have "
                                   f"({MAX_TRACE_BYTES})")
        try:
            doc = json.loads(data)
            if doc.get("mediaType") != MEDIA_TYPE:
                raise ValueError(f"media type is {doc.get('mediaType')!r}")
            layers = [(str(x["digest"]), str(x.get("format", ""))) for x in doc["layers"]]
            rows = doc["entries"]
            if not isinstance(rows, list):
                raise ValueError("entries is not a list")
            if len(rows) > MAX_ENTRIES:
                log.warning("%s: %d entries, using the first %d", what, len(rows), MAX_ENTRIES)
                rows = rows[:MAX_ENTRIES]
            entries = [_entry(row, layers) for row in rows]
            return cls(str(doc["manifest"]), str(doc.get("reference", "")),
                       str(doc.get("created", "")), {d: f for d, f in layers if f}, entries)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            raise LayerFormatError(f"{what}: not a valid trace: {e}") from None


def _entry(row, layers: list[tuple[str, str]]) -> TraceEntry:
    at, layer, data, offset, size = row
    if not all(isinstance(v, int) for v in (at, layer, offset, size)) or layer < 0:
        raise ValueError(f"bad entry {row!r}")
    return TraceEntry(at / 1000, layers[layer][0], base64.b64decode(data, validate=True),
                      offset, size)


class Recorder:
    """Notes the reads of an opened image, each file range once, in order:
    a read continuing the file's last noted range extends it."""

    def __init__(self, manifest: str, reference: str, layers: Sequence[tuple[str, str]],
                 started: float | None = None, window: float = RECORD_SECONDS,
                 limit: int = MAX_ENTRIES):
        self.started = time.monotonic() if started is None else started
        self._trace = Trace(manifest, reference, formats=dict(layers))
        self._digests = [d for d, _ in layers]
        self._window = window
        self._limit = limit
        self._files: dict[tuple[int, bytes], list[int]] = {}
        self.changed = False

    def note(self, layer: int, data: bytes, offset: int, size: int) -> None:
        at = time.monotonic() - self.started
        entries = self._trace.entries
        if at > self._window or size <= 0:
            return
        noted = self._files.setdefault((layer, data), [])
        end = offset + size
        for i in noted:
            e = entries[i]
            if e.offset <= offset and end <= e.offset + e.size:
                return
        if noted and (e := entries[noted[-1]]).offset + e.size == offset:
            entries[noted[-1]] = TraceEntry(e.at, e.layer, data, e.offset, e.size + size)
        elif len(entries) < self._limit and len(noted) < RANGES_PER_FILE:
            noted.append(len(entries))
            entries.append(TraceEntry(at, self._digests[layer], data, offset, size))
        else:
            return
        self.changed = True

    def __len__(self) -> int:
        return len(self._trace.entries)

    def trace(self) -> Trace:
        """A copy of what was noted so far (no longer ``changed``)."""
        self.changed = False
        t = self._trace
        return Trace(t.manifest, t.reference, _now(), dict(t.formats), list(t.entries))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- in the store ----------------------------------------------------------------------

def trace_path(store, manifest: str) -> Path:
    return store.index_path("traces", manifest)


def save_trace(store, trace: Trace) -> None:
    """Keep ``trace`` as the image's trace (atomically; blocking, small),
    ahead of what the kept one noted and it did not (``merged``)."""
    path = trace_path(store, trace.manifest)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(merged(trace, _load_file(path)).to_json())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CacheError(f"cannot keep the trace of {trace.manifest}: {e.strerror}") from None


def merged(new: Trace, old: Trace | None) -> Trace:
    """``new``, then the entries of ``old`` that no entry of ``new`` covers:
    a mount that reads less than the start it replayed (one ``cat``) must not
    wipe that start's trace, and one that reads the same adds nothing."""
    if old is None or old.manifest != new.manifest:
        return new
    noted: dict[tuple[str, bytes], list[TraceEntry]] = {}
    for e in new.entries:
        noted.setdefault((e.layer, e.data), []).append(e)
    rest = [e for e in old.entries
            if not any(n.offset <= e.offset and e.offset + e.size <= n.offset + n.size
                       for n in noted.get((e.layer, e.data), ()))]
    entries = (new.entries + rest)[:MAX_ENTRIES]
    return Trace(new.manifest, new.reference or old.reference, new.created,
                 {**old.formats, **new.formats}, entries)


def load_trace(store, manifest: str) -> Trace | None:
    """The stored trace of image ``manifest``; ``None`` if there is none or
    it cannot be read (logged: the mount goes on without)."""
    return _load_file(trace_path(store, manifest))


def _load_file(path: Path) -> Trace | None:
    try:
        return Trace.from_json(path.read_bytes(), f"trace {path.name}")
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("cannot read trace %s: %s", path, e.strerror)
    except LayerFormatError as e:
        log.warning("%s", e)
    return None


def related_trace(store, manifest: str, layers: Sequence[str]) -> Trace | None:
    """The newest stored trace of another image with a layer among ``layers``,
    cut to the entries of those layers."""
    directory = trace_path(store, manifest).parent
    try:
        files = sorted((p for p in directory.iterdir() if not p.name.startswith(".")),
                       key=_mtime, reverse=True)
    except OSError:
        return None
    wanted = set(layers)
    for path in files[:RELATED_TRACES]:
        trace = _load_file(path)
        if trace is None or trace.manifest == manifest:
            continue
        entries = [e for e in trace.entries if e.layer in wanted]
        if entries:
            trace.entries = entries
            return trace
    return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


# -- checking a trace against the image ----------------------------------------------

def plan(trace: Trace, layers: Sequence[str],
         tables: Sequence[LayerTable | None]) -> tuple[list[tuple[int, bytes, int, int]], int]:
    """The reads to replay, as ``(layer index, locator, offset, size)`` in the
    trace's order, and how many entries were dropped: those naming a layer the
    image lacks or one not indexed yet, a locator that is no regular file of
    that layer, or a range outside the file (ranges past its end are clamped)."""
    position = {d: i for i, d in enumerate(layers)}
    files: dict[int, dict[bytes, int]] = {}
    out: list[tuple[int, bytes, int, int]] = []
    seen = set()
    unknown: set[str] = set()
    bad = clamped = 0
    for e in trace.entries:
        i = position.get(e.layer)
        if i is None:
            unknown.add(e.layer)
            continue
        if tables[i] is None:
            continue
        if i not in files:
            files[i] = _file_sizes(tables[i])
        size = files[i].get(e.data)
        if size is None or e.offset < 0 or e.size <= 0 or e.offset >= size:
            bad += 1
            continue
        length = min(e.size, size - e.offset)
        clamped += length != e.size
        read = (i, e.data, e.offset, length)
        if read not in seen:
            seen.add(read)
            out.append(read)
    if unknown:
        log.warning("trace of %s: %d layer(s) not in this image, their entries ignored",
                    trace.manifest, len(unknown))
    if bad or clamped:
        log.warning("trace of %s: %d entries dropped and %d clamped (no such file or range "
                    "in this image)", trace.manifest, bad, clamped)
    return out, len(trace.entries) - len(out)


def _file_sizes(table: LayerTable | None) -> dict[bytes, int]:
    if table is None:
        return {}
    return {e.data: e.size for e in table.entries if e.type is EntryType.FILE and e.data}


# -- shared through the registry -------------------------------------------------------

async def push_trace(client, ref, subject: Descriptor, trace: Trace) -> str:
    """Publish ``trace`` as an artifact referring to image ``subject``; its digest."""
    return await push_referrer(client, ref, subject, ARTIFACT_TYPE,
                               [(MEDIA_TYPE, trace.to_json(), {})])


async def pull_trace(client, ref, manifest: str) -> Trace | None:
    """The newest usable trace published for image ``manifest``; ``None`` when
    there is none (a bad one is logged and passed over)."""
    try:
        found = await find_artifacts(client, ref, manifest, ARTIFACT_TYPE)
    except LazyfsError as e:
        log.info("image %s: no published trace: %s", manifest, e)
        return None
    for artifact in found:
        try:
            if artifact.subject is None or artifact.subject.digest != manifest:
                raise LayerFormatError(f"its subject is not image {manifest}")
            blobs = [d for d in artifact.layers if d.media_type == MEDIA_TYPE]
            if not blobs:
                raise LayerFormatError("it holds no trace")
            data = await client.read_blob(ref, blobs[0], limit=MAX_TRACE_BYTES)
            trace = Trace.from_json(data)
            if trace.manifest != manifest:
                raise LayerFormatError(f"it records image {trace.manifest}, not {manifest}")
            return trace
        except LazyfsError as e:
            log.warning("image %s: ignoring trace artifact %s: %s", manifest, artifact.digest, e)
    return None

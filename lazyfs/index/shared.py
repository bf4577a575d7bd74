"""Layer tables shared through the registry, so a gzip image is indexed once.

A layer with no table of contents (plain gzip, tar, zstd) needs one full
pass before its first lazy read. Whoever makes that pass can publish the
result as an OCI artifact whose ``subject`` is the image manifest (see
``docs/index-artifact.md``); everyone else finds it among the manifest's
referrers and skips the pass.

An artifact is never trusted for more than it can be checked against: each
table blob must hash to the digest its manifest lists, describe the layer it
is annotated for (the layer digest is also inside the table), and hold spans
that stay inside the layer blob. Every span the reader later fetches is
checked against the span digest in the table, so what is inflated is the
compressed bytes the table's author hashed. What a forged table can still
lie about is documented with the format; ``verify_table`` checks a table
fully against the blob.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import trio
import zstandard

from ..errors import (CacheError, LayerFormatError, LazyfsError, NotFound, RegistryError,
                      UnsupportedMediaType, UsageError)
from ..formats import LayerFormat, LayerTable, format_named
from .layertable import MAGIC as TABLE_MAGIC
from .layertable import load_layer_table, table_path
from ..manifest import OCI_EMPTY, OCI_INDEX, OCI_MANIFEST, Descriptor, Manifest, parse_manifest
from ..reference import Reference

ARTIFACT_TYPE = "application/vnd.lazyfs.index.v1"
TABLE_MEDIA_TYPE = "application/vnd.lazyfs.layer-table.v1"
ANNOTATION_LAYER = "dev.lazyfs.layer.digest"
ANNOTATION_FORMAT = "dev.lazyfs.layer.format"
ANNOTATION_CREATED = "org.opencontainers.image.created"
EMPTY_CONFIG = b"{}"
MAX_TABLE_BLOB = 256 << 20
MAX_TABLE_INFLATED = 1 << 30
"""A table's payload may not claim to inflate to more than this (a zstd bomb)."""
MAX_ARTIFACTS = 8
"""Artifacts tried per image, newest first."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SharedLayer:
    """One table blob of an artifact, and the layer it claims to describe."""

    layer: str
    format: str
    blob: Descriptor


# -- the artifact, as pure functions of bytes ------------------------------------------

def artifact_manifest(subject: Descriptor, tables: Sequence[tuple[str, str, bytes]],
                      created: str | None = None) -> bytes:
    """The artifact manifest for ``(layer digest, format, table bytes)`` rows."""
    return artifact_document(subject, ARTIFACT_TYPE, _table_blobs(tables), created)


def _table_blobs(tables: Sequence[tuple[str, str, bytes]]) -> list[tuple[str, bytes, dict]]:
    return [(TABLE_MEDIA_TYPE, data, {ANNOTATION_LAYER: layer, ANNOTATION_FORMAT: fmt})
            for layer, fmt, data in tables]


def artifact_document(subject: Descriptor, artifact_type: str,
                      blobs: Sequence[tuple[str, bytes, dict]], created: str | None = None) -> bytes:
    """An artifact manifest referring to ``subject``, for ``(media type, bytes,
    annotations)`` blobs: the form every lazyfs artifact (index, trace) takes."""
    created = created or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": _descriptor(OCI_EMPTY, EMPTY_CONFIG),
        "layers": [dict(_descriptor(media_type, data), annotations=annotations)
                   for media_type, data, annotations in blobs],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest,
                    "size": subject.size},
        "annotations": {ANNOTATION_CREATED: created},
    }
    return json.dumps(doc, indent=2, sort_keys=True).encode()


def shared_layers(manifest: Manifest, subject: str) -> list[SharedLayer]:
    """The table blobs of an artifact manifest that really is one for ``subject``."""
    what = f"index artifact {manifest.digest}"
    if manifest.artifact_type != ARTIFACT_TYPE:
        raise LayerFormatError(f"{what}: artifactType is {manifest.artifact_type!r}")
    if manifest.subject is None or manifest.subject.digest != subject:
        raise LayerFormatError(f"{what}: its subject is not image {subject}")
    out = []
    for d in manifest.layers:
        layer, fmt = d.annotations.get(ANNOTATION_LAYER), d.annotations.get(ANNOTATION_FORMAT)
        if d.media_type == TABLE_MEDIA_TYPE and layer and _shareable(fmt):
            out.append(SharedLayer(layer, fmt, d))
    return out


def _shareable(name) -> bool:
    """Whether ``name`` is a format whose table is worth sharing; the formats
    with their own TOC (eStargz, zstd:chunked) are not."""
    try:
        return format_named(name).shareable
    except UnsupportedMediaType:
        return False


def _format(fmt: LayerFormat | str) -> LayerFormat:
    return fmt if isinstance(fmt, LayerFormat) else format_named(fmt)


def referrers_entry(digest: str, raw: bytes) -> dict:
    """The descriptor a referrers index lists for the artifact manifest ``raw``."""
    doc = json.loads(raw)
    entry = {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(raw),
             "artifactType": doc.get("artifactType", ARTIFACT_TYPE)}
    if doc.get("annotations"):
        entry["annotations"] = doc["annotations"]
    return entry


def merge_referrers(existing: bytes | None, entry: dict) -> bytes:
    """The referrers tag's index with ``entry`` added; other entries kept as they were."""
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    if existing is not None:
        try:
            doc = json.loads(existing)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("manifests"), list):
            raise RegistryError("the referrers tag holds something other than an OCI index; "
                                "not overwriting it")
    manifests = [m for m in doc["manifests"]
                 if not (isinstance(m, dict) and m.get("digest") == entry["digest"])]
    doc["manifests"] = manifests + [entry]
    return json.dumps(doc, indent=2).encode()


def referrers_tag(digest: str) -> str:
    """The OCI tag-schema fallback name, ``<alg>-<hex>`` (truncated to 128 characters)."""
    return digest.replace(":", "-")[:128]


def _descriptor(media_type: str, data: bytes) -> dict:
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
            "size": len(data)}


# -- loading one shared table, with every check that needs no fetch ----------------------

def load_shared_table(data: bytes, desc: Descriptor, fmt: LayerFormat | str,
                      directory: Path) -> Path:
    """Check ``data`` (a table blob already verified by digest) against the layer
    ``desc``; on success it becomes a file in ``directory`` whose path is
    returned, ready to be renamed into place. ``LayerFormatError`` otherwise."""
    what = f"shared table for layer {desc.digest}"
    if not data.startswith(TABLE_MAGIC):
        raise LayerFormatError(f"{what}: not a lazyfs layer table")
    try:
        claimed = zstandard.frame_content_size(data[len(TABLE_MAGIC) + 32:])
    except zstandard.ZstdError:
        raise LayerFormatError(f"{what}: payload is not zstd") from None
    if claimed < 0 or claimed > MAX_TABLE_INFLATED:
        raise LayerFormatError(f"{what}: payload size unknown or too large ({claimed})")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".shared-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            table = load_layer_table(Path(tmp))
        except CacheError as e:
            raise LayerFormatError(f"{what}: {e}") from None
        check_table(table, desc, fmt)
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def check_table(table: LayerTable, desc: Descriptor, fmt: LayerFormat | str) -> None:
    """What can be checked of a table without the blob (see ``LayerFormat.check_table``)."""
    try:
        _format(fmt).check_table(table, desc)
    except LayerFormatError as e:
        raise LayerFormatError(f"shared table for layer {desc.digest}: {e}") from None


# -- finding and loading shared tables when an image is opened ------------------------

class SharedIndex:
    """The index artifacts of one image manifest, looked up at most once."""

    def __init__(self, client, ref: Reference, subject: str):
        self._client = client
        self._ref = dataclasses.replace(ref, tag=None, digest=subject)
        self._subject = subject
        self._lock = trio.Lock()
        self._layers: list[SharedLayer] | None = None
        self.loaded: list[str] = []
        """Layer digests whose table came from an artifact."""

    async def table(self, desc: Descriptor, fmt: LayerFormat | str,
                    path: Path) -> LayerTable | None:
        """The shared table for ``desc``, checked and saved at ``path``; ``None``
        (with a warning for a bad artifact) when there is none to use."""
        fmt = _format(fmt)
        if not fmt.shareable:
            return None
        for shared in await self._lookup():
            if shared.layer != desc.digest:
                continue
            if shared.format != fmt.name:
                log.warning("layer %s: ignoring a shared %s table; the layer is %s",
                            desc.digest, shared.format, fmt.name)
                continue
            try:
                table = await self._load(shared, desc, fmt, path)
            except LazyfsError as e:
                log.warning("layer %s: ignoring shared table %s: %s",
                            desc.digest, shared.blob.digest, e)
                continue
            self.loaded.append(desc.digest)
            return table
        return None

    async def _load(self, shared: SharedLayer, desc: Descriptor, fmt: LayerFormat,
                    path: Path) -> LayerTable:
        data = await self._client.read_blob(self._ref, shared.blob, limit=MAX_TABLE_BLOB)

        def place() -> LayerTable:
            tmp = load_shared_table(data, desc, fmt, path.parent)
            os.replace(tmp, path)
            return load_layer_table(path)

        return await trio.to_thread.run_sync(place)

    async def _lookup(self) -> list[SharedLayer]:
        async with self._lock:
            if self._layers is None:
                self._layers = []
                try:
                    self._layers = await self._find()
                except LazyfsError as e:
                    log.warning("image %s: no shared index: %s", self._subject, e)
            return self._layers

    async def _find(self) -> list[SharedLayer]:
        out: list[SharedLayer] = []
        for manifest in await find_artifacts(self._client, self._ref, self._subject,
                                             ARTIFACT_TYPE):
            try:
                out += shared_layers(manifest, self._subject)
            except LazyfsError as e:
                log.warning("image %s: ignoring index artifact %s: %s",
                            self._subject, manifest.digest, e)
        return out


async def find_artifacts(client, ref: Reference, subject: str, artifact_type: str,
                         limit: int = MAX_ARTIFACTS) -> list[Manifest]:
    """The manifests of ``subject``'s referrers of ``artifact_type`` (the
    referrers API, else the tag fallback), newest first, at most ``limit``;
    one that cannot be fetched or is no manifest is logged and skipped."""
    ref = dataclasses.replace(ref, tag=None, digest=subject)
    found = await client.get_referrers(ref, subject, artifact_type)
    found.sort(key=lambda d: d.annotations.get(ANNOTATION_CREATED, ""), reverse=True)
    out: list[Manifest] = []
    for d in found[:limit]:
        try:
            raw, media_type, digest = await client.get_manifest(
                dataclasses.replace(ref, digest=d.digest))
            manifest = parse_manifest(raw, media_type, digest)
            if not isinstance(manifest, Manifest):
                raise LayerFormatError(f"artifact {d.digest} is not a manifest")
            out.append(manifest)
        except LazyfsError as e:
            log.warning("image %s: ignoring artifact %s: %s", subject, d.digest, e)
    return out


# -- verifying a shared table against the whole blob ----------------------------------

def verify_table(table: LayerTable, desc: Descriptor, blob: Path) -> list[str]:
    """What is wrong with a shared ``table`` for the verified local ``blob``
    (empty: it reads exactly like a table built here). As costly as building:
    a full pass for the entries, and every span inflated from its checkpoint
    and compared with the real stream. Blocking; run it in a worker thread."""
    return format_named(table.format).table_differences(table, desc, blob)


async def verify_image(client, image) -> dict[str, list[str] | None]:
    """Per shareable layer of ``image``: the problems of the newest usable shared
    table (``[]`` when it is exact), or ``None`` when there is none. Fetches
    each such layer whole."""
    shared = SharedIndex(client, image.resolved.pinned, image.digest)
    out: dict[str, list[str] | None] = {}
    with tempfile.TemporaryDirectory(prefix="lazyfs-verify-") as tmp:
        for info, layer in zip(image.layers, image.reader.layers):
            if not _shareable(info.format):
                continue
            table = await shared.table(info.desc, info.format, Path(tmp) / "table")
            if table is None:
                out[info.desc.digest] = None
                continue
            path = await layer.blob.path()
            out[info.desc.digest] = await trio.to_thread.run_sync(
                verify_table, table, info.desc, path)
    return out


# -- publishing ------------------------------------------------------------------------

async def publish_index(client, image) -> str:
    """Publish the tables of ``image``'s layers that cost a full pass as an
    index artifact; returns the artifact manifest's digest."""
    ref = image.ref
    if ref.transport != "docker":
        raise UsageError(f"{ref}: only images in a registry can carry a shared index")
    manifest = image.resolved.manifest
    subject = Descriptor(manifest.media_type, manifest.digest, len(manifest.raw))
    await image.stored()
    tables = await trio.to_thread.run_sync(_table_bytes, image)
    if not tables:
        raise UsageError(f"{ref}: no layer needs a shared index (every layer has its own TOC)")
    return await push_artifact(client, ref, subject, tables)


async def push_artifact(client, ref: Reference, subject: Descriptor,
                        tables: Sequence[tuple[str, str, bytes]]) -> str:
    """Push the tables as an index artifact; returns the manifest's digest."""
    return await push_referrer(client, ref, subject, ARTIFACT_TYPE, _table_blobs(tables))


async def push_referrer(client, ref: Reference, subject: Descriptor, artifact_type: str,
                        blobs: Sequence[tuple[str, bytes, dict]]) -> str:
    """Push the blobs, then the artifact manifest by digest, then add it to the
    referrers tag; returns the manifest's digest."""
    at = dataclasses.replace(ref, tag=None, digest=None)
    await client.push_blob(at, EMPTY_CONFIG)
    for _, data, _ in blobs:
        await client.push_blob(at, data)
    raw = artifact_document(subject, artifact_type, blobs)
    digest = "sha256:" + _sha256(raw)
    await client.push_manifest(dataclasses.replace(at, digest=digest), raw, OCI_MANIFEST)
    await _add_referrer(client, at, subject.digest, referrers_entry(digest, raw))
    return digest


async def _add_referrer(client, ref: Reference, subject: str, entry: dict) -> None:
    """Update the tag-schema fallback; registries with the referrers API list
    the artifact anyway, and the tag is harmless there."""
    tag_ref = dataclasses.replace(ref, tag=referrers_tag(subject), digest=None)
    try:
        existing, _, _ = await client.get_manifest(tag_ref)
    except NotFound:
        existing = None
    await client.push_manifest(tag_ref, merge_referrers(existing, entry), OCI_INDEX)


def _table_bytes(image) -> list[tuple[str, str, bytes]]:
    out = []
    for info in image.layers:
        if not _shareable(info.format):
            continue
        path = table_path(image.store, info.format, info.desc.digest)
        try:
            out.append((info.desc.digest, info.format, path.read_bytes()))
        except OSError as e:
            raise CacheError(f"layer {info.desc.digest}: cannot read its table: "
                             f"{e.strerror or e}") from None
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

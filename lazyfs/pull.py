"""Pulling an image into the store, and describing one without its layers.

A pull is docker's v2 pull loop minus the unpacking: resolve the reference to
one platform's manifest, keep the index, manifest and config as blobs (so the
image can be inspected and listed offline), fetch the missing layers a few
at a time, verify each, and only then record the image. A crash at any point
leaves at worst some complete blobs and abandoned tmp files; the record,
written last, is what makes an image exist.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import trio

from .errors import (DigestMismatch, NotFound, RangeNotSupported, RegistryUnreachable,
                     UsageError, lazyfs_error_in)
from .manifest import (Descriptor, Index, Platform, ResolvedImage, image_platforms, parse_config,
                       parse_manifest, select_platform, with_default_tag)
from .reference import Reference
from .registry import RegistryClient, RegistryOptions
from .store.blobs import ImageRecord, Store

MAX_CONCURRENT_LAYERS = 4
RESUME_CHUNK = 8 << 20


class Progress(Protocol):
    """Told about each layer of a pull; how (or whether) to show it is its business."""

    def layer(self, digest: str, total: int, present: bool) -> None: ...

    def advance(self, digest: str, done: int) -> None: ...

    def layer_done(self, digest: str) -> None: ...


class NoProgress:
    def layer(self, digest: str, total: int, present: bool) -> None:
        pass

    def advance(self, digest: str, done: int) -> None:
        pass

    def layer_done(self, digest: str) -> None:
        pass


@dataclass(frozen=True, slots=True)
class PullResult:
    ref: Reference
    """The reference pulled, with the tag docker would show (``latest`` by default)."""
    record: ImageRecord
    layers_fetched: int
    bytes_fetched: int
    was_recorded: bool
    """Whether the store already had exactly this image under this name."""

    @property
    def digest(self) -> str:
        return self.record.digest

    @property
    def up_to_date(self) -> bool:
        return self.was_recorded and self.layers_fetched == 0


async def resolve(ref: Reference, *, platform: Platform | None = None,
                  options: RegistryOptions | None = None) -> ResolvedImage:
    ref = with_default_tag(ref)
    async with RegistryClient(options) as client:
        return await client.resolve(ref, platform)


async def pull(ref: Reference, *, platform: Platform | None = None,
               options: RegistryOptions | None = None, store: Store,
               progress: Progress | None = None, client: RegistryClient | None = None) -> PullResult:
    """Make ``ref`` present and verified in ``store`` (docker pull, without unpacking)."""
    if ref.is_local:
        raise UsageError(f"{ref} is a local image; pull takes a registry reference")
    ref = with_default_tag(ref)
    progress = progress or NoProgress()
    if client is None:
        async with RegistryClient(options) as c:
            return await pull(ref, platform=platform, store=store, progress=progress, client=c)
    image = await client.resolve(ref, platform)
    async with store.lease():
        await trio.to_thread.run_sync(keep_metadata, store, image)
        fetched = await _fetch_layers(client, ref, image.manifest.layers, store, progress)
        rec = image_record(ref, image)
        known = await trio.to_thread.run_sync(
            lambda: store.find_image(rec.repository, rec.tag, rec.digest if not rec.tag else None))
        was_recorded = known is not None and known.digest == rec.digest
        await trio.to_thread.run_sync(store.record_image, rec)
    return PullResult(ref, rec, len(fetched), sum(d.size for d in fetched), was_recorded)


async def pull_all_tags(ref: Reference, *, platform: Platform | None = None,
                        options: RegistryOptions | None = None, store: Store,
                        progress: Progress | None = None) -> list[PullResult]:
    """``docker pull -a``: every tag of the repository, refused with a tag or digest."""
    if ref.tag is not None or ref.digest is not None:
        raise UsageError("tag can't be used with --all-tags/-a")
    async with RegistryClient(options) as client:
        tags = await client.list_tags(ref)
        if not tags:
            raise NotFound(f"repository {ref.name} has no tags")
        return [await pull(ref.with_tag(t), platform=platform, store=store, progress=progress,
                           client=client) for t in tags]


def keep_metadata(store: Store, image: ResolvedImage) -> None:
    """Index, manifest and config as blobs, so the image can be described offline. Blocking."""
    store.put_bytes(image.manifest.digest, image.manifest.raw)
    store.put_bytes(image.manifest.config.digest, image.config.raw)
    if image.index is not None:
        store.put_bytes(image.index.digest, image.index.raw)


async def _fetch_layers(client, ref: Reference, layers, store: Store,
                        progress: Progress) -> list[Descriptor]:
    missing = []
    for desc in dict((d.digest, d) for d in layers).values():
        present = store.has_blob(desc.digest)
        progress.layer(desc.digest, desc.size, present)
        if not present:
            missing.append(desc)
    limit = trio.CapacityLimiter(MAX_CONCURRENT_LAYERS)
    try:
        async with trio.open_nursery() as nursery:
            for desc in missing:
                nursery.start_soon(fetch_layer, client, ref, desc, store, progress, limit)
    except BaseExceptionGroup as group:
        error = lazyfs_error_in(group)
        if error is None:
            raise
        raise error from None
    return missing


async def fetch_layer(client: RegistryClient, ref: Reference, desc: Descriptor, store: Store,
                      progress: Progress | None = None, limit: trio.CapacityLimiter | None = None) -> None:
    """One layer into the store, verified; resumes an interrupted earlier attempt."""
    progress = progress or NoProgress()
    async with limit or trio.CapacityLimiter(1):
        if not await _download(client, ref, desc, store, progress, resume=True):
            await _download(client, ref, desc, store, progress, resume=False)
        progress.layer_done(desc.digest)


async def _download(client, ref: Reference, desc: Descriptor, store: Store, progress: Progress,
                    resume: bool) -> bool:
    """False when a resumed download failed verification: the kept bytes were bad."""
    resumed = False
    try:
        async with store.blob_writer(desc.digest, desc.size) as w:
            sink = _Counted(w, desc.digest, progress)
            resumed = resume and await _resume(client, ref, desc, w, sink)
            if not resumed:
                await trio.to_thread.run_sync(w.restart)
                await client.download_blob(ref, desc, sink)
    except DigestMismatch:
        if resumed:
            return False
        raise
    return True


async def _resume(client, ref: Reference, desc: Descriptor, w, sink) -> bool:
    """Finish an interrupted download with Range requests; False if it cannot be done."""
    offset = w.resume_offset()
    if not 0 < offset < desc.size:
        return False
    try:
        while offset < desc.size:
            end = min(offset + RESUME_CHUNK, desc.size)
            data = await client.get_range(ref, desc.digest, offset, end)
            await trio.to_thread.run_sync(sink.write, data)
            offset = end
    except RangeNotSupported:
        return False
    return True


class _Counted:
    """The blob writer, reporting bytes to the progress display as they arrive."""

    def __init__(self, writer, digest: str, progress: Progress):
        self._w, self._digest, self._progress = writer, digest, progress

    def write(self, data: bytes) -> int:
        n = self._w.write(data)
        self._progress.advance(self._digest, self._w.written)
        return n


def image_record(ref: Reference, image: ResolvedImage) -> ImageRecord:
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
        platform=_platform_of(image),
        created=image.config.created or "",
        size=m.config.size + sum(d.size for d in m.layers),
        pulled_at=time.time(),
        blobs=tuple(blobs),
    )


def _platform_of(image: ResolvedImage) -> str:
    p = image.config.platform
    return str(p) if p is not None else ""


# -- offline -----------------------------------------------------------------

def resolve_from_store(store: Store, ref: Reference, platform: Platform | None = None) -> ResolvedImage:
    """The image as a previous pull left it, for when the registry cannot be reached."""
    rec = store.find_image(ref.name, with_default_tag(ref).tag, ref.digest)
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
    return ResolvedImage(with_default_tag(ref), index, manifest, config, platforms)


def _stored_document(store: Store, digest: str, media_type: str):
    raw = store.read_bytes(digest)
    return parse_manifest(raw, media_type, digest)


async def resolve_for_inspect(ref: Reference, *, platform: Platform | None,
                              options: RegistryOptions | None,
                              store: Store) -> ResolvedImage:
    """Registry first; the store when the registry is unreachable and knows the image.
    ``oci:`` and ``docker-archive:`` references are read where they lie."""
    if ref.transport != "docker":
        from .read.sources import open_source
        return await open_source(ref, store).resolve(platform)
    try:
        image = await resolve(ref, platform=platform, options=options)
    except RegistryUnreachable as unreachable:
        try:
            return await trio.to_thread.run_sync(resolve_from_store, store, ref, platform)
        except NotFound:
            raise unreachable from None
    await trio.to_thread.run_sync(keep_metadata, store, image)
    return image


def describe(image: ResolvedImage) -> dict:
    """What ``lazyfs inspect`` prints."""
    m, c = image.manifest, image.config
    platforms = image.platforms or ((c.platform,) if c.platform is not None else ())
    return {
        "Name": str(image.ref),
        "Digest": image.digest,
        "MediaType": image.media_type,
        "Manifest": {"Digest": m.digest, "MediaType": m.media_type},
        "Platform": _platform_of(image),
        "Platforms": [str(p) for p in platforms],
        "Config": {
            "Digest": m.config.digest,
            "Created": c.created,
            "Env": list(c.env),
            "Entrypoint": list(c.entrypoint) if c.entrypoint is not None else None,
            "Cmd": list(c.cmd) if c.cmd is not None else None,
            "WorkingDir": c.working_dir,
            "User": c.user,
            "Labels": dict(c.labels),
        },
        "Layers": [
            {"Digest": d.digest, "MediaType": d.media_type, "Size": d.size,
             "Annotations": dict(d.annotations)} for d in m.layers
        ],
    }

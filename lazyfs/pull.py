"""Pulling an image into the store, and describing one without its layers.

A pull is docker's v2 pull loop minus the unpacking: resolve the reference to
one platform's manifest, keep the index, manifest and config as blobs (so the
image can be inspected and listed offline), fetch the missing layers a few
at a time, verify each, build each layer's table (the unpacked size ``images``
shows, and a head start for the first mount), and only then record the
image. A crash at any point leaves at worst some complete blobs and abandoned
tmp files; the record, written last, is what makes an image exist.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import trio

from .errors import (LayerFormatError, NotFound, RegistryUnreachable, UnsupportedMediaType,
                     UsageError, single_error)
from .formats.entry import EntryType
from .manifest import Descriptor, Platform, ResolvedImage, with_default_tag
from .read.sources import open_source
from .read.tables import layer_tables
from .reference import Reference
from .registry import RegistryClient, RegistryOptions
from .registry.download import fetch_blob
from .store.blobs import Store
from .store.records import (ImageRecord, image_record, keep_metadata, platform_of,
                            resolve_offline)

MAX_CONCURRENT_LAYERS = 4


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
        unpacked = await _unpacked_size(image.manifest.layers, open_source(ref, store, client), store)
        rec = image_record(ref, image, unpacked)
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


async def _fetch_layers(client: RegistryClient, ref: Reference, layers, store: Store,
                        progress: Progress) -> list[Descriptor]:
    missing = []
    for desc in dict((d.digest, d) for d in layers).values():
        present = store.has_blob(desc.digest)
        progress.layer(desc.digest, desc.size, present)
        if not present:
            missing.append(desc)
    limit = trio.CapacityLimiter(MAX_CONCURRENT_LAYERS)
    with single_error():
        async with trio.open_nursery() as nursery:
            for desc in missing:
                nursery.start_soon(_fetch_layer, client, ref, desc, store, progress, limit)
    return missing


async def _fetch_layer(client: RegistryClient, ref: Reference, desc: Descriptor, store: Store,
                       progress: Progress, limit: trio.CapacityLimiter) -> None:
    async with limit:
        await fetch_blob(client, ref, desc, store,
                         lambda done: progress.advance(desc.digest, done))
        progress.layer_done(desc.digest)


async def _unpacked_size(layers: list[Descriptor], source, store: Store) -> int | None:
    """What ``docker images`` shows as SIZE: the regular files' sizes summed
    over the layers, from each layer's table (built from the verified blob
    now, and kept for the first mount); ``None`` when a layer is not a
    filesystem layer lazyfs can read."""
    try:
        tables = await layer_tables(layers, source, store)
    except (LayerFormatError, UnsupportedMediaType):
        return None
    return sum(e.size for t in tables for e in t.entries if e.type is EntryType.FILE)


async def resolve_for_inspect(ref: Reference, *, platform: Platform | None,
                              options: RegistryOptions | None,
                              store: Store) -> ResolvedImage:
    """Registry first; the store when the registry is unreachable and knows the image.
    ``oci:`` and ``docker-archive:`` references are read where they lie."""
    if ref.transport != "docker":
        return await open_source(ref, store).resolve(platform)
    try:
        image = await resolve(ref, platform=platform, options=options)
    except RegistryUnreachable as unreachable:
        return await trio.to_thread.run_sync(resolve_offline, store, ref, platform, unreachable)
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
        "Platform": platform_of(image),
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

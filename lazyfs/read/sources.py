"""Where an image's bytes come from: a registry (through the store), an OCI
image layout, or a ``docker save`` archive.

Each source resolves a reference to the same ``ResolvedImage`` description and
hands out one ``BlobSource`` per layer, so everything after this module reads
local and remote images alike.
"""

from __future__ import annotations

import json
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from .. import manifest as mt
from ..blob import BlobSource, FileBlob, _pread, check_range, file_digest
from ..errors import (DigestMismatch, LayerFormatError, NotFound, RangeNotSupported,
                      RegistryUnreachable, UsageError)
from ..manifest import (Descriptor, Index, Manifest, Platform, ResolvedImage, check_config,
                        image_platforms, parse_config, parse_manifest, select_platform)
from ..reference import Reference
from ..registry.download import Consume, DownloadProgress, Fallback, fetch_blob, stream_blob
from ..store.records import keep_metadata, resolve_offline
from ..store.blobs import Store

log = logging.getLogger(__name__)


WHOLE_BLOB_ASKED = "the whole blob was asked for (index build or export)"


class ImageSource(Protocol):
    async def resolve(self, platform: Platform | None) -> ResolvedImage: ...

    def blob(self, desc: Descriptor) -> BlobSource: ...


# -- registry -----------------------------------------------------------------

class RegistryBlob:
    """Ranges from the registry until the whole blob is in the store; then the
    store alone. A registry that ignores Range makes this pull the blob whole,
    once, however many readers ask at the same time."""

    def __init__(self, client, ref: Reference, desc: Descriptor, store: Store,
                 fallback: Fallback, full_pull: bool = False):
        self.digest, self.size = desc.digest, desc.size
        self._client, self._ref, self._desc, self._store = client, ref, desc, store
        self.fallback = fallback
        self._keeping = False
        if full_pull and not fallback.reason:
            fallback.reason = "whole layers requested (--full-pull)"

    def local_path(self) -> Path | None:
        return self._store.blob_path(self.digest)

    async def read_range(self, start: int, end: int) -> bytes:
        """For reads outside the reader (a TOC, a footer), which keep no
        attempts of their own: the client retries what fails in passing."""
        check_range(self, start, end)
        if start == end:
            return b""
        parts, _ = await self._read([(start, end)], retry=True)
        return parts[0]

    async def read_ranges(self, spans: list[tuple[int, int]]) -> tuple[list[bytes], int]:
        """The bytes of each (non-empty) span and the number of requests it
        took: 0 when the store had the whole blob. Each request is sent once:
        the reader's attempts are the retry budget of a read."""
        return await self._read(spans, retry=False)

    async def _read(self, spans: list[tuple[int, int]],
                    retry: bool) -> tuple[list[bytes], int]:
        for start, end in spans:
            check_range(self, start, end)
        local = self._store.blob_path(self.digest)
        if local is None and not self.fallback.reason:
            try:
                return await self._client.fetch_spans(self._ref, self.digest, spans,
                                                      retry=retry, whole=self._whole_answer)
            except RangeNotSupported as e:
                if not self.fallback.reason:
                    self.fallback.reason = str(e)
                    log.warning("layer %s: %s; pulling it whole", self.digest, e)
            local = self._store.blob_path(self.digest)
        if local is None:
            local = await self.path(self.fallback.reason)
        try:
            return await trio.to_thread.run_sync(_pread_all, local, spans), 0
        except FileNotFoundError:
            # evicted under the cache limit since we looked: by range after all
            return await self._read(spans, retry)

    def bad_bytes(self, error: Exception) -> None:
        """Bytes fetched for this blob failed their check: if a mirror sent
        them, the next attempt goes elsewhere."""
        if self.local_path() is None:
            self._client.distrust(self._ref, self.digest, error)

    async def _whole_answer(self, ep, spans: list[tuple[int, int]], multi: bool):
        """A 200 to a Range request is data, not a reason to give up ranges:
        a pull-through mirror answers so while it fills itself, S3 so to
        several ranges. The bytes needed are taken from the front of the
        body and the rest left unsent (the client's doing); a mirror that
        keeps answering so for this blob, or a read reaching past the blob's
        middle, has the whole answer kept (verified) in the store instead. A
        registry's second 200 to a single range means it ignores Range: the
        layer is pulled whole, once."""
        fb = self.fallback
        if not multi:
            fb.whole_answers += 1
            if not ep.mirror and fb.whole_answers > 1:
                raise RangeNotSupported(f"registry {ep.host} answered a Range request for blob "
                                        f"{self.digest} with HTTP 200, not 206")
        if self._keeping or not (ep.mirror and (fb.whole_answers > 2
                                                or 2 * max(e for _, e in spans) >= self.size)):
            return None

        self._keeping = True

        async def keep(chunks) -> list[bytes]:
            try:
                path = await self._store.write_blob(self.digest, chunks, self.size)
            finally:
                self._keeping = False
            fb.pulled_bytes += self.size
            fb.pull_reason = (f"mirror {ep.host} answered a Range request with the whole "
                              "blob, kept")
            return await trio.to_thread.run_sync(_pread_all, path, spans)
        return keep

    async def path(self, why: str = "") -> Path:
        """The verified blob in the store, pulled once for every concurrent caller."""
        async with self.fallback.lock:
            local = self._store.blob_path(self.digest)
            if local is None:
                local = await fetch_blob(self._client, self._ref, self._desc, self._store)
                self.fallback.pulled_bytes += self.size
                self.fallback.pull_reason = why or self.fallback.reason or WHOLE_BLOB_ASKED
            return local

    async def stream(self, consume: Consume, progress: DownloadProgress) -> Path:
        """The whole blob into the store in parallel ranges, each byte handed in
        order to ``consume`` on the way (see ``download.stream_blob``)."""
        return await stream_blob(self._client, self._ref, self._desc, self._store, consume,
                                 fallback=self.fallback, progress=progress)


def _pread_all(path: Path, spans: list[tuple[int, int]]) -> list[bytes]:
    return [_pread(path, s, e - s) if s < e else b"" for s, e in spans]


class RegistrySource:
    def __init__(self, client, ref: Reference, store: Store, full_pull: bool = False):
        self.client, self.ref, self.store, self.full_pull = client, ref, store, full_pull
        self.fallbacks: dict[str, Fallback] = {}

    async def resolve(self, platform: Platform | None, alongside=None) -> ResolvedImage:
        """``alongside(manifest)`` runs while the config is fetched; it must
        not raise (a caller keeps its own failures for later). The manifest
        and config are checked and kept while it still runs (for a new
        image the layers' tables take longest)."""
        try:
            return await self.client.resolve(self.ref, platform, self._stored, alongside,
                                             self._kept)
        except RegistryUnreachable as e:
            r = await trio.to_thread.run_sync(resolve_offline, self.store, self.ref, platform, e)
            log.warning("%s; using the copy in the local store", e)
        await self._kept(r)
        return r

    async def _kept(self, r: ResolvedImage) -> None:
        check_config(r.manifest, r.config)
        await trio.to_thread.run_sync(keep_metadata, self.store, r)

    def _stored(self, digest: str) -> bytes | None:
        """A small blob kept by an earlier run (a config), unverified."""
        path = self.store.blob_path(digest)
        try:
            return path.read_bytes() if path is not None else None
        except OSError:
            return None

    def blob(self, desc: Descriptor) -> BlobSource:
        fb = self.fallbacks.setdefault(desc.digest, Fallback())
        return RegistryBlob(self.client, self.ref, desc, self.store, fb, self.full_pull)


# -- OCI image layout -------------------------------------------------------------

class OCILayoutSource:
    """``oci:DIR[:TAG]``: an image layout on disk (umoci, skopeo, buildah write these)."""

    def __init__(self, ref: Reference):
        self.ref = ref
        self.root = Path(ref.path or "")

    def _read(self, digest: str, limit: int = 16 << 20) -> bytes:
        path = self._blob_path(digest)
        if path.stat().st_size > limit:
            raise LayerFormatError(f"{self.ref}: blob {digest} is too large for a manifest")
        data = path.read_bytes()
        if file_digest(path) != digest:
            raise DigestMismatch(f"{self.ref}: blob {digest} does not match its digest")
        return data

    def _blob_path(self, digest: str) -> Path:
        algo, _, hexd = digest.partition(":")
        path = self.root / "blobs" / algo / hexd
        if not path.is_file():
            raise NotFound(f"{self.ref}: blob {digest} is missing from the layout")
        return path

    def _top(self) -> Descriptor:
        try:
            doc = json.loads((self.root / "index.json").read_text())
        except FileNotFoundError:
            raise NotFound(f"{self.ref}: {self.root} is not an OCI image layout "
                           "(no index.json)") from None
        except (OSError, ValueError) as e:
            raise LayerFormatError(f"{self.ref}: unreadable index.json ({e})") from None
        index = parse_manifest(json.dumps(doc).encode(), mt.OCI_INDEX, "sha256:" + "0" * 64)
        if not isinstance(index, Index):
            raise LayerFormatError(f"{self.ref}: index.json is not an image index")
        wanted = self.ref.tag
        named = [d for d in index.manifests
                 if d.annotations.get("org.opencontainers.image.ref.name") == wanted]
        if wanted is None:
            named = list(index.manifests)
            if len(named) != 1:
                raise UsageError(f"{self.ref}: the layout holds {len(named)} images; "
                                 "name one with oci:DIR:TAG")
        if not named:
            raise NotFound(f"{self.ref}: no image tagged {wanted!r} in {self.root}")
        return named[-1]

    async def resolve(self, platform: Platform | None) -> ResolvedImage:
        return await trio.to_thread.run_sync(self._resolve, platform)

    def _resolve(self, platform: Platform | None) -> ResolvedImage:
        desc = self._top()
        top = parse_manifest(self._read(desc.digest), desc.media_type, desc.digest)
        index = top if isinstance(top, Index) else None
        if index is not None:
            desc = select_platform(index, platform)
            top = parse_manifest(self._read(desc.digest), desc.media_type, desc.digest)
        if not isinstance(top, Manifest):
            raise LayerFormatError(f"{self.ref}: {desc.digest} is not an image manifest")
        config = parse_config(self._read(top.config.digest), top.config.digest)
        check_config(top, config)
        platforms = tuple(image_platforms(index)) if index is not None else ()
        return ResolvedImage(self.ref, index, top, config, platforms)

    def blob(self, desc: Descriptor) -> BlobSource:
        return FileBlob(self._blob_path(desc.digest), desc.digest, desc.size)


# -- docker save archives -----------------------------------------------------------

@dataclass
class _Member:
    name: str
    offset: int
    size: int


class SliceBlob:
    """One member of an uncompressed tar archive, read in place."""

    def __init__(self, archive: Path, member: _Member, digest: str, store: Store):
        self._archive, self._member, self._store = archive, member, store
        self.digest, self.size = digest, member.size

    async def read_range(self, start: int, end: int) -> bytes:
        check_range(self, start, end)
        return await trio.to_thread.run_sync(
            _pread, self._archive, self._member.offset + start, end - start)

    def local_path(self) -> Path | None:
        return self._store.blob_path(self.digest)

    async def path(self) -> Path:
        local = self._store.blob_path(self.digest)
        if local is not None:
            return local
        async with self._store.blob_writer(self.digest, self.size) as w:
            await trio.to_thread.run_sync(w.restart)
            pos = 0
            while pos < self.size:
                n = min(1 << 22, self.size - pos)
                await trio.to_thread.run_sync(w.write, await self.read_range(pos, pos + n))
                pos += n
        return self._store.blob_path(self.digest)


class DockerArchiveSource:
    """``docker-archive:FILE``: the tarball ``docker save`` writes."""

    def __init__(self, ref: Reference, store: Store):
        self.ref, self.store = ref, store
        self.path = Path(ref.path or "")
        self._members: dict[str, _Member] = {}
        self._digests: dict[str, _Member] = {}

    async def resolve(self, platform: Platform | None) -> ResolvedImage:
        return await trio.to_thread.run_sync(self._resolve, platform)

    def _resolve(self, platform: Platform | None) -> ResolvedImage:
        self._members = _list_members(self.path, self.ref)
        try:
            doc = json.loads(self._bytes("manifest.json"))
            entry = doc[0]
            config_raw = self._bytes(entry["Config"])
            layer_names = list(entry["Layers"])
        except (ValueError, LookupError, TypeError) as e:
            raise LayerFormatError(f"{self.ref}: bad manifest.json ({e})") from None
        import hashlib
        config_digest = "sha256:" + hashlib.sha256(config_raw).hexdigest()
        config = parse_config(config_raw, config_digest)
        layers = []
        for name in layer_names:
            m = self._member(name)
            digest = self._digest_member(m)
            kind = self._sniff(m)
            layers.append(Descriptor(kind, digest, m.size))
            self._digests[digest] = m
        man = {"schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST,
               "config": {"mediaType": mt.DOCKER_CONFIG, "digest": config_digest,
                          "size": len(config_raw)},
               "layers": [{"mediaType": d.media_type, "digest": d.digest, "size": d.size}
                          for d in layers]}
        raw = json.dumps(man).encode()
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        manifest = parse_manifest(raw, mt.DOCKER_MANIFEST, digest)
        check_config(manifest, config)
        if platform is not None and config.platform and not platform.matches(config.platform):
            from ..errors import NoMatchingPlatform
            raise NoMatchingPlatform(f"{self.ref} is for {config.platform}, not {platform}")
        self.store.put_bytes(config_digest, config_raw)
        return ResolvedImage(self.ref, None, manifest, config, ())

    def _member(self, name: str) -> _Member:
        m = self._members.get(name)
        if m is None:
            raise NotFound(f"{self.ref}: {name} is missing from the archive")
        return m

    def _bytes(self, name: str) -> bytes:
        m = self._member(name)
        if m.size > 16 << 20:
            raise LayerFormatError(f"{self.ref}: {name} is too large")
        return _pread(self.path, m.offset, m.size)

    def _sniff(self, m: _Member) -> str:
        head = _pread(self.path, m.offset, min(4, m.size))
        if head[:2] == b"\x1f\x8b":
            return mt.DOCKER_LAYER_GZIP
        if head[:4] == b"\x28\xb5\x2f\xfd":
            return mt.OCI_LAYER_ZSTD
        return mt.DOCKER_LAYER_TAR

    def _digest_member(self, m: _Member) -> str:
        import hashlib
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            f.seek(m.offset)
            left = m.size
            while left:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    raise LayerFormatError(f"{self.ref}: {m.name} is truncated")
                h.update(chunk)
                left -= len(chunk)
        return "sha256:" + h.hexdigest()

    def blob(self, desc: Descriptor) -> BlobSource:
        return SliceBlob(self.path, self._digests[desc.digest], desc.digest, self.store)


def _list_members(path: Path, ref: Reference) -> dict[str, _Member]:
    """Names and data offsets of an archive's regular files; the archive is
    the user's own file, so ``tarfile`` is acceptable here."""
    try:
        with tarfile.open(path, "r:") as tf:
            return {ti.name.lstrip("./") if ti.name.startswith("./") else ti.name:
                    _Member(ti.name, ti.offset_data, ti.size)
                    for ti in tf if ti.isreg()}
    except FileNotFoundError:
        raise NotFound(f"{ref}: no such file {path}") from None
    except (tarfile.TarError, OSError) as e:
        raise LayerFormatError(f"{ref}: not a docker-archive tarball ({e})") from None


def open_source(ref: Reference, store: Store, client=None, full_pull: bool = False) -> ImageSource:
    if ref.transport == "oci":
        return OCILayoutSource(ref)
    if ref.transport == "docker-archive":
        return DockerArchiveSource(ref, store)
    if client is None:
        raise UsageError(f"{ref}: a registry client is needed")
    return RegistrySource(client, ref, store, full_pull)

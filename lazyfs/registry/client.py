"""The registry client: manifests, blobs, ranges, tags, pushes and referrers,
as lazyfs values. How requests get there (endpoints, schemes, credentials,
retries, redirects, error answers) is ``transport``'s business.

It follows docker's pull loop where users can tell the difference:
manifests asked for with every supported media type and checked against
their digest, blobs hashed as they arrive and never trusted before.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing, asynccontextmanager, contextmanager
from dataclasses import replace

import httpx
import trio

from ..errors import (DigestMismatch, LazyfsError, NoMatchingPlatform, NotFound,
                      RangeNotSupported, RegistryError, RegistryInterrupted,
                      UnsupportedMediaType, single_error)
from ..manifest import (ACCEPT_TYPES, CONFIG_TYPES, OCI_INDEX, Descriptor, ImageConfig, Index,
                        Manifest, Platform, ResolvedImage, image_platforms, json_object,
                        parse_config, parse_manifest, select_platform, with_default_tag)
from ..reference import Reference
from .deadlines import HostSlots, Progress, request_deadline, within
from .ranges import (Part, Span, batches, boundary_of, cut, parse_content_range, parse_multipart,
                     range_header)
from .transport import (PULL, RESOLVE, Endpoint, RegistryOptions, Transport, body_chunks,
                        content_type, read_limited, repository_scope)

MAX_MANIFEST_SIZE = 4 << 20
"""Registries must accept manifests up to 4 MiB; anything bigger is not a manifest."""
MAX_CONFIG_SIZE = 64 << 20
MAX_RANGES_PER_REQUEST = 32
"""Go's ``http.ServeContent`` has no cap, but S3 and CDNs refuse long Range headers."""
MULTIPART_OVERHEAD = 512
"""Generous bytes per part for the boundary and part headers of a multi-range answer."""

Keep = Callable[[AsyncIterator[bytes]], Awaitable[list[bytes]]]
"""Takes in a whole blob's body (to keep it); returns the bytes of the spans."""
WholeAnswer = Callable[[Endpoint, list[Span], bool], Awaitable[Keep | None]]
"""``(endpoint, spans, multi)``: what to make of a 200 answered to a Range
request (``multi``: to a multi-range one): a ``Keep`` for the whole body,
``None`` to take the spans' bytes from its front and stop the transfer, or
an error raised."""


class RegistryClient:
    """``async with RegistryClient(options) as client:``, one connection pool for all registries."""

    def __init__(self, options: RegistryOptions | None = None) -> None:
        self.options = options or RegistryOptions()
        self._transport = Transport(self.options)
        self._multi_range: dict[str, bool] = {}
        self._range_limits: dict[str, HostSlots] = {}
        self._served: dict[str, Endpoint] = {}

    async def __aenter__(self) -> RegistryClient:
        await self._transport.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._transport.__aexit__(*exc)

    # --- images ------------------------------------------------------------

    async def resolve(self, ref: Reference, platform: Platform | None = None,
                      known: Callable[[str], bytes | None] | None = None,
                      alongside: Callable[[Manifest], Awaitable[None]] | None = None,
                      resolved: Callable[[ResolvedImage], Awaitable[None]] | None = None
                      ) -> ResolvedImage:
        """Tag or digest to verified manifest and config; diff_ids are checked by callers.
        ``known(digest)`` may hold the config already (a blob is named by its
        content): it is used, checked against the digest, without a request.
        ``alongside(manifest)`` runs while the config is fetched (a mount
        fetches the layers' TOCs meanwhile) and is waited for;
        ``resolved(image)`` runs once the config is in, still alongside."""
        ref = with_default_tag(ref)
        raw, media_type, digest = await self.get_manifest(ref)
        top = parse_manifest(raw, media_type, digest)
        if isinstance(top, Index):
            index = top
            manifest = await self._child_manifest(ref, select_platform(index, platform))
        else:
            index, manifest = None, top
        if manifest.config.media_type not in CONFIG_TYPES:
            raise UnsupportedMediaType(f"manifest {manifest.digest}: config media type "
                                       f"{manifest.config.media_type} is not a container image")
        if alongside is None:
            return await self._resolved(ref, platform, index, manifest, known, resolved)
        with single_error():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(alongside, manifest)
                return await self._resolved(ref, platform, index, manifest, known, resolved)

    async def _resolved(self, ref: Reference, platform: Platform | None, index: Index | None,
                        manifest: Manifest, known: Callable[[str], bytes | None] | None,
                        then: Callable[[ResolvedImage], Awaitable[None]] | None
                        ) -> ResolvedImage:
        config = await self._config(ref, manifest, known)
        if index is not None:
            platforms = image_platforms(index)
        else:
            platforms = [config.platform.normalized()] if config.platform else []
            if platform and config.platform and not platform.matches(config.platform):
                raise NoMatchingPlatform(f"image {ref} is for {config.platform.normalized()}, "
                                         f"not the requested {platform}")
        image = ResolvedImage(ref, index, manifest, config, tuple(platforms))
        if then is not None:
            await then(image)
        return image

    async def _config(self, ref: Reference, manifest: Manifest,
                      known: Callable[[str], bytes | None] | None) -> ImageConfig:
        raw = _verified(known(manifest.config.digest), manifest.config) if known else None
        if raw is None:
            raw = await self.read_blob(ref, manifest.config, MAX_CONFIG_SIZE)
        return parse_config(raw, manifest.config.digest)

    async def _child_manifest(self, ref: Reference, desc: Descriptor) -> Manifest:
        raw, media_type, digest = await self.get_manifest(ref.with_digest(desc.digest))
        if len(raw) != desc.size:
            raise DigestMismatch(f"manifest {digest}: {len(raw)} bytes, the index says {desc.size}")
        child = parse_manifest(raw, media_type or desc.media_type, digest)
        if not isinstance(child, Manifest):
            raise UnsupportedMediaType(
                f"manifest {digest}: an index inside an index is not supported")
        return child

    async def get_manifest(self, ref: Reference) -> tuple[bytes, str, str]:
        """``(raw, media_type, digest)``, the digest checked against the bytes."""
        what = _shown(ref)

        async def fetch(ep: Endpoint) -> tuple[bytes, str, str]:
            async with self._transport.open(ep, "GET", _path(ref, "manifests", ref.identifier),
                                            what, scope=repository_scope(ref),
                                            headers={"Accept": ", ".join(ACCEPT_TYPES)}) as resp:
                raw = await read_limited(resp, MAX_MANIFEST_SIZE, what, ep)
            return raw, content_type(resp), _check_manifest_digest(resp, raw, ref, what)

        return await self._transport.each_endpoint(ref, fetch, _need(ref))

    async def head_manifest(self, ref: Reference) -> Descriptor:
        """Digest and type without the body; GET for registries that omit the digest."""
        what = _shown(ref)

        async def head(ep: Endpoint) -> Descriptor | None:
            async with self._transport.open(ep, "HEAD", _path(ref, "manifests", ref.identifier),
                                            what, scope=repository_scope(ref),
                                            headers={"Accept": ", ".join(ACCEPT_TYPES)}) as resp:
                digest = resp.headers.get("docker-content-digest")
                size = resp.headers.get("content-length", "")
            if not digest or not size.isdigit() or (ref.digest and digest != ref.digest):
                return None
            return Descriptor(content_type(resp), digest, int(size))

        desc = await self._transport.each_endpoint(ref, head, _need(ref))
        if desc is None:
            raw, media_type, digest = await self.get_manifest(ref)
            desc = Descriptor(media_type, digest, len(raw))
        return desc

    # --- blobs -------------------------------------------------------------

    @asynccontextmanager
    async def get_blob_stream(self, ref: Reference, digest: str,
                              chunk_size: int = 1 << 20) -> AsyncIterator[AsyncIterator[bytes]]:
        """The blob's bytes as they arrive, unverified: the caller hashes them."""
        what = f"{ref.name}@{digest}"
        async with self._transport.reading(ref, "GET", _path(ref, "blobs", digest),
                                           what) as (ep, resp):
            async with aclosing(body_chunks(resp, chunk_size, ep)) as chunks:
                yield chunks

    async def read_blob(self, ref: Reference, desc: Descriptor,
                        limit: int = MAX_CONFIG_SIZE) -> bytes:
        """A small blob (a config) in memory, verified."""
        if desc.size > limit:
            raise RegistryError(
                f"blob {desc.digest}: {desc.size} bytes is too large to read into memory")
        hasher = _hasher(desc.digest)
        parts = []
        received = 0
        async with self.get_blob_stream(ref, desc.digest) as chunks:
            async for chunk in chunks:
                received += len(chunk)
                _check_not_longer(received, desc)
                parts.append(chunk)
                hasher.update(chunk)
        data = b"".join(parts)
        _check_blob(len(data), _digest_of(hasher), desc)
        return data

    async def get_range(self, ref: Reference, digest: str, start: int, end: int, *,
                        retry: bool = False) -> bytes:
        """Bytes ``[start, end)`` of a blob; ``RangeNotSupported`` if Range is ignored.

        Sent once: a reader's own attempts are the one retry budget of a read.
        ``retry=True`` is for fetching a whole blob in ranges, which has no
        attempts of its own."""
        parts, _ = await self.fetch_spans(ref, digest, [(start, end)], retry=retry)
        return parts[0]

    async def get_ranges(self, ref: Reference, digest: str, spans: list[Span]) -> list[bytes]:
        """The bytes of each ``(start, end)`` span of a blob, in the order asked.

        The spans are sent as given (merging nearby ones is the reader's
        choice), in one multi-range request per ``MAX_RANGES_PER_REQUEST``
        while the host answers those with 206, each request sent once. The
        first refusal (a 200 with the whole blob, as S3-style backends send,
        a 416 or a 501, as GHCR and Spegel answer) marks the host as
        single-range for the life of this client, and the spans are asked
        for one by one: a 200 is never taken as a partial answer.
        """
        parts, _ = await self.fetch_spans(ref, digest, spans)
        return parts

    async def fetch_spans(self, ref: Reference, digest: str, spans: list[Span], *,
                          retry: bool = False,
                          whole: WholeAnswer | None = None) -> tuple[list[bytes], int]:
        """``get_ranges`` at the first endpoint that answers (a mirror that
        fails hands over to the next, within the same call), with the number
        of requests it took. ``whole`` is given the body of a 200 answered
        to a Range request, to take the bytes from; without it such an
        answer is ``RangeNotSupported``."""
        _check_spans(digest, spans)

        async def at(ep: Endpoint) -> tuple[list[bytes], int]:
            requests = 0
            if len(spans) > 1 and self._multi_range.get(ep.api_host, True):
                parts: list[Part] = []
                for batch in batches(spans, MAX_RANGES_PER_REQUEST):
                    requests += 1
                    got = await self._multi_at(ep, ref, digest, batch, whole)
                    if isinstance(got, str):
                        self._multi_range[ep.api_host] = False
                        if ep.mirror:
                            self._transport.health.refuse_multi_range(ep.api_host, got)
                        break
                    parts += got
                else:
                    self._multi_range[ep.api_host] = True
                    return cut(spans, parts, f"blob {digest}"), requests
            out = [await self._single_at(ep, ref, digest, s, e, retry, whole) for s, e in spans]
            return out, requests + len(spans)

        async def noted(ep: Endpoint) -> tuple[list[bytes], int]:
            result = await at(ep)
            self._served[digest] = ep
            return result

        return await self._transport.each_endpoint(ref, noted)

    def distrust(self, ref: Reference, digest: str, error: Exception) -> None:
        """The bytes last fetched for ``digest`` failed a check made after
        they arrived; a mirror that sent them is skipped for a while, and
        where the registry redirected the blob is asked for afresh."""
        self.forget_redirect(ref, digest)
        ep = self._served.pop(digest, None)
        if ep is not None:
            self._transport.mirror_failed(ep, error)

    def multi_range(self, ref: Reference) -> bool | None:
        """Whether ``ref``'s registry answered multi-range requests; ``None`` before the probe."""
        return self._multi_range.get(self._transport.upstream(ref).api_host)

    def mirrors(self) -> list[dict]:
        """What each mirror (and registry) has shown, for ``lazyfs stats``."""
        return self._transport.health.state()

    async def _single_at(self, ep: Endpoint, ref: Reference, digest: str, start: int, end: int,
                         retry: bool, whole: WholeAnswer | None) -> bytes:
        what = f"{ref.name}@{digest}"
        headers = {"Range": range_header([(start, end)])}
        with self._distrusting(ref, digest):
            async with self._range_slot(ep, end - start, what) as progress, \
                    self._transport.open(ep, "GET", _path(ref, "blobs", digest), what,
                                         scope=repository_scope(ref), headers=headers,
                                         retry=retry, resume=retry) as resp:
                progress.tick()
                if resp.status_code == 200 and whole is not None:
                    self._allow_whole(progress, resp)
                    return (await _from_whole(resp, ep, [(start, end)], whole, False))[0]
                return await _range_body(resp, ep, digest, start, end, what, progress)

    def _allow_whole(self, progress: Progress, resp: httpx.Response) -> None:
        """A whole blob answered to a Range request gets the deadline of its size."""
        try:
            size = int(resp.headers.get("content-length", ""))
        except ValueError:
            return
        o = self.options
        progress.allow(request_deadline(o.first_byte_timeout, o.min_rate, size))

    async def _multi_at(self, ep: Endpoint, ref: Reference, digest: str, spans: list[Span],
                        whole: WholeAnswer | None) -> list[Part] | str:
        """The parts of one multi-range answer, or why it was refused."""
        what = f"{ref.name}@{digest}"
        wanted = sum(e - s for s, e in spans)
        with self._distrusting(ref, digest):
            async with self._range_slot(ep, wanted, what) as progress, \
                    self._transport.open(ep, "GET", _path(ref, "blobs", digest), what,
                                         scope=repository_scope(ref),
                                         headers={"Range": range_header(spans)},
                                         ok=(416, 501), retry=False) as resp:
                progress.tick()
                if resp.status_code == 200 and whole is not None and _compact(spans):
                    self._allow_whole(progress, resp)
                    data = await _from_whole(resp, ep, spans, whole, True)
                    return [Part(s, e, d) for (s, e), d in zip(spans, data)]
                return await _multi_body(resp, ep, digest, spans, wanted, what, progress)

    @contextmanager
    def _distrusting(self, ref: Reference, digest: str) -> Iterator[None]:
        """A failed range request forgets the blob's redirect target."""
        try:
            yield
        except (LazyfsError, trio.Cancelled):
            self.forget_redirect(ref, digest)
            raise

    def forget_redirect(self, ref: Reference, digest: str) -> None:
        """Ask the registry afresh where ``digest`` lives: bytes from its last
        redirect target failed their checks (a reader's decode, our own)."""
        self._transport.forget_redirect(_path(ref, "blobs", digest))

    @asynccontextmanager
    async def _range_slot(self, ep: Endpoint, nbytes: int, what: str):
        """One of the host's range slots, and the request's deadline once it
        has one: a stalled or dripping answer is cut (``deadlines.py``)."""
        o = self.options
        slots = self._range_limits.get(ep.api_host)
        if slots is None:
            slots = self._range_limits[ep.api_host] = HostSlots(o.max_range_requests,
                                                                o.slot_release)
        async with slots.slot() as progress:
            with within(request_deadline(o.first_byte_timeout, o.min_rate, nbytes),
                        what) as scope:
                progress.scope = scope
                yield progress

    # --- tags, pushes, referrers ---------------------------------------------

    async def list_tags(self, ref: Reference, page_size: int | None = None) -> list[str]:
        """Every tag, following ``Link: <...>; rel="next"`` pages."""
        what = f"tags of {ref.name}"
        url = _path(ref, "tags", "list") + (f"?n={page_size}" if page_size else "")
        ep = self._transport.upstream(ref)
        tags: list[str] = []
        seen: set[str] = set()
        while url and url not in seen:
            seen.add(url)
            async with self._transport.open(ep, "GET", url, what,
                                            scope=repository_scope(ref)) as resp:
                body = await read_limited(resp, MAX_MANIFEST_SIZE, what, ep)
                next_url = _next_link(resp.headers.get_list("link"))
            page = json_object(body, f"{what}: answer", RegistryError).get("tags") or []
            if not isinstance(page, list) or not all(isinstance(t, str) for t in page):
                raise RegistryError(f"{what}: 'tags' is not a list of strings")
            tags.extend(page)
            url = next_url
        return tags

    async def push_blob(self, ref: Reference, data: bytes) -> str:
        """Upload ``data`` unless the repository has it; returns its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        ep = self._transport.upstream(ref)
        scope = repository_scope(ref, push=True)
        what = f"{ref.name}@{digest}"
        async with self._transport.open(ep, "HEAD", _path(ref, "blobs", digest), what,
                                        scope=scope, ok=(200, 404)) as resp:
            if resp.status_code == 200:
                return digest
        async with self._transport.open(ep, "POST", _path(ref, "blobs", "uploads") + "/", what,
                                        scope=scope) as resp:
            location = resp.headers.get("location")
            if not location:
                raise RegistryError(
                    f"registry {ep.host} started an upload for {what} without a Location")
            upload = resp.url.join(location).copy_merge_params({"digest": digest})
        async with self._transport.open(ep, "PUT", str(upload), what, scope=scope, content=data,
                                        headers={"Content-Type": "application/octet-stream"}):
            pass
        return digest

    async def push_manifest(self, ref: Reference, raw: bytes, media_type: str) -> str:
        """Store ``raw`` under ``ref``'s tag (or digest); returns the digest."""
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        ep = self._transport.upstream(ref)
        what = _shown(ref)
        async with self._transport.open(ep, "PUT", _path(ref, "manifests", ref.identifier), what,
                                        scope=repository_scope(ref, push=True), content=raw,
                                        headers={"Content-Type": media_type}) as resp:
            echoed = resp.headers.get("docker-content-digest")
        if echoed and echoed != digest:
            raise DigestMismatch(f"manifest {what}: registry stored {echoed}, we sent {digest}")
        return digest

    async def get_referrers(self, ref: Reference, digest: str,
                            artifact_type: str | None = None) -> list[Descriptor]:
        """Manifests whose subject is ``digest``; the ``<alg>-<hex>`` tag without the API."""
        what = f"referrers of {ref.name}@{digest}"
        path = _path(ref, "referrers", digest)
        if artifact_type:
            path += "?" + str(httpx.QueryParams({"artifactType": artifact_type}))
        ep = self._transport.upstream(ref)
        async with self._transport.open(ep, "GET", path, what, scope=repository_scope(ref),
                                        headers={"Accept": OCI_INDEX}, ok=(200, 404)) as resp:
            body = await read_limited(resp, MAX_MANIFEST_SIZE, what, ep)
            api = resp.status_code == 200 and content_type(resp) == OCI_INDEX
        if api:
            index = parse_manifest(body, OCI_INDEX, digest)
        else:
            fallback = replace(ref, tag=digest.replace(":", "-"), digest=None)
            try:
                raw, media_type, index_digest = await self.get_manifest(fallback)
            except NotFound:
                return []
            index = parse_manifest(raw, media_type, index_digest)
        if not isinstance(index, Index):
            raise RegistryError(f"{what}: the referrers answer is not an index")
        return [d for d in index.manifests
                if artifact_type is None or d.artifact_type == artifact_type]


def _compact(spans: list[Span]) -> bool:
    """Whether a whole blob's body from the first span to the last carries
    little besides the spans: then it is worth reading rather than asking
    each range again."""
    wanted = sum(e - s for s, e in spans)
    return max(e for _, e in spans) - min(s for s, _ in spans) <= 2 * wanted + (1 << 20)


async def _range_body(resp: httpx.Response, ep: Endpoint, digest: str, start: int, end: int,
                      what: str, progress: Progress) -> bytes:
    if resp.status_code != 206:
        raise RangeNotSupported(f"registry {ep.host} answered a Range request for blob "
                                f"{digest} with HTTP {resp.status_code}, not 206")
    _check_content_range(resp.headers.get("content-range"), start, end, digest)
    data = await read_limited(resp, end - start, what, ep, progress.tick)
    if len(data) != end - start:
        raise RegistryError(f"blob {digest}: range {start}-{end - 1} returned "
                            f"{len(data)} of {end - start} bytes")
    return data


async def _multi_body(resp: httpx.Response, ep: Endpoint, digest: str, spans: list[Span],
                      wanted: int, what: str, progress: Progress) -> list[Part] | str:
    """The parts of a multi-range answer, or why it was refused."""
    if resp.status_code != 206:
        return f"a multi-range request was answered with HTTP {resp.status_code}"
    boundary = boundary_of(resp.headers.get("content-type"))
    if boundary is not None:
        body = await read_limited(resp, wanted + MULTIPART_OVERHEAD * len(spans), what, ep,
                                  progress.tick)
        return parse_multipart(body, boundary, f"blob {digest}")
    cr = parse_content_range(resp.headers.get("content-range"))
    if cr is None:
        raise RegistryError(f"blob {digest}: multi-range answer with Content-Range "
                            f"{resp.headers.get('content-range')!r}")
    data = await read_limited(resp, cr.end - cr.start, what, ep, progress.tick)
    if len(data) != cr.end - cr.start:
        raise RegistryError(f"blob {digest}: range {cr.start}-{cr.end - 1} returned "
                            f"{len(data)} of {cr.end - cr.start} bytes")
    return [Part(cr.start, cr.end, data)]


async def _from_whole(resp: httpx.Response, ep: Endpoint, spans: list[Span],
                      whole: WholeAnswer, multi: bool) -> list[bytes]:
    keep = await whole(ep, spans, multi)
    if keep is not None:
        async with aclosing(body_chunks(resp, 1 << 16, ep)) as chunks:
            return await keep(chunks)
    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    held = bytearray()
    pos = 0
    stopped = False
    try:
        async with aclosing(body_chunks(resp, 1 << 16, ep)) as chunks:
            async for chunk in chunks:
                if stopped:
                    continue
                if pos + len(chunk) > first:
                    held += chunk[max(0, first - pos):]
                pos += len(chunk)
                if pos >= last:
                    # Closing ends the transfer; iterating on lets httpx's
                    # generators finish rather than linger half-read.
                    stopped = True
                    await resp.aclose()
    except Exception:
        if not stopped:
            raise
    if pos < last:
        raise RegistryInterrupted(f"registry {ep.host}: blob answer ended after {pos} bytes")
    return [bytes(held[s - first:e - first]) for s, e in spans]


def _need(ref: Reference) -> frozenset[str]:
    """containerd asks for a manifest by tag only hosts that may ``resolve``."""
    return PULL if ref.digest else RESOLVE


def _path(ref: Reference, kind: str, name: str) -> str:
    return f"/v2/{ref.repository}/{kind}/{name}"


def _shown(ref: Reference) -> str:
    ident = ref.identifier
    return f"{ref.name}@{ident}" if ident == ref.digest else f"{ref.name}:{ident}"


def _hasher(digest: str):
    algorithm = digest.partition(":")[0]
    if algorithm not in ("sha256", "sha384", "sha512"):
        raise UnsupportedMediaType(f"digest {digest}: algorithm {algorithm} is not supported")
    return hashlib.new(algorithm)


def _digest_of(hasher) -> str:
    return f"{hasher.name}:{hasher.hexdigest()}"


def _check_manifest_digest(resp: httpx.Response, raw: bytes, ref: Reference, what: str) -> str:
    published = resp.headers.get("docker-content-digest")
    expected = ref.digest or published
    hasher = _hasher(expected or "sha256:")
    hasher.update(raw)
    got = _digest_of(hasher)
    if ref.digest and got != ref.digest:
        raise DigestMismatch(f"manifest {what}: content hashes to {got}")
    if published and published.partition(":")[0] == hasher.name and got != published:
        raise DigestMismatch(f"manifest {what}: registry says {published}, content hashes to {got}")
    return got


def _verified(data: bytes | None, desc: Descriptor) -> bytes | None:
    """``data`` if it is the blob ``desc`` names, else None."""
    if data is None or len(data) != desc.size:
        return None
    hasher = _hasher(desc.digest)
    hasher.update(data)
    return data if _digest_of(hasher) == desc.digest else None


def _check_not_longer(received: int, desc: Descriptor) -> None:
    if received > desc.size:
        raise DigestMismatch(
            f"blob {desc.digest}: registry sent more than the {desc.size} bytes expected")


def _check_blob(received: int, got: str, desc: Descriptor) -> None:
    if received != desc.size:
        raise RegistryError(f"blob {desc.digest}: body ended after {received} of {desc.size} bytes")
    if got != desc.digest:
        raise DigestMismatch(f"blob {desc.digest}: content hashes to {got}")


def _check_spans(digest: str, spans: list[Span]) -> None:
    for start, end in spans:
        if not 0 <= start < end:
            raise RegistryError(f"blob {digest}: invalid range {start}-{end}")


def _check_content_range(value: str | None, start: int, end: int, digest: str) -> None:
    expected = f"bytes {start}-{end - 1}/"
    if not value or not value.strip().lower().startswith(expected):
        raise RegistryError(f"blob {digest}: asked for bytes {start}-{end - 1}, "
                            f"registry sent Content-Range {value!r}")
    total = value.strip()[len(expected):]
    if total != "*" and (not total.isdigit() or int(total) < end):
        raise RegistryError(f"blob {digest}: Content-Range {value!r} has an impossible length")


def _next_link(values: list[str]) -> str | None:
    for value in values:
        for part in value.split(","):
            target, _, params = part.partition(";")
            target = target.strip()
            if target.startswith("<") and target.endswith(">") and \
                    any(p.strip().replace('"', "") == "rel=next" for p in params.split(";")):
                return target[1:-1]
    return None



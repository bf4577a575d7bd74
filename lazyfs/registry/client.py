"""The registry client: the one place HTTP answers become lazyfs values or errors.

It follows docker's pull loop where users can tell the difference: mirrors of
Docker Hub first, HTTPS first and plain HTTP only for loopback and insecure
registries, manifests asked for with every supported media type and checked
against their digest, and when everything fails the most useful error wins
(a 404 from the registry says more than a dead mirror).

Redirects are followed here rather than by httpx so that the registry's
credentials never travel to the storage host a blob is redirected to, and so
that an expired signed URL can be asked for again.
"""

from __future__ import annotations

import calendar
import hashlib
import ipaddress
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from typing import BinaryIO

import httpx
import trio

from .._version import __version__
from .auth import RegistryAuth, find_credential_async, parse_challenges
from ..errors import (DigestMismatch, LazyfsError, NoMatchingPlatform, NotFound,
                     RangeNotSupported, RegistryError, RegistryUnreachable, Unauthorized,
                     UnsupportedMediaType)
from ..manifest import (ACCEPT_TYPES, CONFIG_TYPES, OCI_INDEX, Descriptor, ImageConfig, Index,
                       Manifest, Platform, image_platforms, parse_config, parse_manifest,
                       select_platform)
from .ranges import (Part, Span, batches, boundary_of, coalesce, cut, parse_content_range,
                     parse_multipart, range_header)
from ..reference import Reference

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
MAX_MANIFEST_SIZE = 4 << 20
"""Registries must accept manifests up to 4 MiB; anything bigger is not a manifest."""
MAX_CONFIG_SIZE = 64 << 20
MAX_REDIRECTS = 8
REDIRECT_TTL = 60.0
"""Seconds a blob's redirect target is reused when its URL states no expiry."""
REDIRECT_MARGIN = 30.0
"""A signed URL is given up this long before it says it expires."""
MAX_RANGES_PER_REQUEST = 32
"""Go's ``http.ServeContent`` has no cap, but S3 and CDNs refuse long Range headers."""
MULTIPART_OVERHEAD = 512
"""Generous bytes per part for the boundary and part headers of a multi-range answer."""
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
_RETRY_ERRORS = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError,
                 httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout)
_NOT_FOUND_CODES = {"MANIFEST_UNKNOWN": "manifest unknown", "NAME_UNKNOWN": "repository unknown",
                    "BLOB_UNKNOWN": "blob unknown"}

AuthFactory = Callable[[str, str], "httpx.Auth | None"]


@dataclass(frozen=True)
class RegistryOptions:
    insecure_registries: tuple[str, ...] = ()
    """Hosts (``host``, ``host:port`` or a CIDR) that may be spoken to over plain HTTP."""
    mirrors: tuple[str, ...] = ()
    """Docker Hub mirrors (``https://mirror.example`` or ``host:port``), tried in order."""
    timeout: float = 60.0
    connect_timeout: float = 10.0
    max_retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 30.0
    """A ``Retry-After`` longer than this is reported, not waited for."""
    user_agent: str = f"lazyfs/{__version__}"
    auth: AuthFactory | None = None
    """``(registry, scope) -> httpx.Auth``; by default docker/podman credentials."""
    max_range_requests: int = 8
    """Range requests in flight at once per registry host."""
    transport: httpx.AsyncBaseTransport | None = None
    """What sends the requests; ``None`` is the network. ``lazyfs.testing``
    puts an in-memory registry here."""


@dataclass(frozen=True)
class ResolvedImage:
    ref: Reference
    """The reference asked for, with the digest it resolved to filled in."""
    index: Index | None
    manifest: Manifest
    config: ImageConfig
    platforms: list[Platform] = field(default_factory=list)


@dataclass(frozen=True)
class Endpoint:
    host: str
    """The name credentials and messages use (``docker.io``, ``127.0.0.1:5000``)."""
    api_host: str
    schemes: tuple[str, ...]
    mirror: bool = False


class RegistryClient:
    """``async with RegistryClient(options) as client:``, one connection pool for all registries."""

    def __init__(self, options: RegistryOptions | None = None) -> None:
        self.options = options or RegistryOptions()
        self._http: httpx.AsyncClient | None = None
        self._bases: dict[str, str] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._auths: dict[tuple[str, str], httpx.Auth | None] = {}
        self._down: set[Endpoint] = set()
        self._challenges: dict[str, tuple[str, dict[str, str]]] = {}
        self._multi_range: dict[str, bool] = {}
        self._redirects: dict[str, tuple[httpx.URL, float]] = {}
        self._range_limits: dict[str, trio.CapacityLimiter] = {}

    async def __aenter__(self) -> RegistryClient:
        o = self.options
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(o.timeout, connect=o.connect_timeout),
            verify=ssl.create_default_context(), trust_env=True, follow_redirects=False,
            headers={"User-Agent": o.user_agent}, transport=o.transport)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # --- images ------------------------------------------------------------

    async def resolve(self, ref: Reference, platform: Platform | None = None) -> ResolvedImage:
        """Tag or digest to verified manifest and config; diff_ids are checked by callers."""
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
        config = parse_config(await self.read_blob(ref, manifest.config, MAX_CONFIG_SIZE),
                              manifest.config.digest)
        if index is not None:
            platforms = image_platforms(index)
        else:
            platforms = [config.platform.normalized()] if config.platform else []
            if platform and config.platform and not platform.matches(config.platform):
                raise NoMatchingPlatform(f"image {ref} is for {config.platform.normalized()}, "
                                         f"not the requested {platform}")
        return ResolvedImage(ref.with_digest(digest), index, manifest, config, platforms)

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
            async with self._open(ep, "GET", _path(ref, "manifests", ref.identifier), what,
                                  scope=_scope(ref),
                                  headers={"Accept": ", ".join(ACCEPT_TYPES)}) as resp:
                raw = await _read_limited(resp, MAX_MANIFEST_SIZE, what, ep)
            return raw, _content_type(resp), _check_manifest_digest(resp, raw, ref, what)

        return await self._each_endpoint(ref, fetch)

    async def head_manifest(self, ref: Reference) -> Descriptor:
        """Digest and type without the body; GET for registries that omit the digest."""
        what = _shown(ref)

        async def head(ep: Endpoint) -> Descriptor | None:
            async with self._open(ep, "HEAD", _path(ref, "manifests", ref.identifier), what,
                                  scope=_scope(ref),
                                  headers={"Accept": ", ".join(ACCEPT_TYPES)}) as resp:
                digest = resp.headers.get("docker-content-digest")
                size = resp.headers.get("content-length", "")
            if not digest or not size.isdigit() or (ref.digest and digest != ref.digest):
                return None
            return Descriptor(_content_type(resp), digest, int(size))

        desc = await self._each_endpoint(ref, head)
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
        async with self._reading(ref, "GET", _path(ref, "blobs", digest), what) as (ep, resp):
            async with aclosing(_chunks(resp, chunk_size, ep)) as chunks:
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

    async def download_blob(self, ref: Reference, desc: Descriptor, file: BinaryIO) -> None:
        """Stream a blob into ``file``, hashing as it goes, so a bad file is never trusted."""
        hasher = _hasher(desc.digest)
        written = 0
        async with self.get_blob_stream(ref, desc.digest) as chunks:
            async for chunk in chunks:
                written += len(chunk)
                _check_not_longer(written, desc)
                await trio.to_thread.run_sync(_write_and_hash, file, hasher, chunk)
        _check_blob(written, _digest_of(hasher), desc)

    async def get_range(self, ref: Reference, digest: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of a blob; ``RangeNotSupported`` if Range is ignored."""
        if not 0 <= start < end:
            raise RegistryError(f"blob {digest}: invalid range {start}-{end}")
        what = f"{ref.name}@{digest}"
        headers = {"Range": range_header([(start, end)])}
        async with self._range_limit(ref), \
                self._reading(ref, "GET", _path(ref, "blobs", digest), what,
                              headers=headers) as (ep, resp):
            if resp.status_code != 206:
                raise RangeNotSupported(f"registry {ep.host} answered a Range request for blob "
                                        f"{digest} with HTTP {resp.status_code}, not 206")
            _check_content_range(resp.headers.get("content-range"), start, end, digest)
            data = await _read_limited(resp, end - start, what, ep)
        if len(data) != end - start:
            raise RegistryError(f"blob {digest}: range {start}-{end - 1} returned "
                                f"{len(data)} of {end - start} bytes")
        return data

    async def get_ranges(self, ref: Reference, digest: str, spans: list[Span]) -> list[bytes]:
        """The bytes of each ``(start, end)`` span of a blob, in the order asked.

        Overlapping and adjacent spans are merged; what remains goes in one
        multi-range request per ``MAX_RANGES_PER_REQUEST`` while the host
        answers those with 206. The first answer that is not a usable 206
        (a 200 with the whole blob, as S3-style backends send) marks the host
        as single-range for the life of this client: a 200 is never taken as
        a partial answer.
        """
        for start, end in spans:
            if not 0 <= start < end:
                raise RegistryError(f"blob {digest}: invalid range {start}-{end}")
        merged = coalesce(spans)
        host = self._upstream(ref).api_host
        if len(merged) > 1 and self._multi_range.get(host, True):
            parts: list[Part] = []
            for batch in batches(merged, MAX_RANGES_PER_REQUEST):
                got = await self._get_multi(ref, digest, batch)
                if got is None:
                    self._multi_range[host] = False
                    break
                parts += got
            else:
                self._multi_range[host] = True
                return cut(spans, parts, f"blob {digest}")
        parts = [Part(s, e, await self.get_range(ref, digest, s, e)) for s, e in merged]
        return cut(spans, parts, f"blob {digest}")

    def multi_range(self, ref: Reference) -> bool | None:
        """Whether ``ref``'s registry answered multi-range requests; ``None`` before the probe."""
        return self._multi_range.get(self._upstream(ref).api_host)

    async def _get_multi(self, ref: Reference, digest: str, spans: list[Span]) -> list[Part] | None:
        """The parts of one multi-range answer, or ``None`` if it was not a 206."""
        what = f"{ref.name}@{digest}"
        wanted = sum(e - s for s, e in spans)
        async with self._range_limit(ref), \
                self._reading(ref, "GET", _path(ref, "blobs", digest), what,
                              headers={"Range": range_header(spans)}, ok=(416,)) as (ep, resp):
            if resp.status_code != 206:
                return None
            boundary = boundary_of(resp.headers.get("content-type"))
            if boundary is not None:
                body = await _read_limited(resp, wanted + MULTIPART_OVERHEAD * len(spans),
                                           what, ep)
                return parse_multipart(body, boundary, f"blob {digest}")
            cr = parse_content_range(resp.headers.get("content-range"))
            if cr is None:
                raise RegistryError(f"blob {digest}: multi-range answer with Content-Range "
                                    f"{resp.headers.get('content-range')!r}")
            data = await _read_limited(resp, cr.end - cr.start, what, ep)
        if len(data) != cr.end - cr.start:
            raise RegistryError(f"blob {digest}: range {cr.start}-{cr.end - 1} returned "
                                f"{len(data)} of {cr.end - cr.start} bytes")
        return [Part(cr.start, cr.end, data)]

    @asynccontextmanager
    async def _range_limit(self, ref: Reference):
        host = self._upstream(ref).api_host
        limit = self._range_limits.get(host)
        if limit is None:
            limit = self._range_limits[host] = trio.CapacityLimiter(
                self.options.max_range_requests)
        async with limit:
            yield

    # --- tags, pushes, referrers ---------------------------------------------

    async def list_tags(self, ref: Reference, page_size: int | None = None) -> list[str]:
        """Every tag, following ``Link: <...>; rel="next"`` pages."""
        what = f"tags of {ref.name}"
        url = _path(ref, "tags", "list") + (f"?n={page_size}" if page_size else "")
        ep = self._upstream(ref)
        tags: list[str] = []
        seen: set[str] = set()
        while url and url not in seen:
            seen.add(url)
            async with self._open(ep, "GET", url, what, scope=_scope(ref)) as resp:
                body = await _read_limited(resp, MAX_MANIFEST_SIZE, what, ep)
                next_url = _next_link(resp.headers.get_list("link"))
            page = _json(body, what).get("tags") or []
            if not isinstance(page, list) or not all(isinstance(t, str) for t in page):
                raise RegistryError(f"{what}: 'tags' is not a list of strings")
            tags.extend(page)
            url = next_url
        return tags

    async def push_blob(self, ref: Reference, data: bytes) -> str:
        """Upload ``data`` unless the repository has it; returns its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        ep = self._upstream(ref)
        scope = _scope(ref, push=True)
        what = f"{ref.name}@{digest}"
        async with self._open(ep, "HEAD", _path(ref, "blobs", digest), what, scope=scope,
                              ok=(200, 404)) as resp:
            if resp.status_code == 200:
                return digest
        async with self._open(ep, "POST", _path(ref, "blobs", "uploads") + "/", what,
                              scope=scope) as resp:
            location = resp.headers.get("location")
            if not location:
                raise RegistryError(
                    f"registry {ep.host} started an upload for {what} without a Location")
            upload = resp.url.join(location).copy_merge_params({"digest": digest})
        async with self._open(ep, "PUT", str(upload), what, scope=scope, content=data,
                              headers={"Content-Type": "application/octet-stream"}):
            pass
        return digest

    async def push_manifest(self, ref: Reference, raw: bytes, media_type: str) -> str:
        """Store ``raw`` under ``ref``'s tag (or digest); returns the digest."""
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        ep = self._upstream(ref)
        what = _shown(ref)
        async with self._open(ep, "PUT", _path(ref, "manifests", ref.identifier), what,
                              scope=_scope(ref, push=True), content=raw,
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
        ep = self._upstream(ref)
        async with self._open(ep, "GET", path, what, scope=_scope(ref),
                              headers={"Accept": OCI_INDEX},
                              ok=(200, 404)) as resp:
            body = await _read_limited(resp, MAX_MANIFEST_SIZE, what, ep)
            api = resp.status_code == 200 and _content_type(resp) == OCI_INDEX
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

    # --- endpoints ---------------------------------------------------------

    def _endpoints(self, ref: Reference) -> list[Endpoint]:
        upstream = self._upstream(ref)
        if ref.registry != DOCKER_HUB:
            return [upstream]
        return [_mirror_endpoint(m, self.options) for m in self.options.mirrors] + [upstream]

    def _upstream(self, ref: Reference) -> Endpoint:
        host = ref.registry
        api = DOCKER_HUB_API if host == DOCKER_HUB else host
        return Endpoint(host, api, _schemes(host, self.options))

    async def _each_endpoint(self, ref: Reference, op: Callable[[Endpoint], Awaitable]):
        errors: list[tuple[Endpoint, LazyfsError]] = []
        for ep in self._endpoints(ref):
            if ep in self._down:
                continue
            try:
                return await op(ep)
            except LazyfsError as e:
                if ep.mirror and isinstance(e, RegistryUnreachable):
                    self._down.add(ep)
                errors.append((ep, e))
        raise most_useful_error(errors)

    @asynccontextmanager
    async def _reading(self, ref: Reference, method: str, path: str, what: str,
                       headers: dict[str, str] | None = None, ok: tuple[int, ...] = ()):
        async def open_at(ep: Endpoint):
            return ep, await self._open_checked(ep, method, path, what, scope=_scope(ref),
                                                headers=headers, ok=ok)

        ep, resp = await self._each_endpoint(ref, open_at)
        try:
            yield ep, resp
        finally:
            await resp.aclose()

    @asynccontextmanager
    async def _open(self, ep: Endpoint, method: str, path: str, what: str, **kw):
        resp = await self._open_checked(ep, method, path, what, **kw)
        try:
            yield resp
        finally:
            await resp.aclose()

    async def _open_checked(self, ep: Endpoint, method: str, path: str, what: str, *,
                            scope: str, headers: dict[str, str] | None = None,
                            content: bytes | None = None,
                            ok: tuple[int, ...] = ()) -> httpx.Response:
        """An open streaming response with an acceptable status, redirects followed."""
        base = await self._base(ep)
        url = httpx.URL(base).join(path)
        reusable = method == "GET" and "/blobs/" in url.path
        if reusable and (resp := await self._via_known_redirect(ep, url, headers)) is not None:
            return resp
        auth = await self._auth(ep.host, scope)
        resp = await self._send(ep, method, url, auth, headers, content)
        refreshed = False
        hops = 0
        while resp.status_code in _REDIRECT_STATUS and method in ("GET", "HEAD"):
            hops += 1
            location = resp.headers.get("location")
            await resp.aclose()
            if not location or hops > MAX_REDIRECTS:
                raise RegistryError(f"{what}: registry {ep.host} sent a broken redirect chain")
            target = resp.url.join(location)
            same = _origin(target) == _origin(url)
            resp = await self._send(ep, method, target, auth if same else None, headers, None)
            if resp.status_code in (401, 403) and not same:
                await resp.aclose()
                if refreshed:
                    raise RegistryError(f"{what}: redirect target {target.host} answered "
                                        f"HTTP {resp.status_code} even after a fresh redirect")
                refreshed = True
                resp = await self._send(ep, method, url, auth, headers, None)
        if 200 <= resp.status_code < 300 or resp.status_code in ok:
            if reusable and hops and _origin(resp.url) != _origin(url):
                self._redirects[str(url)] = (resp.url, _redirect_expiry(resp.url))
            return resp
        try:
            body = await resp.aread() if method != "HEAD" else b""
        except httpx.HTTPError:
            body = b""
        finally:
            await resp.aclose()
        raise _error_for(resp.status_code, body, ep, what, auth)

    async def _via_known_redirect(self, ep: Endpoint, url: httpx.URL,
                                  headers: dict[str, str] | None) -> httpx.Response | None:
        """A blob request sent straight to where the registry last redirected
        it (a CDN, a presigned URL) while that target is fresh: one round trip
        instead of two. Any refusal there forgets it and goes back to the registry."""
        known = self._redirects.get(str(url))
        if known is None:
            return None
        target, expires = known
        if time.time() >= expires:
            del self._redirects[str(url)]
            return None
        resp = await self._send(ep, "GET", target, None, headers, None)
        if 200 <= resp.status_code < 300:
            return resp
        await resp.aclose()
        self._redirects.pop(str(url), None)
        return None

    async def _send(self, ep: Endpoint, method: str, url: httpx.URL, auth: httpx.Auth | None,
                    headers: dict[str, str] | None, content: bytes | None) -> httpx.Response:
        """One request with bounded retries on busy answers and dropped connections.

        A refused connection or a failed TLS handshake is an answer, not a
        hiccup: it is reported at once rather than retried.
        """
        assert self._http is not None, "RegistryClient used outside 'async with'"
        o = self.options
        for attempt in range(o.max_retries + 1):
            request = self._http.build_request(method, url, headers=headers, content=content)
            try:
                resp = await self._http.send(request, auth=auth, stream=True)
            except _RETRY_ERRORS as e:
                if attempt == o.max_retries:
                    raise _unreachable(ep, e) from None
                await trio.sleep(min(o.backoff * 2 ** attempt, o.max_backoff))
                continue
            except httpx.HTTPError as e:
                raise _unreachable(ep, e) from None
            if resp.status_code not in _RETRY_STATUS or attempt == o.max_retries:
                return resp
            delay = _retry_after(resp.headers.get("retry-after"))
            if delay is None:
                delay = min(o.backoff * 2 ** attempt, o.max_backoff)
            if delay > o.max_backoff:
                return resp
            await resp.aclose()
            await trio.sleep(delay)
        raise AssertionError("unreachable")

    async def _base(self, ep: Endpoint) -> str:
        """Ping ``/v2/`` once per host, choosing the first scheme that answers like a registry."""
        if ep.api_host in self._bases:
            return self._bases[ep.api_host]
        lock = self._locks.setdefault(ep.api_host, trio.Lock())
        async with lock:
            if ep.api_host in self._bases:
                return self._bases[ep.api_host]
            failure: LazyfsError | None = None
            for scheme in ep.schemes:
                base = f"{scheme}://{ep.api_host}"
                try:
                    resp = await self._send(ep, "GET", httpx.URL(base + "/v2/"), None, None, None)
                except RegistryUnreachable as e:
                    failure = failure or e
                    continue
                await resp.aclose()
                if resp.status_code in (200, 401):
                    self._bases[ep.api_host] = base
                    self._seed_challenge(ep, resp)
                    return base
                raise RegistryError(f"{ep.host} does not speak the registry v2 API "
                                    f"(GET {base}/v2/ answered HTTP {resp.status_code})")
            assert failure is not None
            raise failure

    def _seed_challenge(self, ep: Endpoint, resp: httpx.Response) -> None:
        found = [c for v in resp.headers.get_list("www-authenticate") for c in parse_challenges(v)]
        for wanted in ("bearer", "basic"):
            for challenge in found:
                if challenge[0] == wanted:
                    self._challenges[ep.host] = challenge
                    return

    async def _auth(self, host: str, scope: str) -> httpx.Auth | None:
        """One auth per registry and scope; the ping's challenge lets the first request
        carry credentials."""
        key = (host, scope)
        if key not in self._auths:
            if self.options.auth is not None:
                self._auths[key] = self.options.auth(host, scope)
            else:
                auth = RegistryAuth(host, await find_credential_async(host), scope)
                if host in self._challenges:
                    auth.cache.remember_challenge(auth.registry, self._challenges[host])
                self._auths[key] = auth
        return self._auths[key]


def most_useful_error(errors: list[tuple[Endpoint, LazyfsError]]) -> LazyfsError:
    """The registry's own answer unless it was unreachable; then a mirror's answer
    over its silence."""
    if not errors:
        return RegistryUnreachable("no registry endpoint left to try")
    upstream = errors[-1][1]
    if not isinstance(upstream, RegistryUnreachable):
        return upstream
    for _, e in errors:
        if not isinstance(e, RegistryUnreachable):
            return e
    return upstream


def _mirror_endpoint(mirror: str, options: RegistryOptions) -> Endpoint:
    scheme, sep, rest = mirror.partition("://")
    host = (rest if sep else mirror).rstrip("/")
    schemes = (scheme.lower(),) if sep else _schemes(host, options)
    return Endpoint(host, host, schemes, mirror=True)


def _schemes(host: str, options: RegistryOptions) -> tuple[str, ...]:
    return ("https", "http") if is_insecure(host, options.insecure_registries) else ("https",)


def is_insecure(host: str, insecure: tuple[str, ...] = ()) -> bool:
    """Whether plain HTTP may be tried: loopback always, others only when listed."""
    name = _hostname(host)
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        ip = None
    if ip is not None and ip.is_loopback:
        return True
    for entry in insecure:
        if entry in (host, name):
            return True
        if ip is not None and "/" in entry:
            try:
                if ip in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
    return False


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[1:].partition("]")[0].lower()
    return host.rpartition(":")[0].lower() if host.count(":") == 1 else host.lower()


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


def _redirect_expiry(target: httpx.URL) -> float:
    """When a redirect target stops being usable: from S3's ``X-Amz-Date`` +
    ``X-Amz-Expires`` or an ``Expires`` epoch (CloudFront, GCS), else soon."""
    params = target.params
    now = time.time()
    expires = None
    try:
        if "X-Amz-Date" in params and "X-Amz-Expires" in params:
            signed = time.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ")
            expires = calendar.timegm(signed) + int(params["X-Amz-Expires"])
        elif "Expires" in params:
            expires = int(params["Expires"])
    except (ValueError, OverflowError):
        expires = None
    if expires is None:
        return now + REDIRECT_TTL
    return expires - REDIRECT_MARGIN


def _path(ref: Reference, kind: str, name: str) -> str:
    return f"/v2/{ref.repository}/{kind}/{name}"


def _scope(ref: Reference, push: bool = False) -> str:
    return f"repository:{ref.repository}:{'pull,push' if push else 'pull'}"


def _shown(ref: Reference) -> str:
    ident = ref.identifier
    return f"{ref.name}@{ident}" if ident == ref.digest else f"{ref.name}:{ident}"


def _content_type(resp: httpx.Response) -> str:
    return resp.headers.get("content-type", "").split(";")[0].strip().lower()


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


def _check_not_longer(received: int, desc: Descriptor) -> None:
    if received > desc.size:
        raise DigestMismatch(
            f"blob {desc.digest}: registry sent more than the {desc.size} bytes expected")


def _check_blob(received: int, got: str, desc: Descriptor) -> None:
    if received != desc.size:
        raise RegistryError(f"blob {desc.digest}: body ended after {received} of {desc.size} bytes")
    if got != desc.digest:
        raise DigestMismatch(f"blob {desc.digest}: content hashes to {got}")


def _write_and_hash(file: BinaryIO, hasher, chunk: bytes) -> None:
    hasher.update(chunk)
    file.write(chunk)


def _check_content_range(value: str | None, start: int, end: int, digest: str) -> None:
    expected = f"bytes {start}-{end - 1}/"
    if not value or not value.strip().lower().startswith(expected):
        raise RegistryError(f"blob {digest}: asked for bytes {start}-{end - 1}, "
                            f"registry sent Content-Range {value!r}")
    total = value.strip()[len(expected):]
    if total != "*" and (not total.isdigit() or int(total) < end):
        raise RegistryError(f"blob {digest}: Content-Range {value!r} has an impossible length")


async def _read_limited(resp: httpx.Response, limit: int, what: str, ep: Endpoint) -> bytes:
    parts: list[bytes] = []
    size = 0
    async with aclosing(_chunks(resp, 1 << 16, ep)) as chunks:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise RegistryError(f"{what}: registry {ep.host} sent more than {limit} bytes")
            parts.append(chunk)
    return b"".join(parts)


async def _chunks(resp: httpx.Response, chunk_size: int, ep: Endpoint) -> AsyncIterator[bytes]:
    try:
        async with aclosing(resp.aiter_bytes(chunk_size)) as chunks:
            async for chunk in chunks:
                yield chunk
    except httpx.HTTPError as e:
        raise RegistryError(f"registry {ep.host}: answer for {resp.url.path} cut short "
                            f"({_reason(e)})") from None


def _json(body: bytes, what: str) -> dict:
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise RegistryError(f"{what}: answer is not valid JSON ({e})") from None
    except RecursionError:
        raise RegistryError(f"{what}: answer is JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise RegistryError(f"{what}: answer is not a JSON object")
    return doc


def _next_link(values: list[str]) -> str | None:
    for value in values:
        for part in value.split(","):
            target, _, params = part.partition(";")
            target = target.strip()
            if target.startswith("<") and target.endswith(">") and \
                    any(p.strip().replace('"', "") == "rel=next" for p in params.split(";")):
                return target[1:-1]
    return None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _error_code(body: bytes) -> tuple[str, str]:
    try:
        errors = json.loads(body).get("errors") or []
        first = errors[0]
        return str(first.get("code", "")), str(first.get("message", ""))
    except (ValueError, AttributeError, IndexError, TypeError, RecursionError):
        return "", ""


def _error_for(status: int, body: bytes, ep: Endpoint, what: str,
               auth: httpx.Auth | None) -> LazyfsError:
    code, message = _error_code(body)
    if status == 404:
        return NotFound(f"{_NOT_FOUND_CODES.get(code, 'not found')}: {what}")
    if status in (401, 403):
        if isinstance(auth, RegistryAuth):
            return auth.unauthorized(f"access to {what} denied")
        return Unauthorized(f"unauthorized: access to {what} denied by {ep.host}")
    detail = f" {code}: {message}" if code else ""
    return RegistryError(f"registry {ep.host}: {what}: HTTP {status}{detail}")


def _unreachable(ep: Endpoint, e: httpx.HTTPError) -> RegistryUnreachable:
    return RegistryUnreachable(f"cannot reach registry {ep.host}: {_reason(e)}")


def _reason(e: httpx.HTTPError) -> str:
    if isinstance(e, httpx.TimeoutException):
        return "timed out"
    causes = list(_causes(e))
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return "connection refused"
    for c in causes:
        if isinstance(c, ssl.SSLCertVerificationError) and c.verify_message:
            return f"TLS certificate not trusted ({c.verify_message})"
        if isinstance(c, ssl.SSLError):
            return f"TLS failed ({c.reason or c})"
    for c in causes:
        if isinstance(c, OSError) and c.strerror:
            return c.strerror[:1].lower() + c.strerror[1:]
    text = str(e) or type(e).__name__
    return text[:1].lower() + text[1:]


def _causes(e: BaseException, depth: int = 0):
    """The exception, its causes and the members of any group among them (trio nests them)."""
    if depth > 8:
        return
    yield e
    for inner in getattr(e, "exceptions", ()):
        yield from _causes(inner, depth + 1)
    nxt = e.__cause__ or e.__context__
    if nxt is not None:
        yield from _causes(nxt, depth + 1)

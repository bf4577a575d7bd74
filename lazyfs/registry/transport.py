"""How a request reaches a registry and how its answer comes back.

Which endpoints to try (the mirrors ``mirrors.py`` lists, the registry
last; a failing mirror skipped for a while), which scheme each
speaks (HTTPS first; plain HTTP only for loopback and insecure registries,
chosen once per host by a ping of ``/v2/``), which credentials go with a
request, bounded retries with backoff for busy answers and dropped
connections, and HTTP statuses and httpx failures turned into lazyfs errors,
the most useful one winning when every endpoint failed.

Redirects are followed here rather than by httpx so that the registry's
credentials never travel to the storage host a blob is redirected to, and so
that an expired signed URL can be asked for again; a blob's redirect target
is remembered while it is fresh, saving a round trip per request.
"""

from __future__ import annotations

import calendar
import json
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Protocol

import httpx
import trio

from .._version import __version__
from ..errors import (DigestMismatch, LazyfsError, NotFound, RangeNotSupported, RegistryError,
                      RegistryInterrupted, RegistryUnreachable, Unauthorized, UsageError)
from ..reference import Reference
from .auth import RegistryAuth, pick_challenge
from .credentials import find_credential_async
from .hosts import hosts_root, load_hosts, tls_context
from .mirrors import (DOCKER_HUB, DOCKER_HUB_API, Endpoint, MirrorHealth, is_insecure,
                      registry_endpoints)
from .pings import first_answer, speaks_tls
from .proxies import ProxyConfig
from .resume import RETRY_ERRORS, ResumingBody, resumable
from .tls import OnDemandTrust

log = logging.getLogger(__name__)
__all__ = ["DOCKER_HUB", "DOCKER_HUB_API", "Endpoint", "is_insecure"]
PULL = frozenset({"pull"})
RESOLVE = frozenset({"pull", "resolve"})
MAX_REDIRECTS = 8
REDIRECT_TTL = 60.0
"""Seconds a blob's redirect target is reused when its URL states no expiry."""
REDIRECT_MARGIN = 30.0
"""A signed URL is given up this long before it says it expires."""
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
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
    retry_deadline: float = field(default_factory=lambda: _env_seconds(
        "LAZYFS_RETRY_DEADLINE", 30.0))
    """Seconds a whole-blob download keeps asking again for what failed
    (ranges cut short, connections refused, 5xx) while no byte arrives;
    ``$LAZYFS_RETRY_DEADLINE`` sets the default."""
    user_agent: str = f"lazyfs/{__version__}"
    auth: AuthFactory | None = None
    """``(registry, scope) -> httpx.Auth``; by default docker/podman credentials."""
    max_range_requests: int = 8
    """Range requests in flight at once per registry host."""
    first_byte_timeout: float = field(default_factory=lambda: _env_seconds(
        "LAZYFS_FIRST_BYTE_TIMEOUT", 15.0))
    """Seconds a range request may take to its answer's headers; plus its
    body at ``min_rate``, its deadline (``deadlines.py``, ``$LAZYFS_FIRST_BYTE_TIMEOUT``)."""
    min_rate: int = 32 << 10
    """Bytes per second below which a range answer is cut and asked again."""
    slot_release: float = 2.0
    """Seconds without a byte after which a range request stops counting
    against ``max_range_requests`` (it still runs until its deadline)."""
    read_deadline: float = field(default_factory=lambda: _env_seconds(
        "LAZYFS_READ_DEADLINE", 60.0))
    """Seconds one read may take in all, its retries included, before it
    fails (EIO in a mount); ``$LAZYFS_READ_DEADLINE`` sets the default."""
    transport: httpx.AsyncBaseTransport | None = None
    """What sends the requests; ``None`` is the network. ``lazyfs.testing``
    puts an in-memory registry here."""
    hosts_dir: str | None = None
    """containerd's host configuration root; ``None``: ``$LAZYFS_HOSTS_DIR``,
    else ``/etc/containerd/certs.d``."""
    proxies: ProxyConfig | None = None
    """``None``: from ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY``."""
    schemes: SchemeMemory | None = None
    """Where the scheme each host answered on is remembered between runs,
    so that it is tried first next time (``store.schemes.SchemeFile``)."""


class SchemeMemory(Protocol):
    def get(self, host: str) -> str | None: ...

    def put(self, host: str, scheme: str) -> None: ...


class Transport:
    """One connection pool for all registries, and what is learnt about each
    host on the way: its scheme, its auth challenge, whether it is down (a
    mirror), where it redirects blobs. ``async with`` opens and closes it."""

    def __init__(self, options: RegistryOptions) -> None:
        self.options = options
        self._clients: dict[tuple, httpx.AsyncClient] = {}
        self._open = False
        self._hosts: dict[str, list[Endpoint]] = {}
        self.health = MirrorHealth()
        self._proxies = options.proxies or ProxyConfig.from_env()
        self._bases: dict[str, str] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._auths: dict[tuple[str, str], httpx.Auth | None] = {}
        self._challenges: dict[str, tuple[str, dict[str, str]]] = {}
        self._redirects: dict[str, tuple[httpx.URL, float]] = {}
        self.tls = OnDemandTrust(ssl.PROTOCOL_TLS_CLIENT)

    async def __aenter__(self) -> Transport:
        self._open = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._open = False
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

    def _client(self, ep: Endpoint, url: httpx.URL) -> httpx.AsyncClient:
        """A connection pool per TLS configuration and proxy; the proxy
        chosen here (``proxies.py``), not by httpx."""
        assert self._open, "RegistryClient used outside 'async with'"
        o = self.options
        proxy = None if o.transport is not None else self._proxies.proxy_for(
            url.scheme, url.host, url.port)
        key = (ep.tls, proxy)
        client = self._clients.get(key)
        if client is None:
            try:
                client = httpx.AsyncClient(
                    timeout=httpx.Timeout(o.timeout, connect=o.connect_timeout),
                    verify=self.tls if ep.tls is None else tls_context(ep.tls),
                    trust_env=False, proxy=proxy,
                    follow_redirects=False, headers={"User-Agent": o.user_agent},
                    transport=o.transport)
            except ImportError:
                raise UsageError(f"proxy {proxy}: SOCKS proxies need the socksio "
                                 "package") from None
            self._clients[key] = client
        return client

    # --- endpoints ---------------------------------------------------------

    def endpoints(self, ref: Reference) -> list[Endpoint]:
        """Read once per registry: a changed ``hosts.toml`` applies to the next mount."""
        registry = ref.registry
        if registry not in self._hosts:
            self._hosts[registry] = registry_endpoints(
                registry, load_hosts(hosts_root(self.options.hosts_dir), registry),
                self.options.mirrors, self.options.insecure_registries)
        return self._hosts[registry]

    def upstream(self, ref: Reference) -> Endpoint:
        """The registry ``ref`` names (or the ``server`` configured for it),
        without its mirrors: where pushes, tag lists and referrers go."""
        return self.endpoints(ref)[-1]

    async def each_endpoint(self, ref: Reference, op: Callable[[Endpoint], Awaitable],
                            need: frozenset[str] = PULL):
        """``op`` at each endpoint of ``ref`` able to do ``need`` in turn
        until one succeeds. A mirror that fails the way a broken or
        overloaded server fails is skipped for a while (``MirrorHealth``);
        one that only lacks the repository is not. A refused Range is the
        caller's to handle, not a reason to ask elsewhere."""
        errors: list[tuple[Endpoint, LazyfsError]] = []
        candidates = [ep for ep in self.endpoints(ref) if need <= ep.capabilities]
        if not candidates:
            raise RegistryError(f"no host configured for {ref.registry} may "
                                f"{' and '.join(sorted(need))}")
        for ep in candidates:
            if ep.mirror and not self.health.usable(ep.api_host):
                continue
            try:
                result = await op(ep)
            except RangeNotSupported:
                raise
            except LazyfsError as e:
                if ep.mirror and _mirror_fault(e):
                    self.health.failed(ep.api_host, str(e))
                    log.warning("mirror %s skipped for a while: %s", ep.api_host, e)
                errors.append((ep, e))
                continue
            if ep.mirror:
                self.health.answered(ep.api_host)
            return result
        raise most_useful_error(errors)

    def mirror_failed(self, ep: Endpoint, error: Exception) -> None:
        """Bytes from ``ep`` failed a check made after its answer (a digest)."""
        if ep.mirror:
            self.health.failed(ep.api_host, str(error))
            log.warning("mirror %s skipped for a while: %s", ep.api_host, error)

    @asynccontextmanager
    async def reading(self, ref: Reference, method: str, path: str, what: str,
                      headers: dict[str, str] | None = None, ok: tuple[int, ...] = (),
                      retry: bool = True, need: frozenset[str] = PULL):
        """``(endpoint, response)`` from the first endpoint that answers.
        ``retry=False`` sends each request once, for a caller that keeps
        its own budget of attempts; otherwise a GET's body that breaks off is
        resumed by Range (``resume.py``)."""
        async def open_at(ep: Endpoint):
            resp = await self._open_checked(ep, method, path, what, scope=repository_scope(ref),
                                            headers=headers, ok=ok, retry=retry)
            if retry and method == "GET":
                self._resume_on_break(ep, resp, path, what, repository_scope(ref), headers)
            return ep, resp

        ep, resp = await self.each_endpoint(ref, open_at, need)
        try:
            yield ep, resp
        finally:
            await resp.aclose()

    @asynccontextmanager
    async def open(self, ep: Endpoint, method: str, path: str, what: str, *,
                   resume: bool = False, **kw):
        """The response of one endpoint, closed on exit; ``resume``: a GET's
        body that breaks off is resumed by Range (``resume.py``)."""
        resp = await self._open_checked(ep, method, path, what, **kw)
        if resume and method == "GET":
            self._resume_on_break(ep, resp, path, what, kw["scope"], kw.get("headers"))
        try:
            yield resp
        finally:
            await resp.aclose()

    async def _open_checked(self, ep: Endpoint, method: str, path: str, what: str, *,
                            scope: str, headers: dict[str, str] | None = None,
                            content: bytes | None = None, ok: tuple[int, ...] = (),
                            retry: bool = True) -> httpx.Response:
        """An open streaming response with an acceptable status, redirects followed."""
        base = await self._base(ep)
        if ep.path != "/v2" and path.startswith("/v2/"):
            path = ep.path.rstrip("/") + path[3:]
        url = httpx.URL(base).join(path)
        reusable = method == "GET" and "/blobs/" in url.path
        tries = self._tries(retry)
        if reusable and (resp := await self._via_known_redirect(ep, url, headers,
                                                                tries)) is not None:
            return resp
        auth = await self._auth(ep.host, scope)
        resp = await self._send(ep, method, url, auth, headers, content, tries)
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
            resp = await self._send(ep, method, target, auth if same else None, headers, None,
                                    tries)
            if resp.status_code in (401, 403) and not same:
                await resp.aclose()
                if refreshed:
                    raise RegistryError(f"{what}: redirect target {target.host} answered "
                                        f"HTTP {resp.status_code} even after a fresh redirect")
                refreshed = True
                resp = await self._send(ep, method, url, auth, headers, None, tries)
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
        error = _error_for(resp.status_code, body, ep, what, auth)
        if isinstance(error, RegistryInterrupted):
            error.retry_after = _retry_after(resp.headers.get("retry-after"))
        raise error

    def _resume_on_break(self, ep: Endpoint, resp: httpx.Response, path: str, what: str,
                         scope: str, headers: dict[str, str] | None) -> None:
        """Let a retried GET's body survive a break: the rest is asked for by Range."""
        wanted = resumable(resp, (headers or {}).get("Range"))
        if wanted is None:
            return

        async def reopen(byte_range: str) -> httpx.Response:
            return await self._open_checked(ep, "GET", path, what, scope=scope,
                                            headers={**(headers or {}), "Range": byte_range})

        resp.stream = ResumingBody(resp, wanted, reopen, self._tries(True), self._backoff)

    def _backoff(self, attempt: int) -> float:
        """Seconds to wait before the ``attempt``-th retry (from 1)."""
        return min(self.options.backoff * 2 ** (attempt - 1), self.options.max_backoff)

    async def _via_known_redirect(self, ep: Endpoint, url: httpx.URL,
                                  headers: dict[str, str] | None,
                                  tries: int) -> httpx.Response | None:
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
        resp = await self._send(ep, "GET", target, None, headers, None, tries)
        if 200 <= resp.status_code < 300:
            return resp
        await resp.aclose()
        self._redirects.pop(str(url), None)
        return None

    def forget_redirect(self, path: str) -> None:
        """Stop using where the blob at ``path`` was redirected: it sent bad
        bytes or none in time, and the registry may point somewhere better."""
        for key in [k for k in self._redirects if httpx.URL(k).path == path]:
            del self._redirects[key]

    def _tries(self, retry: bool) -> int:
        return self.options.max_retries + 1 if retry else 1

    async def _send(self, ep: Endpoint, method: str, url: httpx.URL, auth: httpx.Auth | None,
                    headers: dict[str, str] | None, content: bytes | None,
                    tries: int) -> httpx.Response:
        """One request, sent up to ``tries`` times while answers are busy or
        connections drop, with backoff between.

        A refused connection or a failed TLS handshake is an answer, not a
        hiccup: it is reported at once rather than retried.
        """
        o = self.options
        if ep.mirror:
            # The next endpoint is the better retry: a fleet has its registry.
            tries = 1
        http = self._client(ep, url)
        if ep.headers:
            headers = httpx.Headers(list(ep.headers) + list((headers or {}).items()))
        last = tries - 1
        for attempt in range(tries):
            request = http.build_request(method, url, headers=headers, content=content)
            try:
                resp = await http.send(request, auth=auth, stream=True)
            except RETRY_ERRORS as e:
                if attempt == last:
                    raise _unreachable(ep, e) from None
                await trio.sleep(self._backoff(attempt + 1))
                continue
            except httpx.HTTPError as e:
                raise _unreachable(ep, e) from None
            if resp.status_code not in _RETRY_STATUS or attempt == last:
                return resp
            delay = _retry_after(resp.headers.get("retry-after"))
            if delay is None:
                delay = self._backoff(attempt + 1)
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
            if ep.path != "/v2":
                # An API root moved elsewhere has no /v2/ to ping.
                self._bases[ep.api_host] = f"{ep.schemes[0]}://{ep.api_host}"
                return self._bases[ep.api_host]
            memory = self.options.schemes
            known = memory.get(ep.api_host) if memory is not None else None
            schemes = ep.schemes
            if known in schemes:
                schemes = (known, *(s for s in schemes if s != known))
            first = known is None and len(schemes) > 1
            scheme, resp = await first_answer(ep.host, ep.api_host, schemes,
                                              lambda scheme: self._ping(ep, scheme, first),
                                              at_once=first, known=known)
            base = self._bases[ep.api_host] = f"{scheme}://{ep.api_host}"
            if (challenge := pick_challenge(resp)) is not None:
                self._challenges[ep.host] = challenge
            if memory is not None and scheme != known:
                memory.put(ep.api_host, scheme)
            return base

    async def _ping(self, ep: Endpoint, scheme: str, probe: bool) -> httpx.Response:
        """With ``probe``, HTTPS on a direct connection is first checked to be
        TLS at all, without the trust store (which a plain-HTTP host needs not)."""
        url = httpx.URL(f"{scheme}://{ep.api_host}/v2/")
        if probe and scheme == "https" and self.options.transport is None and \
                self._proxies.proxy_for("https", url.host, url.port) is None and \
                await speaks_tls(url.host, url.port or 443, self.options.connect_timeout) is False:
            raise RegistryUnreachable(f"cannot reach registry {ep.host} over HTTPS: "
                                      "it answered a TLS handshake in plain HTTP")
        resp = await self._send(ep, "GET", url, None, None, None, self._tries(True))
        await resp.aclose()
        return resp

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


def _env_seconds(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if value >= 0 else default


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


def _mirror_fault(e: LazyfsError) -> bool:
    """Failures that say the mirror is broken, down or busy, rather than
    that it lacks the repository or wants credentials."""
    return isinstance(e, (RegistryUnreachable, RegistryError, DigestMismatch))


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


def repository_scope(ref: Reference, push: bool = False) -> str:
    return f"repository:{ref.repository}:{'pull,push' if push else 'pull'}"


def content_type(resp: httpx.Response) -> str:
    return resp.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_limited(resp: httpx.Response, limit: int, what: str, ep: Endpoint,
                       tick: Callable[[bytes], object] | None = None) -> bytes:
    """The body, at most ``limit`` bytes; ``tick`` is told of each piece."""
    parts: list[bytes] = []
    size = 0
    async with aclosing(body_chunks(resp, 1 << 16, ep)) as chunks:
        async for chunk in chunks:
            if tick is not None:
                tick(chunk)
            size += len(chunk)
            if size > limit:
                raise RegistryError(f"{what}: registry {ep.host} sent more than {limit} bytes")
            parts.append(chunk)
    return b"".join(parts)


async def body_chunks(resp: httpx.Response, chunk_size: int, ep: Endpoint) -> AsyncIterator[bytes]:
    try:
        async with aclosing(resp.aiter_bytes(chunk_size)) as chunks:
            async for chunk in chunks:
                yield chunk
    except httpx.HTTPError as e:
        raise RegistryInterrupted(f"registry {ep.host}: answer for {resp.url.path} cut short "
                                  f"({_reason(e)})") from None


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
    cls = RegistryInterrupted if status in _RETRY_STATUS else RegistryError
    return cls(f"registry {ep.host}: {what}: HTTP {status}{detail}")


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


"""An OCI registry in memory, reached through httpx's transport seam.

``MemoryRegistry`` is an ``httpx.AsyncBaseTransport``: hand it to the client
as ``RegistryOptions(transport=registry)`` and every request to its host (and
to its token service and blob storage hosts) is answered here, in the test's
own trio loop, with no socket. It answers like distribution 2.8 where a
client can tell: content negotiation of manifests (an OCI manifest or index
asked for without its media type in ``Accept`` is a 404), Go's Range
handling for blobs, uploads in one PUT or in PATCHed chunks, paginated tags,
htpasswd or token auth, blobs redirected to a storage host as with S3, and
no referrers API when ``referrers=False``.

Every request is recorded (``requests``, ``count``, ``bytes_sent``) and can be
made to fail (``fault``): see ``lazyfs.testing.faults``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import uuid
from dataclasses import dataclass, field

import httpx

from ..registry import RegistryOptions
from ..registry.auth import RegistryAuth, TokenCache
from ..registry.credentials import Credential
from .access import Access, required_scope
from .byteranges import serve_ranges
from .faults import Body, Fault, Faults, Recorded, before_headers, spoil
from .manifests import PushedImage, image, index

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)
OCTET = "application/octet-stream"
JSON = "application/json; charset=utf-8"
REDIRECT_TTL = 1200
"""Seconds a storage URL stays valid, as S3's presigned URLs in distribution."""

_ROUTES = [
    ("manifest", re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)$")),
    ("upload", re.compile(r"^/v2/(?P<name>.+)/blobs/uploads/(?P<ref>[^/]*)$")),
    ("blob", re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<ref>[^/]+)$")),
    ("tags", re.compile(r"^/v2/(?P<name>.+)/tags/list$")),
    ("referrers", re.compile(r"^/v2/(?P<name>.+)/referrers/(?P<ref>[^/]+)$")),
]
_OCI_REFUSALS = {
    OCI_MANIFEST: "OCI manifest found, but accept header does not support OCI manifests",
    OCI_INDEX: "OCI index found, but accept header does not support OCI indexes",
}
"""What distribution answers (with a 404) when ``Accept`` leaves out an OCI type;
Docker types are served whatever the client accepts."""
_STORAGE = re.compile(r"^/(?P<name>.+)/blobs/(?P<ref>[^/]+)$")


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Repository:
    blobs: set[str] = field(default_factory=set)
    manifests: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    """Digest -> (raw, media type)."""
    tags: dict[str, str] = field(default_factory=dict)


class MemoryRegistry(httpx.AsyncBaseTransport):
    """A registry at ``host``; ``auth`` is ``None``, ``"basic"`` or ``"bearer"``
    (users in ``users``; with ``anonymous`` a token without credentials may pull)."""

    def __init__(self, host: str = "registry.test", *, auth: str | None = None,
                 users: dict[str, str] | None = None, anonymous: bool = False,
                 permissions: dict[str, str] | None = None, referrers: bool = True,
                 redirect: bool = False, paginate: bool = True,
                 token_host: str = "auth.registry.test",
                 storage_host: str = "storage.registry.test") -> None:
        self.host = host
        self.token_host = token_host
        self.storage_host = storage_host
        self.referrers = referrers
        """Whether ``/v2/<name>/referrers/<digest>`` exists (distribution 2.8 has none)."""
        self.redirect = redirect
        """Whether blob GETs and HEADs are redirected to ``storage_host``."""
        self.paginate = paginate
        """Whether the tags list honours ``n`` and ``last`` (distribution 2.8 ignores them)."""
        self.access = Access(auth, users if users is not None else {"alice": "s3cret"},
                             permissions or {}, anonymous, f"https://{token_host}/token")
        self.blobs: dict[str, bytes] = {}
        self.repositories: dict[str, Repository] = {}
        self.requests: list[Recorded] = []
        self.faults = Faults()
        self._uploads: dict[str, _Upload] = {}

    # --- content --------------------------------------------------------------

    def _repo(self, name: str) -> Repository:
        return self.repositories.setdefault(name, Repository())

    def add_blob(self, repo: str, data: bytes) -> str:
        digest = digest_of(data)
        self.blobs[digest] = bytes(data)
        self._repo(repo).blobs.add(digest)
        return digest

    def add_manifest(self, repo: str, raw: bytes, media_type: str,
                     tag: str | None = None) -> str:
        """Store a manifest as a PUT would, without checking what it refers to."""
        digest = digest_of(raw)
        r = self._repo(repo)
        r.manifests[digest] = (bytes(raw), media_type)
        if tag is not None:
            r.tags[tag] = digest
        return digest

    def push_image(self, repo: str, tag: str | None, layers, **kw) -> PushedImage:
        """Config, layers and manifest of one image; returns a ``PushedImage``.
        Keywords as ``lazyfs.testing.manifests.image``."""
        return image(layers, **kw).push(self, repo, tag)

    def push_index(self, repo: str, tag: str | None, images, **kw) -> PushedImage:
        """An index over images already pushed to ``repo`` (``PushedImage`` or
        ``(PushedImage, platform)``); keywords as ``lazyfs.testing.manifests.index``."""
        return index(images, **kw).push(self, repo, tag)

    def ref(self, repo: str, tag_or_digest: str = "latest") -> str:
        sep = "@" if ":" in tag_or_digest else ":"
        return f"{self.host}/{repo}{sep}{tag_or_digest}"

    # --- what tests ask -------------------------------------------------------

    def options(self, **kw) -> RegistryOptions:
        """``RegistryOptions`` sending everything here, retrying without
        backoff, anonymous unless ``auth`` is given (no credential file is read).
        Reads have no overall deadline unless ``read_deadline`` is given: an
        autojump clock would reach it while a read waits for a worker thread."""
        kw.setdefault("backoff", 0.0)
        kw.setdefault("read_deadline", math.inf)
        kw.setdefault("auth", self.credentials())
        return RegistryOptions(transport=self, **kw)

    def credentials(self, username: str = "", password: str = ""):
        """An ``auth`` factory for ``RegistryOptions`` with these credentials
        (none: anonymous) and a token cache of its own, so no state is shared
        with other tests."""
        cache = TokenCache()
        credential = Credential(username, password, source="the test") if username else None
        return lambda registry, scope: RegistryAuth(registry, credential, scope, cache=cache)

    def fault(self, action: str, **match) -> Fault:
        """Arm a fault (see ``Fault`` for what matches); faults fire in arming order."""
        fault = Fault(action, **match)
        self.faults.armed.append(fault)
        return fault

    def clear_faults(self) -> None:
        self.faults.armed.clear()

    def seen(self, kind: str | None = None, method: str | None = None, digest: str = "",
             host: str | None = None) -> list[Recorded]:
        return [r for r in self.requests
                if (kind is None or r.kind == kind) and (method is None or r.method == method)
                and (host is None or r.host == host) and digest in r.path]

    def count(self, kind: str | None = None, **kw) -> int:
        return len(self.seen(kind, **kw))

    def bytes_sent(self, kind: str | None = None, **kw) -> int:
        return sum(r.sent for r in self.seen(kind, **kw))

    # --- the transport --------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        rec = Recorded(request.method, request.url, request.headers, "other")
        if rec.host not in (self.host, self.token_host, self.storage_host):
            raise httpx.ConnectError(f"no such host: {rec.host}", request=request)
        rec.kind = _kind(request, rec.host, self)
        self.requests.append(rec)
        await request.aread()
        response = await before_headers(self.faults.take(rec, on_body=False), request)
        if response is None:
            response = await self._answer(request, rec)
        rec.status = response.status_code
        return response

    async def _answer(self, request: httpx.Request, rec: Recorded) -> httpx.Response:
        url = request.url
        if rec.host == self.token_host:
            return self.access.issue(request)
        if rec.host == self.storage_host:
            return self._storage(request, rec)
        route, m = _route(url.path)
        if route == "referrers" and not self.referrers:
            route = None
        if url.path in ("/v2/", "/v2/_catalog") or route is not None:
            scope = required_scope(request.method, m["name"] if route else None, url.path)
            refusal = self.access.refusal(request, scope)
            if refusal is not None:
                return refusal
        if url.path == "/v2/":
            return httpx.Response(200, headers={"docker-distribution-api-version": "registry/2.0",
                                                "content-type": JSON}, content=b"{}")
        if url.path == "/v2/_catalog":
            return _json(200, {"repositories": sorted(self.repositories)})
        if route is None:
            return httpx.Response(404, headers={"content-type": "text/plain; charset=utf-8"},
                                  content=b"404 page not found\n")
        name = m["name"]
        if route == "upload":
            return self._upload(request, name, m["ref"])
        repo = self.repositories.get(name) or Repository()
        if route == "tags" and name not in self.repositories:
            return _error(404, "NAME_UNKNOWN", "repository name not known to registry")
        if route == "tags":
            return _tags(request, name, repo, self.paginate)
        if route == "referrers":
            return self._referrers(request, repo, m["ref"])
        if route == "manifest":
            if request.method == "PUT":
                return self._put_manifest(request, name, repo, m["ref"])
            return self._get_manifest(request, rec, repo, m["ref"])
        return self._get_blob(request, rec, name, repo, m["ref"])

    # --- manifests ------------------------------------------------------------

    def _get_manifest(self, request: httpx.Request, rec: Recorded, repo: Repository,
                      ref: str) -> httpx.Response:
        if request.method not in ("GET", "HEAD"):
            return _error(405, "UNSUPPORTED", "the operation is unsupported")
        digest = ref if ":" in ref else repo.tags.get(ref)
        if digest is None or digest not in repo.manifests:
            return _error(404, "MANIFEST_UNKNOWN", "manifest unknown")
        raw, media_type = repo.manifests[digest]
        accepted = _accepted(request)
        if media_type in _OCI_REFUSALS and media_type not in accepted:
            return _error(404, "MANIFEST_UNKNOWN", _OCI_REFUSALS[media_type])
        headers = {"content-type": media_type, "docker-content-digest": digest,
                   "etag": f'"{digest}"', "content-length": str(len(raw))}
        return self._content(request, rec, raw, headers)

    def _put_manifest(self, request: httpx.Request, name: str, repo: Repository,
                      ref: str) -> httpx.Response:
        raw = request.content
        media_type = request.headers.get("content-type", "").split(";")[0].strip()
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or media_type not in MANIFEST_TYPES \
                or doc.get("mediaType", media_type) != media_type:
            return _error(400, "MANIFEST_INVALID", "manifest invalid")
        digest = digest_of(raw)
        if ":" in ref and ref != digest:
            return _error(400, "DIGEST_INVALID", "provided digest did not match uploaded content")
        missing = _missing(doc, media_type, repo)
        if missing:
            return _json(400, {"errors": [{"code": "MANIFEST_BLOB_UNKNOWN",
                                           "message": "blob unknown to registry",
                                           "detail": d} for d in missing]})
        self.add_manifest(name, raw, media_type, None if ":" in ref else ref)
        headers = {"location": str(request.url.join(f"/v2/{name}/manifests/{digest}")),
                   "docker-content-digest": digest}
        subject = doc.get("subject")
        if self.referrers and isinstance(subject, dict) and subject.get("digest"):
            headers["oci-subject"] = subject["digest"]
        return httpx.Response(201, headers=headers)

    def _referrers(self, request: httpx.Request, repo: Repository, digest: str) -> httpx.Response:
        wanted = request.url.params.get("artifactType")
        found = []
        for d, (raw, media_type) in sorted(repo.manifests.items()):
            doc = json.loads(raw)
            if (doc.get("subject") or {}).get("digest") != digest:
                continue
            artifact_type = doc.get("artifactType") or (doc.get("config") or {}).get("mediaType")
            if wanted and artifact_type != wanted:
                continue
            desc = {"mediaType": media_type, "digest": d, "size": len(raw)}
            if artifact_type:
                desc["artifactType"] = artifact_type
            if doc.get("annotations"):
                desc["annotations"] = doc["annotations"]
            found.append(desc)
        headers = {"content-type": OCI_INDEX}
        if wanted:
            headers["oci-filters-applied"] = "artifactType"
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": found})
        return httpx.Response(200, headers=headers, content=body.encode())

    # --- blobs ----------------------------------------------------------------

    def _get_blob(self, request: httpx.Request, rec: Recorded, name: str, repo: Repository,
                  digest: str) -> httpx.Response:
        if request.method not in ("GET", "HEAD"):
            return _error(405, "UNSUPPORTED", "the operation is unsupported")
        if digest not in repo.blobs:
            return _error(404, "BLOB_UNKNOWN", "blob unknown to registry")
        if self.redirect:
            expires = int(time.time()) + REDIRECT_TTL
            target = f"https://{self.storage_host}/{name}/blobs/{digest}?Expires={expires}"
            return httpx.Response(307, headers={"location": target, "content-length": "0"})
        return self._serve_blob(request, rec, digest, {"docker-content-digest": digest})

    def _storage(self, request: httpx.Request, rec: Recorded) -> httpx.Response:
        """The storage host blobs are redirected to. As S3: its URLs expire,
        and a request for several ranges gets the whole blob."""
        m = _STORAGE.match(request.url.path)
        expires = request.url.params.get("Expires", "")
        if m is None or m["ref"] not in self.blobs:
            return httpx.Response(404, content=b"<Error><Code>NoSuchKey</Code></Error>")
        if not expires.isdigit() or int(expires) < time.time():
            return httpx.Response(403, content=b"<Error><Code>AccessDenied</Code></Error>")
        return self._serve_blob(request, rec, m["ref"], {}, multi_range=False)

    def _serve_blob(self, request: httpx.Request, rec: Recorded, digest: str,
                    extra: dict[str, str], multi_range: bool = True) -> httpx.Response:
        data = self.blobs[digest]
        headers = {**extra, "accept-ranges": "bytes", "etag": f'"{digest}"'}
        if request.method == "HEAD":
            headers.update({"content-type": OCTET, "content-length": str(len(data))})
            return httpx.Response(200, headers=headers)
        fault = self.faults.take(rec, on_body=True)
        header = request.headers.get("range", "")
        if fault is not None and fault.action == "ignore_range" \
                or not multi_range and "," in header:
            header = ""
        answer = serve_ranges(data, header, OCTET)
        headers.update(answer.headers)
        if answer.status == 416:
            headers["content-length"] = str(len(data))
            return httpx.Response(416, headers=headers, stream=Body(
                answer.body[:len(data)], rec, request, declared=len(data)))
        headers["content-length"] = str(len(answer.body))
        return self._stream(request, rec, answer.status, headers, answer.body, fault)

    def _content(self, request: httpx.Request, rec: Recorded, body: bytes,
                 headers: dict[str, str]) -> httpx.Response:
        if request.method == "HEAD":
            return httpx.Response(200, headers=headers)
        return self._stream(request, rec, 200, headers, body, self.faults.take(rec, on_body=True))

    @staticmethod
    def _stream(request: httpx.Request, rec: Recorded, status: int, headers: dict[str, str],
                body: bytes, fault: Fault | None) -> httpx.Response:
        body = spoil(fault, body)
        return httpx.Response(status, headers=headers,
                              stream=Body(body, rec, request, fault))

    # --- uploads --------------------------------------------------------------

    def _upload(self, request: httpx.Request, name: str, session: str) -> httpx.Response:
        """Uploads as distribution 2.8 takes them: a POST always opens a
        session (unless it mounts a blob the other repository has); every
        later request must carry the ``_state`` of the last answer; a PATCH's
        ``Content-Range`` is not checked; a failed PUT ends the session."""
        params = request.url.params
        if request.method == "POST" and not session:
            source = self.repositories.get(params.get("from", ""))
            mount = params.get("mount", "")
            if source is not None and mount in source.blobs:
                self._repo(name).blobs.add(mount)
                return _created(request, name, mount)
            session = str(uuid.uuid4())
            self._uploads[session] = _Upload(name)
            return self._progress(request, session, 202)
        upload = self._uploads.get(session)
        if upload is None or upload.repo != name or params.get("_state") != upload.state(session):
            return _error(404, "BLOB_UPLOAD_INVALID", "blob upload invalid")
        if request.method == "PATCH":
            upload.data += request.content
            return self._progress(request, session, 202)
        if request.method == "PUT":
            del self._uploads[session]
            data = bytes(upload.data + request.content)
            if params.get("digest") != digest_of(data):
                return _error(400, "DIGEST_INVALID",
                              "provided digest did not match uploaded content")
            return _created(request, name, self.add_blob(name, data))
        if request.method == "DELETE":
            del self._uploads[session]
            return httpx.Response(204)
        return self._progress(request, session, 204)

    def _progress(self, request: httpx.Request, session: str, status: int) -> httpx.Response:
        upload = self._uploads[session]
        where = f"/v2/{upload.repo}/blobs/uploads/{session}?_state={upload.state(session)}"
        return httpx.Response(status, headers={
            "location": str(request.url.join(where)), "docker-upload-uuid": session,
            "range": f"0-{max(len(upload.data) - 1, 0)}", "content-length": "0"})


@dataclass
class _Upload:
    repo: str
    data: bytearray = field(default_factory=bytearray)

    def state(self, session: str) -> str:
        """What the next request must carry as ``_state``: like distribution's
        signed state it names the offset, so any answer's Location stays good
        until more data arrives."""
        return hashlib.sha256(f"{session}:{len(self.data)}".encode()).hexdigest()[:32]


def _kind(request: httpx.Request, host: str, registry: MemoryRegistry) -> str:
    path = request.url.path
    if host == registry.token_host:
        return "token"
    if host == registry.storage_host:
        return _blob_kind(request)
    if path == "/v2/":
        return "ping"
    if path == "/v2/_catalog":
        return "catalog"
    route, _ = _route(path)
    if route == "blob":
        return _blob_kind(request)
    return route or "other"


def _blob_kind(request: httpx.Request) -> str:
    rng = request.headers.get("range", "")
    if request.method != "GET" or not rng:
        return "blob"
    return "multirange" if "," in rng else "range"


def _route(path: str):
    for name, pattern in _ROUTES:
        m = pattern.match(path)
        if m:
            return name, m
    return None, None


def _accepted(request: httpx.Request) -> set[str]:
    return {part.split(";")[0].strip().lower()
            for value in request.headers.get_list("accept") for part in value.split(",")}


def _missing(doc: dict, media_type: str, repo: Repository) -> list[str]:
    """The blobs (or an index's child manifests) a manifest names that ``repo`` lacks."""
    if media_type in (OCI_INDEX, DOCKER_LIST):
        wanted = [(d, repo.manifests) for d in doc.get("manifests") or []]
    else:
        wanted = [(d, repo.blobs) for d in [doc.get("config") or {}, *(doc.get("layers") or [])]
                  if not d.get("urls")]
    return [str(desc.get("digest")) for desc, have in wanted if desc.get("digest") not in have]


def _tags(request: httpx.Request, name: str, repo: Repository, paginate: bool) -> httpx.Response:
    params = request.url.params if paginate else httpx.QueryParams()
    tags = sorted(t for t in repo.tags if t > params.get("last", ""))
    headers = {}
    n = params.get("n", "")
    if n.isdigit() and 0 < int(n) < len(tags):
        tags = tags[:int(n)]
        headers["link"] = f'</v2/{name}/tags/list?last={tags[-1]}&n={n}>; rel="next"'
    return _json(200, {"name": name, "tags": tags}, headers)


def _created(request: httpx.Request, name: str, digest: str) -> httpx.Response:
    return httpx.Response(201, headers={
        "location": str(request.url.join(f"/v2/{name}/blobs/{digest}")),
        "docker-content-digest": digest, "content-length": "0"})


def _error(status: int, code: str, message: str) -> httpx.Response:
    return _json(status, {"errors": [{"code": code, "message": message, "detail": {}}]})


def _json(status: int, doc: dict, headers: dict[str, str] | None = None) -> httpx.Response:
    """JSON as Go's encoder writes it: compact, with a newline."""
    body = json.dumps(doc, separators=(",", ":")).encode() + b"\n"
    return httpx.Response(status, headers={**(headers or {}), "content-type": JSON},
                          content=body)

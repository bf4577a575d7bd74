"""A Bearer token service and a proxy that demands its tokens, for auth tests.

``TokenServer`` issues opaque tokens for the registry token protocol (GET
with Basic credentials, or the OAuth2 ``refresh_token`` POST) and records
every request it gets. ``BearerProxy`` sits in front of a plain registry,
answers 401 with a ``Bearer`` challenge unless the request carries a live
token granting the repository scope, and forwards everything else.

Both run on loopback in threads of the test process, so a trio test can
talk to them with an ``httpx.AsyncClient`` while they serve.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx

SERVICE = "test-registry"


@dataclass
class TokenRequest:
    method: str
    service: str
    scopes: list[str]
    account: str
    user: str
    """The Basic user name sent, or the subject of a refresh token; ``""`` if anonymous."""
    grant_type: str = ""
    authorization: str = ""


@dataclass
class Grant:
    scopes: list[str]
    expires_at: float
    subject: str


@dataclass
class TokenServer:
    users: dict[str, str] = field(default_factory=lambda: {"alice": "s3cret"})
    refresh_tokens: dict[str, str] = field(default_factory=dict)
    """Identity token -> the user it stands for."""
    allow_anonymous: bool = True
    expires_in: int | None = 60
    token_field: str = "token"
    requests: list[TokenRequest] = field(default_factory=list)
    issued: dict[str, Grant] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None

    @property
    def realm(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/token"

    def start(self) -> TokenServer:
        self._server = _serve(self._handle)
        return self

    def stop(self) -> None:
        _shutdown(self._server)

    def revoke_all(self) -> None:
        self.issued.clear()

    def allows(self, token: str, scope: str | None) -> bool:
        grant = self.issued.get(token)
        if grant is None or time.monotonic() >= grant.expires_at:
            return False
        return scope is None or _granted(grant.scopes, scope)

    def _handle(self, h: BaseHTTPRequestHandler, body: bytes) -> tuple[int, dict, bytes]:
        url = urlsplit(h.path)
        if url.path != "/token":
            return 404, {}, b"{}"
        authorization = h.headers.get("Authorization", "")
        if h.command == "POST":
            form = parse_qs(body.decode(), keep_blank_values=True)
            one = lambda k: form.get(k, [""])[0]  # noqa: E731
            scopes = one("scope").split()
            user = self.refresh_tokens.get(one("refresh_token"), "")
            self.requests.append(TokenRequest("POST", one("service"), scopes, "", user,
                                              one("grant_type"), authorization))
            if one("grant_type") != "refresh_token" or not user:
                return _json(401, {"error": "invalid_grant"})
            return self._issue(user, scopes, "access_token")
        query = parse_qs(url.query, keep_blank_values=True)
        scopes = query.get("scope", [])
        user, ok = self._basic_user(authorization)
        self.requests.append(TokenRequest("GET", query.get("service", [""])[0], scopes,
                                          query.get("account", [""])[0], user, "",
                                          authorization))
        if not ok or (not user and not self.allow_anonymous):
            return _json(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad creds"}]})
        if not user:
            scopes = [_pull_only(s) for s in scopes]
        return self._issue(user, scopes, self.token_field)

    def _basic_user(self, authorization: str) -> tuple[str, bool]:
        if not authorization:
            return "", True
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic":
            return "", False
        user, _, password = base64.b64decode(value).decode().partition(":")
        return user, self.users.get(user) == password

    def _issue(self, subject: str, scopes: list[str], name: str) -> tuple[int, dict, bytes]:
        token = "tok." + secrets.token_urlsafe(18)
        lifetime = self.expires_in or 60
        self.issued[token] = Grant(scopes, time.monotonic() + lifetime, subject)
        answer = {name: token, "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if self.expires_in is not None:
            answer["expires_in"] = self.expires_in
        return _json(200, answer)


@dataclass
class ProxyRequest:
    method: str
    path: str
    authorization: str
    status: int


@dataclass
class BearerProxy:
    upstream: str
    """Base URL of the plain registry, ``http://127.0.0.1:PORT``."""
    tokens: TokenServer
    requests: list[ProxyRequest] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _client: httpx.Client | None = None

    @property
    def host(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> BearerProxy:
        self._client = httpx.Client(base_url=self.upstream, timeout=30)
        self._server = _serve(self._handle)
        return self

    def stop(self) -> None:
        _shutdown(self._server)
        if self._client is not None:
            self._client.close()

    def _handle(self, h: BaseHTTPRequestHandler, body: bytes) -> tuple[int, dict, bytes]:
        authorization = h.headers.get("Authorization", "")
        scope = _required_scope(h.command, urlsplit(h.path).path)
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not self.tokens.allows(token, scope):
            self.requests.append(ProxyRequest(h.command, h.path, authorization, 401))
            challenge = f'Bearer realm="{self.tokens.realm}",service="{SERVICE}"'
            if scope:
                challenge += f',scope="{scope}"'
            status, headers, out = _json(401, {"errors": [{"code": "UNAUTHORIZED"}]})
            headers["WWW-Authenticate"] = challenge
            return status, headers, out
        forward = {k: v for k, v in h.headers.items()
                   if k.lower() in ("accept", "content-type", "range")}
        r = self._client.request(h.command, h.path, content=body or None, headers=forward)
        self.requests.append(ProxyRequest(h.command, h.path, authorization, r.status_code))
        headers = {k: v for k, v in r.headers.items()
                   if k.lower() in ("content-type", "docker-content-digest", "location",
                                    "content-range", "docker-distribution-api-version")}
        if h.command == "HEAD":
            headers["Content-Length"] = r.headers.get("content-length", "0")
        return r.status_code, headers, r.content


def start_bearer_registry(upstream: str, **token_options) -> tuple[TokenServer, BearerProxy]:
    tokens = TokenServer(**token_options).start()
    try:
        return tokens, BearerProxy(upstream, tokens).start()
    except BaseException:
        tokens.stop()
        raise


_REPO_PATH = re.compile(r"^/v2/(?P<name>.+)/(manifests|blobs|tags)/")


def _required_scope(method: str, path: str) -> str | None:
    m = _REPO_PATH.match(path)
    if m is None:
        return None
    action = "pull" if method in ("GET", "HEAD") else "push"
    return f"repository:{m['name']}:{action}"


def _granted(scopes: list[str], wanted: str) -> bool:
    kind, name, action = wanted.rsplit(":", 2)
    for scope in scopes:
        parts = scope.rsplit(":", 2)
        if len(parts) == 3 and parts[0] == kind and parts[1] == name \
                and action in parts[2].split(","):
            return True
    return False


def _pull_only(scope: str) -> str:
    parts = scope.rsplit(":", 2)
    if len(parts) != 3:
        return scope
    actions = [a for a in parts[2].split(",") if a == "pull"]
    return f"{parts[0]}:{parts[1]}:{','.join(actions)}"


def _json(status: int, obj: dict) -> tuple[int, dict, bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(obj).encode()


def _serve(handle) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, headers, out = handle(self, body)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            if "Content-Length" not in headers:
                self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(out)

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


def _shutdown(server: ThreadingHTTPServer | None) -> None:
    if server is not None:
        server.shutdown()
        server.server_close()

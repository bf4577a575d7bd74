"""Who may do what at the memory registry: distribution's htpasswd Basic auth,
or its token auth with a token service on a host of its own.

As in distribution, the ping (``/v2/``) is challenged too, so a client learns
the scheme before its first real request; a Bearer challenge names the realm,
the service and the scope the refused request needed, and a token is good
only for the scopes it was granted (``insufficient_scope`` otherwise).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from dataclasses import dataclass, field

import httpx

SERVICE = "memory-registry"


@dataclass
class Grant:
    subject: str
    scopes: dict[str, set[str]]
    """Resource (``repository:library/x``) -> actions granted."""
    expires_at: float


@dataclass
class Access:
    scheme: str | None = None
    """``None`` (anyone may do anything), ``"basic"`` or ``"bearer"``."""
    users: dict[str, str] = field(default_factory=lambda: {"alice": "s3cret"})
    permissions: dict[str, str] = field(default_factory=dict)
    """User -> the actions they may be granted (``"pull"``); absent: ``"pull,push"``."""
    anonymous: bool = False
    """Whether a token asked for without credentials may pull."""
    realm: str = ""
    service: str = SERVICE
    token_lifetime: int = 300
    refresh_tokens: dict[str, str] = field(default_factory=dict)
    """Identity token -> the user it stands for (the OAuth2 ``refresh_token`` grant)."""
    grants: dict[str, Grant] = field(default_factory=dict)

    def revoke_tokens(self) -> None:
        """Every token issued so far stops working, as when tokens expire."""
        self.grants.clear()

    def refusal(self, request: httpx.Request, scope: str | None) -> httpx.Response | None:
        """The 401 for a request lacking what ``scope`` (``repository:x:pull``) needs."""
        if self.scheme is None:
            return None
        authorization = request.headers.get("authorization", "")
        if self.scheme == "basic":
            if self._basic_user(authorization) is not None:
                return None
            return _unauthorized('Basic realm="memory-registry"', "authentication required")
        kind, _, token = authorization.partition(" ")
        grant = self.grants.get(token) if kind.lower() == "bearer" else None
        if grant is not None and time.monotonic() >= grant.expires_at:
            grant = None
        challenge = f'Bearer realm="{self.realm}",service="{self.service}"'
        if scope:
            challenge += f',scope="{scope}"'
        if grant is None:
            return _unauthorized(challenge, "authentication required")
        if scope and not _covers(grant, scope):
            return _unauthorized(challenge + ',error="insufficient_scope"',
                                 "insufficient scope", "DENIED")
        return None

    def issue(self, request: httpx.Request) -> httpx.Response:
        """The token service: ``GET realm?service=&scope=`` with optional Basic
        credentials, or an OAuth2 ``refresh_token`` POST."""
        if request.url.path != httpx.URL(self.realm).path:
            return httpx.Response(404, json={"error": "not found"})
        if request.method == "POST":
            form = httpx.QueryParams(request.content.decode("utf-8", "replace"))
            user = self.refresh_tokens.get(form.get("refresh_token", ""))
            if form.get("grant_type") != "refresh_token" or user is None:
                return httpx.Response(401, json={"error": "invalid_grant"})
            return self._token(user, form.get("scope", "").split(), "access_token")
        authorization = request.headers.get("authorization", "")
        user = self._basic_user(authorization) if authorization else ""
        if user is None:
            return httpx.Response(401, json={"errors": [{"code": "UNAUTHORIZED",
                                                         "message": "invalid credentials"}]})
        return self._token(user, request.url.params.get_list("scope"), "token")

    def _token(self, user: str, scopes: list[str], name: str) -> httpx.Response:
        allowed = set(self.permissions.get(user, "pull,push").split(",")) if user else \
            ({"pull"} if self.anonymous else set())
        granted: dict[str, set[str]] = {}
        for scope in scopes:
            resource, _, actions = scope.rpartition(":")
            if resource:
                granted.setdefault(resource, set()).update(
                    a for a in actions.split(",") if a in allowed or a == "*" and user)
        token = "tok." + secrets.token_urlsafe(12)
        self.grants[token] = Grant(user, granted, time.monotonic() + self.token_lifetime)
        return httpx.Response(200, json={name: token, "expires_in": self.token_lifetime,
                                         "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                    time.gmtime())})

    def _basic_user(self, authorization: str) -> str | None:
        """The user named by valid Basic credentials, else ``None``."""
        kind, _, value = authorization.partition(" ")
        if kind.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user if user in self.users and self.users[user] == password else None


def required_scope(method: str, name: str | None, path: str = "") -> str | None:
    """The token scope a request needs; ``None`` for the ping, which any
    valid credentials pass."""
    if path == "/v2/_catalog":
        return "registry:catalog:*"
    if name is None:
        return None
    action = "pull" if method in ("GET", "HEAD") else "pull,push"
    return f"repository:{name}:{action}"


def _covers(grant: Grant, scope: str) -> bool:
    resource, _, actions = scope.rpartition(":")
    have = grant.scopes.get(resource, set())
    return "*" in have or all(a in have for a in actions.split(","))


def _unauthorized(challenge: str, message: str, code: str = "UNAUTHORIZED") -> httpx.Response:
    body = json.dumps({"errors": [{"code": code, "message": message, "detail": None}]})
    return httpx.Response(401, headers={"www-authenticate": challenge,
                                        "content-type": "application/json; charset=utf-8"},
                          content=body.encode())

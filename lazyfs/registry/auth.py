"""The Basic/Bearer challenge flow: ``WWW-Authenticate`` parsed, bearer
tokens fetched and cached, and ``RegistryAuth``, an ``httpx.Auth``. The
token round trips of the Bearer flow are yielded to the client like any
other request, so one ``httpx.AsyncClient`` on trio drives the whole dance
and no second client or blocking call is needed.

No message built here ever contains a password or token; errors name the
server that refused instead.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from ..errors import CredentialsError, LazyfsError, RegistryError, Unauthorized
from .credentials import Credential, credential_files, normalize_registry, unusable_files

Challenge = tuple[str, dict[str, str]]
"""A lowercased scheme and its parameters, e.g. ``("bearer", {"realm": ...})``."""
DEFAULT_TOKEN_LIFETIME = 60
_TOKEN_MARK = "lazyfs.registry.auth.token_request"


# --- challenges ------------------------------------------------------------


def parse_challenges(header: str) -> list[Challenge]:
    """All challenges of one ``WWW-Authenticate`` value (RFC 9110 §11.6.1).

    Schemes and parameter names are lowercased; quoted values are unescaped;
    a token68 (``Negotiate abc==``) is kept under the parameter name ``""``.
    Anything unparsable ends the parse: what came before it is kept.
    """
    challenges: list[Challenge] = []
    pos = 0
    while True:
        scheme, pos = _token(header, _skip(header, pos, " \t,"))
        if not scheme:
            return challenges
        params: dict[str, str] = {}
        challenges.append((scheme.lower(), params))
        token68_end = _token68_end(header, _skip(header, pos, " \t"))
        if token68_end is not None:
            params[""] = header[_skip(header, pos, " \t"):token68_end].strip()
            pos = token68_end
            continue
        while True:
            item = _skip(header, pos, " \t,")
            name, after = _token(header, item)
            eq = _skip(header, after, " \t")
            if not name or eq >= len(header) or header[eq] != "=":
                pos = item
                break
            value, pos = _value(header, _skip(header, eq + 1, " \t"))
            if value is None:
                return challenges
            params[name.lower()] = value


def parse_challenge(header: str) -> Challenge:
    """The first challenge of a ``WWW-Authenticate`` value; ``("", {})`` if none."""
    challenges = parse_challenges(header)
    return challenges[0] if challenges else ("", {})


_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789"
                   "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _skip(s: str, pos: int, chars: str) -> int:
    while pos < len(s) and s[pos] in chars:
        pos += 1
    return pos


def _token(s: str, pos: int) -> tuple[str, int]:
    end = pos
    while end < len(s) and s[end] in _TCHAR:
        end += 1
    return s[pos:end], end


def _value(s: str, pos: int) -> tuple[str | None, int]:
    if pos < len(s) and s[pos] == '"':
        out, pos = [], pos + 1
        while pos < len(s):
            ch = s[pos]
            if ch == "\\" and pos + 1 < len(s):
                out.append(s[pos + 1])
                pos += 2
            elif ch == '"':
                return "".join(out), pos + 1
            else:
                out.append(ch)
                pos += 1
        return None, pos
    token, end = _token(s, pos)
    return token, end


def _token68_end(s: str, pos: int) -> int | None:
    """Where a token68 starting at ``pos`` ends, if one is there."""
    end = pos
    while end < len(s) and (s[end].isalnum() or s[end] in "-._~+/"):
        end += 1
    if end == pos:
        return None
    end = _skip(s, end, "=")
    rest = _skip(s, end, " \t")
    if rest < len(s) and s[rest] != ",":
        return None
    return end


# --- tokens ----------------------------------------------------------------


class TokenCache:
    """Bearer tokens and the last challenge seen per registry.

    Shared between ``RegistryAuth`` objects so a second request for the same
    scope sends its token at once instead of collecting a 401 first.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[tuple, tuple[str, float]] = {}
        self._challenges: dict[str, Challenge] = {}

    def get(self, key: tuple) -> str | None:
        hit = self._tokens.get(key)
        if hit is None:
            return None
        token, expires_at = hit
        if self._clock() >= expires_at:
            del self._tokens[key]
            return None
        return token

    def put(self, key: tuple, token: str, expires_in: float) -> None:
        margin = min(5.0, expires_in / 2)
        self._tokens[key] = (token, self._clock() + expires_in - margin)

    def drop(self, key: tuple) -> None:
        self._tokens.pop(key, None)

    def challenge(self, registry: str) -> Challenge | None:
        return self._challenges.get(registry)

    def remember_challenge(self, registry: str, challenge: Challenge) -> None:
        """Keep what holds for the whole registry; ``scope`` and ``error`` were
        about the one request that was refused."""
        scheme, params = challenge
        kept = {k: v for k, v in params.items() if k not in ("scope", "error")}
        self._challenges[registry] = (scheme, kept)

    def clear(self) -> None:
        self._tokens.clear()
        self._challenges.clear()


DEFAULT_TOKEN_CACHE = TokenCache()


@dataclass(frozen=True)
class Token:
    value: str
    expires_in: float


def parse_token_response(body: bytes, realm: str) -> Token:
    """The token in a token server's JSON answer (``token`` or ``access_token``)."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise RegistryError(f"token server {realm} answered with something that is not JSON") \
            from None
    if not isinstance(data, dict):
        raise RegistryError(f"token server {realm} answered with something that is not a "
                            "JSON object")
    token = data.get("token") or data.get("access_token")
    if not isinstance(token, str) or not token:
        raise RegistryError(f"token server {realm} answered without a token")
    expires_in = data.get("expires_in")
    if not isinstance(expires_in, (int, float)) or isinstance(expires_in, bool) \
            or expires_in <= 0:
        expires_in = DEFAULT_TOKEN_LIFETIME
    return Token(token, float(expires_in))


# --- the httpx flow --------------------------------------------------------


_Flow = Generator[httpx.Request, httpx.Response, Any]


class RegistryAuth(httpx.Auth):
    """Answers a registry's Basic or Bearer challenge for one scope.

    ``scope`` is a token-spec scope such as ``repository:library/ubuntu:pull``
    (``...:pull,push`` to upload), or ``""`` for registry-wide calls. Headers
    are only ever added to requests for the registry's own host and to the
    token realm the registry named.
    """

    def __init__(self, registry: str, credential: Credential | None, scope: str = "", *,
                 cache: TokenCache | None = None) -> None:
        self.registry = normalize_registry(registry)
        self.credential = credential
        self.scope = scope
        self.cache = cache if cache is not None else DEFAULT_TOKEN_CACHE
        self._endpoint = _host_port(self.registry)
        self._looked_in = [f.label for f in credential_files()] if credential is None else []

    @property
    def tried_source(self) -> str:
        """What credentials were tried, phrased for an error message."""
        if self.credential is not None:
            return f"tried credentials from {self.credential.source or 'the caller'}"
        return "no credentials found; looked in " + ", ".join(self._looked_in)

    def unauthorized(self, what: str = "authentication required") -> LazyfsError:
        """The error for a final 401, naming the registry and the source tried."""
        return self._refusal(f"{what} for {self.registry}")

    def _refusal(self, what: str) -> LazyfsError:
        """``Unauthorized``; but with no credential found and a credential file
        skipped as unusable, that file is what to fix (``CredentialsError``)."""
        if self.credential is None and (unusable := unusable_files()):
            return CredentialsError(f"unauthorized: {what}, and " + "; ".join(unusable))
        return Unauthorized(f"unauthorized: {what} ({self.tried_source})")

    def auth_flow(self, request: httpx.Request) -> _Flow:
        if not self._for_registry(request.url):
            yield request
            return
        cred = self.credential
        if cred is not None and cred.registry_token:
            request.headers["Authorization"] = f"Bearer {cred.registry_token}"
            yield request
            return
        known = self.cache.challenge(self.registry)
        preempted = False
        if known is not None:
            preempted = yield from self._authorize(request, known, fresh=False)
        response = yield request
        if response.status_code != 401:
            return
        challenge = pick_challenge(response)
        if challenge is None:
            return
        self.cache.remember_challenge(self.registry, challenge)
        if preempted and challenge[0] == "basic":
            return
        if (yield from self._authorize(request, challenge, fresh=True)):
            yield request

    def sync_auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        flow = self.auth_flow(request)
        request = next(flow)
        while True:
            response = yield request
            if request.extensions.get(_TOKEN_MARK):
                response.read()
            try:
                request = flow.send(response)
            except StopIteration:
                return

    async def async_auth_flow(self, request: httpx.Request):
        flow = self.auth_flow(request)
        request = next(flow)
        while True:
            response = yield request
            if request.extensions.get(_TOKEN_MARK):
                await response.aread()
            try:
                request = flow.send(response)
            except StopIteration:
                return

    def _for_registry(self, url: httpx.URL) -> bool:
        return (normalize_registry(url.host), url.port) == self._endpoint

    def _authorize(self, request: httpx.Request, challenge: Challenge,
                   fresh: bool) -> Generator[httpx.Request, httpx.Response, bool]:
        scheme, params = challenge
        cred = self.credential
        if scheme == "basic":
            if cred is None or not cred.has_password:
                return False
            request.headers["Authorization"] = _basic(cred.username, cred.password)
            return True
        if scheme != "bearer":
            return False
        realm = params.get("realm", "")
        if not realm.lower().startswith(("https://", "http://")):
            raise RegistryError(f"registry {self.registry} sent a Bearer challenge without "
                                "a usable realm")
        service = params.get("service", "")
        key = (realm, service, self.scope, cred)
        token = None if fresh else self.cache.get(key)
        if token is None:
            self.cache.drop(key)
            got = yield from self._fetch_token(realm, service, params.get("scope", ""))
            self.cache.put(key, got.value, got.expires_in)
            token = got.value
        request.headers["Authorization"] = f"Bearer {token}"
        return True

    def _fetch_token(self, realm: str, service: str,
                     challenge_scope: str) -> Generator[httpx.Request, httpx.Response, Token]:
        scopes = [s for s in dict.fromkeys([self.scope, challenge_scope]) if s]
        request = self._token_request(realm, service, scopes)
        request.extensions[_TOKEN_MARK] = True
        response = yield request
        if response.status_code in (401, 403):
            raise self._refusal(f"token server {realm} refused access to "
                                f"{' '.join(scopes) or self.registry}")
        if response.status_code != 200:
            raise RegistryError(f"token server {realm} answered HTTP {response.status_code} "
                                f"for {self.registry}")
        return parse_token_response(response.content, realm)

    def _token_request(self, realm: str, service: str, scopes: list[str]) -> httpx.Request:
        cred = self.credential
        if cred is not None and cred.identity_token:
            form = {"grant_type": "refresh_token", "refresh_token": cred.identity_token,
                    "client_id": "lazyfs", "access_type": "offline"}
            if service:
                form["service"] = service
            if scopes:
                form["scope"] = " ".join(scopes)
            return httpx.Request("POST", realm, data=form)
        params: list[tuple[str, str]] = []
        if service:
            params.append(("service", service))
        params.extend(("scope", s) for s in scopes)
        headers = {}
        if cred is not None and cred.has_password:
            params.append(("account", cred.username))
            headers["Authorization"] = _basic(cred.username, cred.password)
        return httpx.Request("GET", realm, params=params, headers=headers)


def pick_challenge(response: httpx.Response) -> Challenge | None:
    """The challenge to answer: Bearer over Basic, others ignored."""
    found = [c for value in response.headers.get_list("www-authenticate")
             for c in parse_challenges(value)]
    for wanted in ("bearer", "basic"):
        for challenge in found:
            if challenge[0] == wanted:
                return challenge
    return None


def _basic(username: str, password: str) -> str:
    raw = f"{username}:{password}".encode("utf-8")
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _host_port(registry: str) -> tuple[str, int | None]:
    """``host[:port]`` split; a bracketed IPv6 literal keeps no brackets."""
    if registry.startswith("["):
        host, _, rest = registry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = registry.rpartition(":") if registry.count(":") == 1 else (registry, "", "")
    number = int(port) if port.isdigit() else None
    return host.lower(), (None if number in (80, 443) else number)

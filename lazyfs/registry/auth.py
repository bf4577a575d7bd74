"""Registry credentials and the Basic/Bearer challenge flow.

Credentials are found where docker and podman keep them, so ``docker login``
and ``podman login`` just work. ``RegistryAuth`` is an ``httpx.Auth``: the
token round trips of the Bearer flow are yielded to the client like any
other request, so one ``httpx.AsyncClient`` on trio drives the whole dance
and no second client or blocking call is needed.

No message built here ever contains a password or token; errors name the
file, helper or server that is wrong instead.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from ..errors import RegistryError, Unauthorized, UsageError

DOCKER_HUB = "docker.io"
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"
"""The server address docker stores Docker Hub credentials under."""
Challenge = tuple[str, dict[str, str]]
"""A lowercased scheme and its parameters, e.g. ``("bearer", {"realm": ...})``."""
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
HELPER_TIMEOUT = 10.0
DEFAULT_TOKEN_LIFETIME = 60
_TOKEN_MARK = "lazyfs.registry.auth.token_request"


# --- credentials -----------------------------------------------------------


@dataclass(frozen=True)
class Credential:
    username: str = ""
    password: str = ""
    identity_token: str = ""
    """An OAuth2 refresh token (docker's ``identitytoken``)."""
    registry_token: str = ""
    """A bearer token sent to the registry as is (docker's ``registrytoken``)."""
    source: str = ""
    """Where it came from, for messages: a file or a credential helper."""

    def __repr__(self) -> str:
        kinds = [name for name, value in (("password", self.password),
                                          ("identity_token", self.identity_token),
                                          ("registry_token", self.registry_token)) if value]
        return (f"Credential(username={self.username!r}, has={'+'.join(kinds) or 'nothing'}, "
                f"source={self.source!r})")

    __str__ = __repr__

    @property
    def has_password(self) -> bool:
        return bool(self.username and self.password)


def normalize_registry(key: str) -> str:
    """The registry host a config key or reference domain stands for.

    Config files carry keys in every historic spelling (``https://host``,
    ``http://host/v1/``, ``index.docker.io``); all of them name one host.
    """
    host = key.strip()
    for prefix in ("https://", "http://"):
        if host.lower().startswith(prefix):
            host = host[len(prefix):]
    host = host.split("/", 1)[0].lower()
    return DOCKER_HUB if host in _HUB_ALIASES else host


def helper_server_url(registry: str) -> str:
    """What docker writes on a credential helper's stdin for ``registry``."""
    registry = normalize_registry(registry)
    return DOCKER_HUB_SERVER if registry == DOCKER_HUB else registry


@dataclass(frozen=True)
class AuthFile:
    path: Path
    label: str
    """How messages name the file, e.g. ``$REGISTRY_AUTH_FILE (/x/auth.json)``."""


def credential_files() -> list[AuthFile]:
    """The files searched, in the order they are searched."""
    files = []
    env_file = os.environ.get("REGISTRY_AUTH_FILE")
    if env_file:
        files.append(AuthFile(Path(env_file), f"$REGISTRY_AUTH_FILE ({env_file})"))
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    podman = (Path(runtime) / "containers" / "auth.json" if runtime
              else Path(f"/run/containers/{os.getuid()}/auth.json"))
    files.append(AuthFile(podman, str(podman)))
    docker_dir = os.environ.get("DOCKER_CONFIG")
    docker = (Path(docker_dir) if docker_dir else Path.home() / ".docker") / "config.json"
    files.append(AuthFile(docker, str(docker)))
    return files


def find_credential(registry: str) -> Credential | None:
    """The first credential for ``registry`` in docker/podman's config files.

    Blocking (it may run a credential helper): from async code use
    ``find_credential_async``.
    """
    registry = normalize_registry(registry)
    for auth_file in credential_files():
        config = _load_config(auth_file)
        if config is None:
            continue
        credential = _credential_in(config, auth_file, registry)
        if credential is not None:
            return credential
    return None


async def find_credential_async(registry: str) -> Credential | None:
    return await trio.to_thread.run_sync(find_credential, registry)


def _load_config(auth_file: AuthFile) -> dict[str, Any] | None:
    try:
        text = auth_file.path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read credential file {auth_file.label}: "
                         f"{getattr(e, 'strerror', None) or type(e).__name__}") from None
    if not text.strip():
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"credential file {auth_file.label} is not valid JSON "
                         f"(line {e.lineno} column {e.colno})") from None
    if not isinstance(config, dict):
        raise UsageError(f"credential file {auth_file.label} is not a JSON object")
    return config


def _credential_in(config: dict[str, Any], auth_file: AuthFile,
                   registry: str) -> Credential | None:
    helpers = _section(config, "credHelpers", auth_file)
    for key, helper in helpers.items():
        if normalize_registry(key) == registry:
            if not isinstance(helper, str) or not helper:
                raise UsageError(f"credential file {auth_file.label}: credHelpers[{key!r}] "
                                 "is not a helper name")
            return run_helper(helper, registry, auth_file.label)
    credential = _from_auths(_section(config, "auths", auth_file), auth_file, registry)
    if credential is not None:
        return credential
    store = config.get("credsStore")
    if store is None or store == "":
        return None
    if not isinstance(store, str):
        raise UsageError(f"credential file {auth_file.label}: credsStore is not a helper name")
    return run_helper(store, registry, auth_file.label)


def _section(config: dict[str, Any], name: str, auth_file: AuthFile) -> dict[str, Any]:
    section = config.get(name)
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise UsageError(f"credential file {auth_file.label}: {name} is not a JSON object")
    return section


def _from_auths(auths: dict[str, Any], auth_file: AuthFile, registry: str) -> Credential | None:
    matches = [key for key in auths if normalize_registry(key) == registry]
    # A bare host key wins over a podman-style "host/namespace" key.
    matches.sort(key=lambda k: "/" in k.split("://", 1)[-1].rstrip("/"))
    for key in matches:
        credential = _parse_auth_entry(auths[key], f"{auth_file.label}: auths[{key!r}]",
                                       auth_file.label)
        if credential is not None:
            return credential
    return None


def _parse_auth_entry(entry: Any, where: str, source: str) -> Credential | None:
    if not isinstance(entry, dict):
        raise UsageError(f"credential file {where} is not a JSON object")
    fields = {}
    for name in ("auth", "username", "password", "identitytoken", "registrytoken"):
        value = entry.get(name, "")
        if not isinstance(value, str):
            raise UsageError(f"credential file {where}.{name} is not a string")
        fields[name] = value
    username, password = fields["username"], fields["password"]
    if fields["auth"]:
        username, password = _decode_basic(fields["auth"], where)
    credential = Credential(username, password, fields["identitytoken"],
                            fields["registrytoken"], source)
    if not (credential.password or credential.identity_token or credential.registry_token):
        return None
    return credential


def _decode_basic(value: str, where: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise UsageError(f"credential file {where}.auth is not base64 of "
                         "'username:password'") from None
    username, sep, password = decoded.partition(":")
    if not sep:
        raise UsageError(f"credential file {where}.auth does not hold 'username:password'")
    return username, password


def run_helper(name: str, registry: str, named_in: str) -> Credential | None:
    """Ask ``docker-credential-<name>`` for ``registry``'s credential.

    The helper protocol: the server address on stdin, a JSON object with
    ``Username`` and ``Secret`` on stdout; a ``<token>`` user name marks the
    secret as an identity token.
    """
    program = f"docker-credential-{name}"
    where = f"credential helper {program} (named in {named_in})"
    path = shutil.which(program)
    if path is None:
        raise UsageError(f"{where} is not on PATH")
    try:
        returncode, out, err = _run_with_timeout([path, "get"], helper_server_url(registry))
    except subprocess.TimeoutExpired:
        raise UsageError(f"{where} did not answer within {HELPER_TIMEOUT:g} s") from None
    except OSError as e:
        raise UsageError(f"{where} could not be run: {e.strerror}") from None
    if returncode != 0:
        said = (out + err).decode("utf-8", "replace")
        if "credentials not found" in said.lower():
            return None
        first = said.strip().splitlines()[0][:200] if said.strip() else "no message"
        raise UsageError(f"{where} failed with exit status {returncode}: {first}")
    return _parse_helper_output(out, where, f"credential helper {program}")


def _run_with_timeout(argv: list[str], stdin: str) -> tuple[int, bytes, bytes]:
    """Run a helper in its own process group, so a timeout kills its children
    too and their open pipes cannot keep us waiting."""
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, start_new_session=True) as proc:
        try:
            out, err = proc.communicate(stdin.encode(), timeout=HELPER_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return proc.returncode, out, err


def _parse_helper_output(out: bytes, where: str, source: str) -> Credential | None:
    try:
        answer = json.loads(out)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError(f"{where} answered with something that is not JSON") from None
    if not isinstance(answer, dict):
        raise UsageError(f"{where} answered with something that is not a JSON object")
    username, secret = answer.get("Username", ""), answer.get("Secret", "")
    if not isinstance(username, str) or not isinstance(secret, str):
        raise UsageError(f"{where} answered with a non-string Username or Secret")
    if not secret:
        return None
    if username == "<token>":
        return Credential(identity_token=secret, source=source)
    return Credential(username=username, password=secret, source=source)


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

    def unauthorized(self, what: str = "authentication required") -> Unauthorized:
        """The error for a final 401, naming the registry and the source tried."""
        return Unauthorized(f"unauthorized: {what} for {self.registry} ({self.tried_source})")

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
        challenge = _pick_challenge(response)
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
        host = url.host.lower()
        if host in _HUB_ALIASES:
            host = DOCKER_HUB
        return (host, url.port) == self._endpoint

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
            raise Unauthorized(f"unauthorized: token server {realm} refused access to "
                               f"{' '.join(scopes) or self.registry} ({self.tried_source})")
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


def _pick_challenge(response: httpx.Response) -> Challenge | None:
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

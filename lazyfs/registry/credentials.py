"""Registry credentials, found where docker and podman keep them, so
``docker login`` and ``podman login`` just work: ``$REGISTRY_AUTH_FILE``,
podman's ``auth.json``, docker's ``config.json``, and the credential helpers
they name.

No message built here ever contains a password or token; errors name the
file or helper that is wrong instead.

A broken file is treated as docker treats it. Docker warns ``WARNING: Error
loading config file: PATH: REASON`` and goes on as if the file were empty, so
a broken ``config.json`` never stops an anonymous pull. Here:

- a file that cannot be read or parsed (unreadable, not UTF-8, not JSON, not
  a JSON object) is skipped with one warning line naming it and what is
  wrong. It becomes an error only when its credentials are actually needed:
  the registry demands authentication and no other file had a credential
  for it. Then ``RegistryAuth.unauthorized`` reports a ``CredentialsError``
  naming the file (``unusable_files``), since fixing the file is the way out;
- a file that parses but whose entry for the registry asked about is broken
  (bad base64, a helper that is missing or fails) is a ``CredentialsError``
  at once: that credential was meant for this registry, and going on
  without it would hide the mistake (docker, too, fails when a helper does);
- entries for other registries are never looked at.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from ..errors import CredentialsError, warn

DOCKER_HUB = "docker.io"
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"
"""The server address docker stores Docker Hub credentials under."""
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
HELPER_TIMEOUT = 10.0


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


_unusable: dict[str, str] = {}
"""Files the last search skipped, by label: what is wrong with each."""


def unusable_files() -> list[str]:
    """Why each credential file skipped by the last search could not be used
    (see the module docstring), for the error of a registry that then
    demanded credentials."""
    return [_unusable[f.label] for f in credential_files() if f.label in _unusable]


def find_credential(registry: str) -> Credential | None:
    """The first credential for ``registry`` in docker/podman's config files;
    a file that cannot be parsed is skipped with a warning (see the module
    docstring for when a broken file is an error).

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
    """The file's JSON object; None when it is absent, empty, or skipped as
    unusable (warned about once per process and reason)."""
    try:
        config = _parse_config(auth_file)
    except CredentialsError as e:
        if _unusable.get(auth_file.label) != str(e):
            warn(f"{e}; going on without it")
        _unusable[auth_file.label] = str(e)
        return None
    _unusable.pop(auth_file.label, None)
    return config


def _parse_config(auth_file: AuthFile) -> dict[str, Any] | None:
    return parse_config_file(auth_file.path, auth_file.label)


def parse_config_file(path: Path, label: str) -> dict[str, Any] | None:
    """A credential file's JSON object; ``None`` when it is missing or empty.
    Shared by the readers here and the writer behind ``lazyfs login``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise CredentialsError(f"cannot read credential file {label}: "
                               f"{getattr(e, 'strerror', None) or type(e).__name__}") from None
    if not text.strip():
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise CredentialsError(f"credential file {label} is not valid JSON "
                               f"(line {e.lineno} column {e.colno})") from None
    if not isinstance(config, dict):
        raise CredentialsError(f"credential file {label} is not a JSON object")
    return config


def _credential_in(config: dict[str, Any], auth_file: AuthFile,
                   registry: str) -> Credential | None:
    helpers = _section(config, "credHelpers", auth_file)
    for key, helper in helpers.items():
        if normalize_registry(key) == registry:
            if not isinstance(helper, str) or not helper:
                raise CredentialsError(f"credential file {auth_file.label}: credHelpers[{key!r}] "
                                 "is not a helper name")
            return run_helper(helper, registry, auth_file.label)
    credential = _from_auths(_section(config, "auths", auth_file), auth_file, registry)
    if credential is not None:
        return credential
    store = config.get("credsStore")
    if store is None or store == "":
        return None
    if not isinstance(store, str):
        raise CredentialsError(f"credential file {auth_file.label}: credsStore is not a helper name")
    return run_helper(store, registry, auth_file.label)


def _section(config: dict[str, Any], name: str, auth_file: AuthFile) -> dict[str, Any]:
    section = config.get(name)
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise CredentialsError(f"credential file {auth_file.label}: {name} is not a JSON object")
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
        raise CredentialsError(f"credential file {where} is not a JSON object")
    fields = {}
    for name in ("auth", "username", "password", "identitytoken", "registrytoken"):
        value = entry.get(name, "")
        if not isinstance(value, str):
            raise CredentialsError(f"credential file {where}.{name} is not a string")
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
        raise CredentialsError(f"credential file {where}.auth is not base64 of "
                         "'username:password'") from None
    username, sep, password = decoded.partition(":")
    if not sep:
        raise CredentialsError(f"credential file {where}.auth does not hold 'username:password'")
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
        raise CredentialsError(f"{where} is not on PATH")
    try:
        returncode, out, err = run_with_timeout([path, "get"], helper_server_url(registry))
    except subprocess.TimeoutExpired:
        raise CredentialsError(f"{where} did not answer within {HELPER_TIMEOUT:g} s") from None
    except OSError as e:
        raise CredentialsError(f"{where} could not be run: {e.strerror}") from None
    if returncode != 0:
        said = (out + err).decode("utf-8", "replace")
        if "credentials not found" in said.lower():
            return None
        first = said.strip().splitlines()[0][:200] if said.strip() else "no message"
        raise CredentialsError(f"{where} failed with exit status {returncode}: {first}")
    return _parse_helper_output(out, where, f"credential helper {program}")


def run_with_timeout(argv: list[str], stdin: str) -> tuple[int, bytes, bytes]:
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
        raise CredentialsError(f"{where} answered with something that is not JSON") from None
    if not isinstance(answer, dict):
        raise CredentialsError(f"{where} answered with something that is not a JSON object")
    username, secret = answer.get("Username", ""), answer.get("Secret", "")
    if not isinstance(username, str) or not isinstance(secret, str):
        raise CredentialsError(f"{where} answered with a non-string Username or Secret")
    if not secret:
        return None
    if username == "<token>":
        return Credential(identity_token=secret, source=source)
    return Credential(username=username, password=secret, source=source)

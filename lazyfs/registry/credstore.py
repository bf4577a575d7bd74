"""Keeping and forgetting registry credentials where docker keeps them, so a
``lazyfs login`` is seen by docker and the other way round.

Docker's rules: the credential goes to the helper ``credHelpers`` names for
the registry, else to the ``credsStore`` helper, else into
``$DOCKER_CONFIG/config.json`` (``~/.docker/config.json``) as base64
``user:password`` under ``auths``. The file is rewritten atomically, private
to its owner, with every other key kept as it was.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from ..errors import CredentialsError
from .credentials import (HELPER_TIMEOUT, helper_server_url, normalize_registry, parse_config_file,
                          run_with_timeout)


def docker_config_file() -> Path:
    """The file ``docker login`` writes."""
    directory = os.environ.get("DOCKER_CONFIG")
    return (Path(directory) if directory else Path.home() / ".docker") / "config.json"


def store_credential(registry: str, username: str, password: str) -> str:
    """Keep ``username:password`` for ``registry``; returns where, for messages."""
    path = docker_config_file()
    config = _read(path)
    server = helper_server_url(registry)
    auths = _auths(config, path)
    for key in _keys_for(auths, registry):
        del auths[key]
    helper = _helper_for(config, registry, path)
    if helper is not None:
        entry = json.dumps({"ServerURL": server, "Username": username, "Secret": password})
        _run_helper(helper, "store", entry)
        auths[server] = {}
    else:
        auths[server] = {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}
    _write(path, config)
    return f"docker-credential-{helper}" if helper is not None else str(path)


def erase_credential(registry: str) -> bool:
    """Forget ``registry``'s credential; whether there was one to forget."""
    path = docker_config_file()
    config = _read(path)
    auths = _auths(config, path)
    keys = _keys_for(auths, registry)
    for key in keys:
        del auths[key]
    helper = _helper_for(config, registry, path)
    erased = helper is not None and _run_helper(helper, "erase", helper_server_url(registry))
    if keys:
        _write(path, config)
    return bool(keys) or erased


def _read(path: Path) -> dict[str, Any]:
    try:
        return parse_config_file(path, str(path)) or {}
    except CredentialsError as e:
        raise CredentialsError(f"{e}; not changing it") from None


def _auths(config: dict[str, Any], path: Path) -> dict[str, Any]:
    auths = config.setdefault("auths", {})
    if not isinstance(auths, dict):
        raise CredentialsError(f"credential file {path}: auths is not a JSON object")
    return auths


def _keys_for(auths: dict[str, Any], registry: str) -> list[str]:
    """Every spelling of ``registry`` among the keys (``host``, ``https://host/v1/``...)."""
    host = normalize_registry(registry)
    return [key for key in auths if normalize_registry(key) == host]


def _helper_for(config: dict[str, Any], registry: str, path: Path) -> str | None:
    host = normalize_registry(registry)
    helpers = config.get("credHelpers") or {}
    named = [h for key, h in helpers.items() if normalize_registry(key) == host] \
        if isinstance(helpers, dict) else []
    helper = named[0] if named else config.get("credsStore")
    if helper in (None, ""):
        return None
    if not isinstance(helper, str):
        raise CredentialsError(f"credential file {path}: a credential helper name is not a string")
    return helper


def _run_helper(name: str, action: str, stdin: str) -> bool:
    """``docker-credential-<name> <action>``; False when it had nothing to erase."""
    program = f"docker-credential-{name}"
    found = shutil.which(program)
    if found is None:
        raise CredentialsError(f"credential helper {program} is not on PATH")
    try:
        returncode, out, err = run_with_timeout([found, action], stdin)
    except subprocess.TimeoutExpired:
        raise CredentialsError(f"credential helper {program} did not answer within "
                               f"{HELPER_TIMEOUT:g} s") from None
    except OSError as e:
        raise CredentialsError(f"credential helper {program} could not be run: "
                               f"{e.strerror}") from None
    if returncode == 0:
        return True
    said = (out + err).decode("utf-8", "replace").strip()
    if action == "erase" and "credentials not found" in said.lower():
        return False
    first = said.splitlines()[0][:200] if said else "no message"
    raise CredentialsError(f"credential helper {program} {action} failed with exit status "
                           f"{returncode}: {first}")


def _write(path: Path, config: dict[str, Any]) -> None:
    """Replace the file in one rename, mode 0600, following a symlinked config."""
    target = path.resolve() if path.is_symlink() else path
    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".config.json.", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(config, f, indent="\t")
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise CredentialsError(f"cannot write credential file {path}: {e.strerror}") from None

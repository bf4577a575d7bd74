from __future__ import annotations

import base64
import json
import logging
import os
import stat
import time

import pytest

from lazyfs.registry import auth, credentials
from lazyfs.registry.auth import (RegistryAuth, TokenCache, parse_challenge, parse_challenges,
                                  parse_token_response)
from lazyfs.registry.credentials import (Credential, find_credential, find_credential_async,
                                         normalize_registry)
from lazyfs.errors import CredentialsError, RegistryError


# --- WWW-Authenticate -------------------------------------------------------

CHALLENGES = [
    ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
     'scope="repository:library/ubuntu:pull"',
     ("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                 "scope": "repository:library/ubuntu:pull"})),
    ('Basic realm="basic-realm"', ("basic", {"realm": "basic-realm"})),
    ('Bearer realm="https://r.example/t",scope="repository:a:pull,push"',
     ("bearer", {"realm": "https://r.example/t", "scope": "repository:a:pull,push"})),
    ('Bearer realm="a\\"b\\\\c"', ("bearer", {"realm": 'a"b\\c'})),
    ('bearer  Realm = "x" , SERVICE=y', ("bearer", {"realm": "x", "service": "y"})),
    ('BEARER realm=unquoted,error=insufficient_scope',
     ("bearer", {"realm": "unquoted", "error": "insufficient_scope"})),
    ('Bearer realm="x",scope="repository:a:pull repository:b:pull"',
     ("bearer", {"realm": "x", "scope": "repository:a:pull repository:b:pull"})),
    ('Basic', ("basic", {})),
    ('Negotiate abc+/==', ("negotiate", {"": "abc+/=="})),
    ('Bearer realm="unterminated', ("bearer", {})),
    ('', ("", {})),
    ('   ', ("", {})),
]


@pytest.mark.parametrize(("header", "expected"), CHALLENGES)
def test_parse_challenge(header, expected):
    assert parse_challenge(header) == expected


@pytest.mark.parametrize(("header", "expected"), [
    ('Basic realm="a, b", Bearer realm="x",service="s"',
     [("basic", {"realm": "a, b"}), ("bearer", {"realm": "x", "service": "s"})]),
    ('Negotiate, Basic realm="r"', [("negotiate", {}), ("basic", {"realm": "r"})]),
    ('Negotiate tok68==, Bearer realm=x', [("negotiate", {"": "tok68=="}),
                                           ("bearer", {"realm": "x"})]),
])
def test_parse_several_challenges(header, expected):
    assert parse_challenges(header) == expected


# --- names -----------------------------------------------------------------

@pytest.mark.parametrize(("key", "expected"), [
    ("127.0.0.1:5000", "127.0.0.1:5000"),
    ("https://127.0.0.1:5000", "127.0.0.1:5000"),
    ("http://Registry.Example.com/v1/", "registry.example.com"),
    ("https://index.docker.io/v1/", "docker.io"),
    ("index.docker.io", "docker.io"),
    ("registry-1.docker.io", "docker.io"),
    ("docker.io", "docker.io"),
    ("quay.io/some/namespace", "quay.io"),
])
def test_normalize_registry(key, expected):
    assert normalize_registry(key) == expected


def test_credential_repr_hides_secrets():
    c = Credential("alice", "pw-SECRET", "id-SECRET", "reg-SECRET", source="somewhere")
    for text in (repr(c), str(c), f"{c}", repr([c])):
        assert "SECRET" not in text
        assert "alice" in text and "somewhere" in text


# --- token answers ---------------------------------------------------------

def test_token_response_fields():
    t = parse_token_response(b'{"token": "abc", "expires_in": 300}', "realm")
    assert (t.value, t.expires_in) == ("abc", 300)
    t = parse_token_response(b'{"access_token": "xyz"}', "realm")
    assert (t.value, t.expires_in) == ("xyz", auth.DEFAULT_TOKEN_LIFETIME)
    t = parse_token_response(b'{"token": "abc", "expires_in": 0}', "realm")
    assert t.expires_in == auth.DEFAULT_TOKEN_LIFETIME


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"expires_in": 5}', b'{"token": 7}'])
def test_token_response_malformed(body):
    with pytest.raises(RegistryError, match="token server http://t/token"):
        parse_token_response(body, "http://t/token")


def test_token_cache_expiry_and_keys():
    now = [100.0]
    cache = TokenCache(clock=lambda: now[0])
    cache.put(("r", "s", "scope-a", None), "tok-a", 60)
    assert cache.get(("r", "s", "scope-a", None)) == "tok-a"
    assert cache.get(("r", "s", "scope-b", None)) is None
    now[0] += 54
    assert cache.get(("r", "s", "scope-a", None)) == "tok-a"
    now[0] += 2  # within the safety margin before expiry
    assert cache.get(("r", "s", "scope-a", None)) is None


# --- credential files ------------------------------------------------------

def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write_json(path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_no_files_no_credential(docker_config):
    assert find_credential("127.0.0.1:5000") is None


def test_base64_auth(docker_config):
    write_json(docker_config / "config.json",
               {"auths": {"127.0.0.1:5000": {"auth": b64("alice:s3:cret")}}})
    c = find_credential("127.0.0.1:5000")
    assert (c.username, c.password) == ("alice", "s3:cret")
    assert c.source == str(docker_config / "config.json")
    assert find_credential("127.0.0.1:5001") is None


def test_username_password_fields(docker_config):
    write_json(docker_config / "config.json",
               {"auths": {"reg.example": {"username": "bob", "password": "pw"}}})
    c = find_credential("reg.example")
    assert (c.username, c.password) == ("bob", "pw")


def test_identity_and_registry_tokens(docker_config):
    write_json(docker_config / "config.json", {"auths": {
        "id.example": {"auth": b64("bob:"), "identitytoken": "refresh-me"},
        "rt.example": {"registrytoken": "bearer-me"},
    }})
    c = find_credential("id.example")
    assert (c.username, c.identity_token) == ("bob", "refresh-me")
    assert find_credential("rt.example").registry_token == "bearer-me"


@pytest.mark.parametrize("key", ["https://reg.example", "http://reg.example/v1/",
                                 "https://reg.example/v2/", "REG.example"])
def test_key_spellings(docker_config, key):
    write_json(docker_config / "config.json", {"auths": {key: {"auth": b64("u:p")}}})
    assert find_credential("reg.example").password == "p"


@pytest.mark.parametrize("asked", ["docker.io", "index.docker.io", "registry-1.docker.io"])
def test_docker_hub_aliases(docker_config, asked):
    write_json(docker_config / "config.json",
               {"auths": {"https://index.docker.io/v1/": {"auth": b64("hubuser:hubpw")}}})
    assert find_credential(asked).username == "hubuser"


def test_bare_host_key_beats_namespace_key(docker_config):
    write_json(docker_config / "config.json", {"auths": {
        "quay.io/team": {"auth": b64("team:x")},
        "quay.io": {"auth": b64("me:y")},
    }})
    assert find_credential("quay.io").username == "me"


def test_registry_auth_file_comes_first(docker_config, tmp_path, monkeypatch):
    write_json(docker_config / "config.json", {"auths": {"r.example": {"auth": b64("docker:1")}}})
    xdg = tmp_path / "xdg-run" / "containers" / "auth.json"
    write_json(xdg, {"auths": {"r.example": {"auth": b64("podman:2")}}})
    env_file = tmp_path / "elsewhere" / "auth.json"
    write_json(env_file, {"auths": {"r.example": {"auth": b64("envfile:3")}}})

    assert find_credential("r.example").username == "podman"
    assert find_credential("r.example").source == str(xdg)
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(env_file))
    c = find_credential("r.example")
    assert c.username == "envfile"
    assert c.source == f"$REGISTRY_AUTH_FILE ({env_file})"


def test_later_file_used_when_earlier_lacks_registry(docker_config, tmp_path):
    write_json(tmp_path / "xdg-run" / "containers" / "auth.json",
               {"auths": {"other.example": {"auth": b64("podman:2")}}})
    write_json(docker_config / "config.json", {"auths": {"r.example": {"auth": b64("docker:1")}}})
    assert find_credential("r.example").username == "docker"


def warnings_in(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "lazyfs.warning"]


def test_malformed_json_is_skipped_with_one_warning_naming_file_not_secret(docker_config,
                                                                           caplog):
    path = docker_config / "config.json"
    path.write_text('{"auths": {"r.example": {"auth": "c2VjcmV0cGFzcw=="}},,}')
    with caplog.at_level(logging.WARNING, logger="lazyfs.warning"):
        assert find_credential("r.example") is None
        assert find_credential("other.example") is None
    warning, = warnings_in(caplog)
    assert str(path) in warning and "not valid JSON" in warning
    assert "c2VjcmV0" not in warning
    # needed after all (the registry demands credentials): the file is the error
    e = RegistryAuth("r.example", None).unauthorized()
    assert isinstance(e, CredentialsError)
    assert str(path) in str(e) and "not valid JSON" in str(e) and "r.example" in str(e)
    assert "c2VjcmV0" not in str(e)


def test_a_file_that_is_not_an_object_is_skipped_until_needed(docker_config, caplog):
    write_json(docker_config / "config.json", [1, 2])
    with caplog.at_level(logging.WARNING, logger="lazyfs.warning"):
        assert find_credential("r.example") is None
    assert len(warnings_in(caplog)) == 1
    e = RegistryAuth("r.example", None).unauthorized()
    assert isinstance(e, CredentialsError)
    assert "config.json" in str(e) and "not a JSON object" in str(e)
    write_json(docker_config / "config.json", {})
    assert find_credential("r.example") is None
    assert not isinstance(RegistryAuth("r.example", None).unauthorized(), CredentialsError)


@pytest.mark.parametrize(("config", "complaint"), [
    ({"auths": ["r.example"]}, "auths is not a JSON object"),
    ({"auths": {"r.example": "user:pw"}}, "auths['r.example'] is not a JSON object"),
    ({"auths": {"r.example": {"auth": "%%%not-base64%%%"}}}, "auth is not base64"),
    ({"auths": {"r.example": {"auth": b64("no-colon-SECRET")}}}, "username:password"),
    ({"auths": {"r.example": {"password": 7}}}, "password is not a string"),
    ({"credHelpers": {"r.example": 5}}, "is not a helper name"),
])
def test_broken_config_is_a_credentials_error(docker_config, config, complaint):
    write_json(docker_config / "config.json", config)
    with pytest.raises(CredentialsError, match="config.json") as e:
        find_credential("r.example")
    assert complaint in str(e.value)
    assert "SECRET" not in str(e.value) and "not-base64" not in str(e.value)


# --- credential helpers ----------------------------------------------------

HELPER = r"""#!/bin/sh
read server
echo "$1 $server" >> "{log}"
case "$server" in
  *notfound*) echo "credentials not found in native keychain"; exit 1;;
  *broken*) echo "the keyring is locked" >&2; exit 3;;
  *garbage*) echo "Username: bob, Secret: LEAKED"; exit 0;;
  *empty*) echo '{{"ServerURL":"x","Username":"","Secret":""}}';;
  *slow*) sleep 30; echo '{{}}';;
  *idtoken*) echo '{{"ServerURL":"x","Username":"<token>","Secret":"refresh-tok"}}';;
  *) printf '{{"ServerURL":"%s","Username":"bob","Secret":"hunter2"}}' "$server";;
esac
"""


@pytest.fixture
def helper(tmp_path, monkeypatch, docker_config):
    """A ``docker-credential-test`` on PATH; returns the log of its calls."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "helper.log"
    script = bindir / "docker-credential-test"
    script.write_text(HELPER.format(log=log))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    log.write_text("")
    return log


def test_cred_helper(helper, docker_config):
    write_json(docker_config / "config.json", {
        "credHelpers": {"r.example:5000": "test"},
        "auths": {"r.example:5000": {"auth": b64("fromfile:pw")}},
    })
    c = find_credential("r.example:5000")
    assert (c.username, c.password) == ("bob", "hunter2")
    assert c.source == "credential helper docker-credential-test"
    assert helper.read_text() == "get r.example:5000\n"


def test_cred_helper_identity_token(helper, docker_config):
    write_json(docker_config / "config.json", {"credHelpers": {"idtoken.example": "test"}})
    c = find_credential("idtoken.example")
    assert c.identity_token == "refresh-tok" and not c.password


def test_creds_store_after_auths(helper, docker_config):
    write_json(docker_config / "config.json", {
        "credsStore": "test",
        "auths": {"https://index.docker.io/v1/": {}, "file.example": {"auth": b64("f:pw")}},
    })
    assert find_credential("file.example").username == "f"
    assert helper.read_text() == ""
    assert find_credential("docker.io").username == "bob"
    assert helper.read_text() == "get https://index.docker.io/v1/\n"


@pytest.mark.parametrize("registry", ["notfound.example", "empty.example"])
def test_helper_without_credential(helper, docker_config, registry):
    write_json(docker_config / "config.json", {"credsStore": "test"})
    assert find_credential(registry) is None


def test_failing_helper(helper, docker_config):
    write_json(docker_config / "config.json", {"credHelpers": {"broken.example": "test"}})
    with pytest.raises(CredentialsError) as e:
        find_credential("broken.example")
    msg = str(e.value)
    assert "docker-credential-test" in msg and "exit status 3" in msg
    assert "keyring is locked" in msg and str(docker_config / "config.json") in msg


def test_helper_garbage_is_not_echoed(helper, docker_config):
    write_json(docker_config / "config.json", {"credsStore": "test"})
    with pytest.raises(CredentialsError, match="not JSON") as e:
        find_credential("garbage.example")
    assert "LEAKED" not in str(e.value)


def test_helper_missing(docker_config):
    write_json(docker_config / "config.json", {"credsStore": "no-such-helper-here"})
    with pytest.raises(CredentialsError, match="docker-credential-no-such-helper-here .* not on PATH"):
        find_credential("r.example")


def test_helper_timeout_kills_it(helper, docker_config, monkeypatch):
    monkeypatch.setattr(credentials, "HELPER_TIMEOUT", 0.5)
    write_json(docker_config / "config.json", {"credsStore": "test"})
    started = time.monotonic()
    with pytest.raises(CredentialsError, match="did not answer within 0.5 s"):
        find_credential("slow.example")
    assert time.monotonic() - started < 5


async def test_async_lookup_runs_helper(helper, docker_config):
    write_json(docker_config / "config.json", {"credHelpers": {"r.example": "test"}})
    c = await find_credential_async("r.example")
    assert c.username == "bob"

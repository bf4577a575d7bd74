"""Writing and erasing credentials in docker's config file (no registry needed)."""

from __future__ import annotations

import base64
import json
import stat

import pytest

from lazyfs.errors import CredentialsError
from lazyfs.registry.credentials import find_credential
from lazyfs.registry.credstore import erase_credential, store_credential


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    d = tmp_path / "docker"
    monkeypatch.setenv("DOCKER_CONFIG", str(d))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    return d


def test_docker_hub_is_kept_under_dockers_key_and_every_spelling_is_replaced(config_dir):
    config_dir.mkdir()
    (config_dir / "config.json").write_text(json.dumps(
        {"auths": {"index.docker.io": {"auth": "b2xkOm9sZA=="}}, "detachKeys": "ctrl-x"}))
    assert store_credential("docker.io", "bob", "pw") == str(config_dir / "config.json")
    config = json.loads((config_dir / "config.json").read_text())
    assert config == {"auths": {"https://index.docker.io/v1/": {
        "auth": base64.b64encode(b"bob:pw").decode()}}, "detachKeys": "ctrl-x"}
    assert find_credential("registry-1.docker.io").password == "pw"
    assert erase_credential("index.docker.io")
    assert json.loads((config_dir / "config.json").read_text()) == {"auths": {},
                                                                   "detachKeys": "ctrl-x"}
    assert not erase_credential("docker.io")


def test_a_new_file_is_private_and_a_symlinked_one_is_followed(config_dir, tmp_path):
    store_credential("ghcr.io", "u", "p")
    assert stat.S_IMODE((config_dir / "config.json").stat().st_mode) == 0o600
    real = tmp_path / "dotfiles" / "docker.json"
    real.parent.mkdir()
    real.write_text("{}")
    (config_dir / "config.json").unlink()
    (config_dir / "config.json").symlink_to(real)
    store_credential("ghcr.io", "u", "p")
    assert (config_dir / "config.json").is_symlink()
    assert "ghcr.io" in json.loads(real.read_text())["auths"]
    assert [p.name for p in config_dir.iterdir()] == ["config.json"]


def test_a_corrupt_file_is_never_overwritten(config_dir):
    config_dir.mkdir()
    (config_dir / "config.json").write_text("{not json")
    with pytest.raises(CredentialsError, match="not valid JSON"):
        store_credential("ghcr.io", "u", "p")
    assert (config_dir / "config.json").read_text() == "{not json"


def test_a_missing_helper_is_one_clear_error(config_dir, monkeypatch):
    config_dir.mkdir()
    (config_dir / "config.json").write_text(json.dumps({"credsStore": "nosuch-helper"}))
    monkeypatch.setenv("PATH", str(config_dir))
    with pytest.raises(CredentialsError, match="docker-credential-nosuch-helper is not on PATH"):
        store_credential("ghcr.io", "u", "p")

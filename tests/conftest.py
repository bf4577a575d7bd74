from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lazyfs.testing.realregistry import Registry, start_registry


@pytest.fixture(scope="session")
def registry(tmp_path_factory) -> Registry:
    """A plain (no auth) registry shared by the session; tests use their own repositories."""
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory) -> Registry:
    """A registry behind htpasswd Basic auth (user ``alice``, password ``s3cret``)."""
    reg = start_registry(tmp_path_factory.mktemp("auth-registry"), user="alice", password="s3cret")
    yield reg
    reg.stop()


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """A private store, so tests never share cached state by accident."""
    d = tmp_path / "cache"
    monkeypatch.setenv("LAZYFS_CACHE_DIR", str(d))
    return d


@pytest.fixture
def docker_config(tmp_path, monkeypatch) -> Path:
    """An empty credential environment: no host credential file leaks into a test."""
    d = tmp_path / "docker-config"
    d.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(d))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg-run"))
    return d


@pytest.fixture(autouse=True, scope="session")
def _no_host_configuration(tmp_path_factory):
    """The machine's containerd host configuration (``/etc/containerd/certs.d``)
    never reaches a test: one that wants a configuration writes its own. (The
    variable also reaches the lazyfs processes the tests start.)"""
    saved = os.environ.get("LAZYFS_HOSTS_DIR")
    os.environ["LAZYFS_HOSTS_DIR"] = str(tmp_path_factory.mktemp("no-hosts-dir"))
    yield
    if saved is None:
        os.environ.pop("LAZYFS_HOSTS_DIR", None)
    else:
        os.environ["LAZYFS_HOSTS_DIR"] = saved


@pytest.fixture(autouse=True, scope="session")
def _no_service(tmp_path_factory):
    """A ``lazyfs serve`` running on the machine never answers a test's
    commands: those that want a service start their own and say so."""
    saved = os.environ.get("LAZYFS_SOCKET")
    os.environ["LAZYFS_SOCKET"] = str(tmp_path_factory.mktemp("no-service") / "control.sock")
    yield
    if saved is None:
        os.environ.pop("LAZYFS_SOCKET", None)
    else:
        os.environ["LAZYFS_SOCKET"] = saved

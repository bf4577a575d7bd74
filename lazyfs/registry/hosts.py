"""containerd's registry host configuration, read the way containerd 1.6 and
1.7 read it, so a node's mirrors, certificates and headers need writing once.

Under a root (``/etc/containerd/certs.d`` unless ``--hosts-dir`` or
``$LAZYFS_HOSTS_DIR`` says otherwise) each registry has a directory: for
``host:port`` first ``host_port_``, then ``host:port``, then ``_default``.
Its ``hosts.toml`` lists ``[host."URL"]`` tables, tried in the order they
appear, then the ``server`` (the registry itself when left out). A file
containerd cannot decode, or one without any ``[host]`` table (1.6 and 1.7
refuse those), is ignored with a warning and the directory read the docker
way: ``*.crt`` files are CAs, ``*.cert`` with ``*.key`` client pairs.

No directory at all means no configuration: the registry alone, as before.
Pure apart from reading the files; TLS contexts are built here too, since
``ca``, ``client`` and ``skip_verify`` are this file's vocabulary.
"""

from __future__ import annotations

import os
import ssl
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import UsageError, warn

DEFAULT_HOSTS_DIR = "/etc/containerd/certs.d"
ALL_CAPABILITIES = frozenset({"pull", "resolve", "push"})


@dataclass(frozen=True)
class TlsConfig:
    ca: tuple[str, ...] = ()
    client: tuple[tuple[str, str], ...] = ()
    """(certificate, key) file pairs; an empty key: the certificate file holds it."""
    skip_verify: bool | None = None


@dataclass(frozen=True)
class HostEntry:
    """One place to send a registry's requests to. An empty ``host`` stands
    for the registry itself (lazyfs's usual scheme choice applies)."""

    scheme: str = ""
    host: str = ""
    path: str = "/v2"
    capabilities: frozenset[str] = ALL_CAPABILITIES
    tls: TlsConfig | None = None
    headers: tuple[tuple[str, str], ...] = ()


def hosts_root(option: str | None = None) -> Path:
    return Path(option or os.environ.get("LAZYFS_HOSTS_DIR") or DEFAULT_HOSTS_DIR)


def host_dir(root: Path, registry: str) -> Path | None:
    """The first of ``host_port_``, ``host:port``, ``_default`` that exists."""
    candidates = []
    head, sep, port = registry.rpartition(":")
    if sep and head and "]" not in port:
        candidates.append(f"{head}_{port}_")
    candidates += [registry, "_default"]
    for name in candidates:
        path = root / name
        if path.is_dir():
            return path
    return None


def load_hosts(root: Path, registry: str) -> list[HostEntry] | None:
    """The registry's hosts in the order they are tried, the server last;
    ``None`` when no directory configures it."""
    directory = host_dir(root, registry)
    if directory is None:
        return None
    path = directory / "hosts.toml"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raw = b""
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    if raw:
        try:
            return parse_hosts(raw, directory)
        except ValueError as e:
            warn(f"{path}: {e}; ignored, as containerd ignores it")
    return [_cert_files(directory)]


def parse_hosts(raw: bytes, directory: Path) -> list[HostEntry]:
    try:
        doc = tomllib.loads(raw.decode("utf-8", "replace"))
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"not TOML ({e})") from None
    hosts = doc.get("host")
    if not isinstance(hosts, dict):
        raise ValueError("no [host] table")
    entries = []
    for url, table in hosts.items():
        if not isinstance(table, dict):
            raise ValueError(f"host {url!r} is not a table")
        entries.append(_entry(url, table, directory))
    server = doc.get("server", "")
    if not isinstance(server, str):
        raise ValueError("'server' is not a string")
    entries.append(_entry(server, doc, directory))
    return entries


def _entry(server: str, table: dict, directory: Path) -> HostEntry:
    scheme = host = ""
    path = "/v2"
    override = table.get("override_path", False) is True
    if server:
        if not server.startswith("http"):
            server = "https://" + server
        parts = urlsplit(server)
        scheme, host = parts.scheme, parts.netloc
        if not host:
            raise ValueError(f"cannot parse server {server!r}")
        path = os.path.normpath(parts.path) if parts.path else ""
        if not override and not path.endswith("/v2"):
            path = path.rstrip("/") + "/v2"
    caps = table.get("capabilities")
    if caps:
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise ValueError("'capabilities' is not a list of strings")
        unknown = [c for c in caps if c.lower() not in ALL_CAPABILITIES]
        if unknown:
            raise ValueError(f"unknown capability {unknown[0]}")
        capabilities = frozenset(c.lower() for c in caps)
    else:
        capabilities = ALL_CAPABILITIES
    skip = table.get("skip_verify")
    ca = _paths(table.get("ca"), "ca", directory)
    client = _client_pairs(table.get("client"), directory)
    tls = TlsConfig(ca, client, skip if isinstance(skip, bool) else None) \
        if (ca or client or isinstance(skip, bool)) else None
    return HostEntry(scheme, host, path, capabilities, tls, _headers(table.get("header")))


def _absolute(p: str, directory: Path) -> str:
    return p if os.path.isabs(p) else str(directory / p)


def _paths(value, name: str, directory: Path) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (_absolute(value, directory),)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(_absolute(v, directory) for v in value)
    raise ValueError(f"invalid type for {name!r}")


def _client_pairs(value, directory: Path) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return ((_absolute(value, directory), ""),)
    if not isinstance(value, list):
        raise ValueError("invalid type for 'client'")
    pairs = []
    for item in value:
        if isinstance(item, str):
            pairs.append((_absolute(item, directory), ""))
        elif isinstance(item, list) and len(item) == 2 and all(isinstance(v, str) for v in item):
            pairs.append((_absolute(item[0], directory), _absolute(item[1], directory)))
        else:
            raise ValueError(f"invalid pair {item!r} for 'client'")
    return tuple(pairs)


def _headers(value) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ValueError("invalid type for 'header'")
    out = []
    for key, v in value.items():
        if isinstance(v, str):
            out.append((key, v))
        elif isinstance(v, list) and all(isinstance(x, str) for x in v):
            out += [(key, x) for x in v]
        else:
            raise ValueError(f"invalid type for header {key!r}")
    return tuple(out)


def _cert_files(directory: Path) -> HostEntry:
    """Docker's layout: ``*.crt`` CAs, ``*.cert`` client certificates with their ``*.key``."""
    ca: list[str] = []
    client: list[tuple[str, str]] = []
    try:
        names = sorted(p.name for p in directory.iterdir() if not p.is_dir())
    except OSError:
        names = []
    for name in names:
        if name.endswith(".crt"):
            ca.append(str(directory / name))
        if name.endswith(".cert"):
            key = directory / (name[:-5] + ".key")
            client.append((str(directory / name), str(key) if key.exists() else ""))
    tls = TlsConfig(tuple(ca), tuple(client)) if ca or client else None
    return HostEntry(tls=tls)


def tls_context(tls: TlsConfig | None) -> ssl.SSLContext:
    """The system's trust, plus the entry's CAs and client certificates."""
    ctx = ssl.create_default_context()
    if tls is None:
        return ctx
    try:
        for ca in tls.ca:
            ctx.load_verify_locations(cafile=ca)
        for cert, key in tls.client:
            ctx.load_cert_chain(cert, key or None)
    except (OSError, ssl.SSLError) as e:
        raise UsageError(f"host configuration: cannot load certificate: {e}") from None
    if tls.skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx

"""Where a registry's requests go, in order, and which mirrors are worth
asking now.

The endpoints of a registry come from its containerd host configuration
(``hosts.py``) when there is one, docker's ``--registry-mirror`` list in
front of Docker Hub's, and the registry itself last.

A mirror that failed (no connection, a 5xx, an answer cut short, bytes that
did not match their digest) is skipped for a while, longer each time it
fails again, and asked again afterwards: a pull-through cache restarted or a
P2P peer that came back is used again without a remount. A mirror that
refused a multi-range request is asked single ranges from then on. Both are
per host and shown in ``lazyfs stats``.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

from .hosts import ALL_CAPABILITIES, HostEntry, TlsConfig

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"

FIRST_SKIP = 30.0
"""Seconds a mirror is skipped after its first failure; doubled after each next one."""
LONGEST_SKIP = 300.0


@dataclass
class MirrorState:
    host: str
    requests: int = 0
    """Requests it answered usefully."""
    failures: int = 0
    """Failures in a row."""
    skip_until: float = 0.0
    reason: str = ""
    """Why it was last skipped."""
    single_range: str = ""
    """Why it is asked one range per request, if it is."""

    def doc(self, now: float) -> dict:
        out = {"host": self.host, "requests": self.requests, "failures": self.failures,
               "state": "skipped" if now < self.skip_until else "in use"}
        if now < self.skip_until:
            out["skipped_for_seconds"] = round(self.skip_until - now, 1)
        if self.reason:
            out["last_failure"] = self.reason
        if self.single_range:
            out["single_range"] = self.single_range
        return out


class MirrorHealth:
    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._hosts: dict[str, MirrorState] = {}

    def _state(self, host: str) -> MirrorState:
        return self._hosts.setdefault(host, MirrorState(host))

    def usable(self, host: str) -> bool:
        s = self._hosts.get(host)
        return s is None or self._clock() >= s.skip_until

    def failed(self, host: str, reason: str) -> None:
        s = self._state(host)
        s.failures += 1
        s.reason = reason
        s.skip_until = self._clock() + min(FIRST_SKIP * 2 ** (s.failures - 1), LONGEST_SKIP)

    def answered(self, host: str) -> None:
        s = self._state(host)
        s.requests += 1
        s.failures = 0

    def refuse_multi_range(self, host: str, reason: str) -> None:
        self._state(host).single_range = reason

    def multi_range_refused(self, host: str) -> bool:
        s = self._hosts.get(host)
        return s is not None and bool(s.single_range)

    def state(self) -> list[dict]:
        now = self._clock()
        return [s.doc(now) for s in self._hosts.values()]


@dataclass(frozen=True)
class Endpoint:
    host: str
    """The name credentials and messages use (``docker.io``, ``127.0.0.1:5000``)."""
    api_host: str
    schemes: tuple[str, ...]
    mirror: bool = False
    path: str = "/v2"
    """The API root (``override_path`` may move it)."""
    capabilities: frozenset[str] = ALL_CAPABILITIES
    tls: TlsConfig | None = None
    headers: tuple[tuple[str, str], ...] = ()


def registry_endpoints(registry: str, hosts: list[HostEntry] | None, mirrors: tuple[str, ...],
                       insecure: tuple[str, ...]) -> list[Endpoint]:
    """Every endpoint of ``registry`` in the order they are tried, itself (or
    the configured ``server``) last. ``--registry-mirror`` applies to Docker
    Hub alone, as in docker, before any configured host."""
    entries = list(hosts) if hosts else [HostEntry()]
    out = [_mirror_endpoint(m, insecure) for m in mirrors] if registry == DOCKER_HUB else []
    last = len(entries) - 1
    for i, entry in enumerate(entries):
        if entry.host:
            ep = Endpoint(entry.host, entry.host, (entry.scheme,), i < last, entry.path,
                          entry.capabilities, entry.tls, entry.headers)
        else:
            api = DOCKER_HUB_API if registry == DOCKER_HUB else registry
            ep = Endpoint(registry, api, _schemes(registry, insecure), i < last,
                          tls=entry.tls, headers=entry.headers)
        out.append(ep)
    return out


def _mirror_endpoint(mirror: str, insecure: tuple[str, ...]) -> Endpoint:
    scheme, sep, rest = mirror.partition("://")
    host = (rest if sep else mirror).rstrip("/")
    schemes = (scheme.lower(),) if sep else _schemes(host, insecure)
    return Endpoint(host, host, schemes, mirror=True,
                    capabilities=frozenset({"pull", "resolve"}))


def _schemes(host: str, insecure: tuple[str, ...]) -> tuple[str, ...]:
    return ("https", "http") if is_insecure(host, insecure) else ("https",)


def is_insecure(host: str, insecure: tuple[str, ...] = ()) -> bool:
    """Whether plain HTTP may be tried: loopback always, others only when listed."""
    name = _hostname(host)
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        ip = None
    if ip is not None and ip.is_loopback:
        return True
    for entry in insecure:
        if entry in (host, name):
            return True
        if ip is not None and "/" in entry:
            try:
                if ip in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
    return False


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[1:].partition("]")[0].lower()
    return host.rpartition(":")[0].lower() if host.count(":") == 1 else host.lower()

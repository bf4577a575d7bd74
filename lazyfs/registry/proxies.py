"""``HTTPS_PROXY``, ``HTTP_PROXY`` and ``NO_PROXY`` read as Go's
``http.ProxyFromEnvironment`` reads them, because docker and containerd do:
upper case before lower case, the scheme of the request choosing the
variable, loopback and ``localhost`` never proxied, and ``NO_PROXY`` entries
that are ``*``, an IP, a CIDR, a domain (itself and its subdomains), a
``.domain`` (subdomains only), each optionally with a port. httpx's own
reading of the environment differs on several of these, so it is switched
off and the proxy chosen here.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass

_PROXY_SCHEMES = ("http", "https", "socks5")


@dataclass(frozen=True)
class ProxyConfig:
    http: str = ""
    https: str = ""
    no_proxy: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ProxyConfig:
        env = os.environ if env is None else env

        def get(name: str) -> str:
            return env.get(name) or env.get(name.lower()) or ""

        http = "" if env.get("REQUEST_METHOD") else get("HTTP_PROXY")
        return cls(http, get("HTTPS_PROXY"), get("NO_PROXY"))

    def proxy_for(self, scheme: str, host: str, port: int | None) -> str | None:
        """The proxy URL for a request, or ``None`` to connect directly."""
        proxy = self.https if scheme == "https" else self.http if scheme == "http" else ""
        if not proxy or not _use_proxy(host, port or (443 if scheme == "https" else 80),
                                       self.no_proxy):
            return None
        if "://" not in proxy:
            proxy = "http://" + proxy
        if proxy.partition("://")[0].lower() not in _PROXY_SCHEMES:
            return None
        return proxy


def _use_proxy(host: str, port: int, no_proxy: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost":
        return False
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None and ip.is_loopback:
        return False
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return False
        if _matches(entry, host, ip, port):
            return False
    return True


def _matches(entry: str, host: str, ip, port: int) -> bool:
    if "/" in entry:
        try:
            return ip is not None and ip in ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return False
    name, want_port = _split_port(entry)
    if want_port is not None and want_port != port:
        return False
    try:
        return ip == ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        pass
    if name.startswith("*."):
        name = name[1:]
    if name.startswith("."):
        return host.endswith(name)
    return host == name or host.endswith("." + name)


def _split_port(entry: str) -> tuple[str, int | None]:
    head, sep, tail = entry.rpartition(":")
    if sep and tail.isdigit() and (entry.startswith("[") or ":" not in head):
        return head, int(tail)
    return entry, None

"""A forward HTTP proxy on loopback, as corporate proxies and Dragonfly's
dfdaemon are to clients: ``CONNECT host:port`` opens a tunnel (HTTPS), a
request in absolute form (``GET http://host:port/...``) is passed on to that
host (plain HTTP). ``hosts`` maps names to addresses, so a test can name a
registry that only the proxy can reach; every target asked for is recorded.

Threads, not trio, like ``proxy.TcpProxy``.
"""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit

from .proxy import accept_forever, shut


class HttpProxy:
    def __init__(self, hosts: dict[str, str] | None = None) -> None:
        self.hosts = dict(hosts or {})
        self.connects: list[str] = []
        """``host:port`` of each CONNECT."""
        self.forwarded: list[str] = []
        """``host:port`` of each connection that carried absolute-form requests."""
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"
        self.url = f"http://{self.address}"
        self._closed = False
        threading.Thread(target=accept_forever, args=(self._sock, self._serve,
                                                      lambda: self._closed), daemon=True).start()

    def close(self) -> None:
        self._closed = True
        shut(self._sock)
        self._sock.close()

    def _serve(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = client.recv(65536)
            if not data:
                client.close()
                return
            head += data
        method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        if method == "CONNECT":
            where, rest = target, head.partition(b"\r\n\r\n")[2]
            self.connects.append(where)
        else:
            parts = urlsplit(target)
            where = parts.netloc if ":" in parts.netloc else f"{parts.netloc}:80"
            rest = head
            self.forwarded.append(where)
        name, _, port = where.rpartition(":")
        try:
            upstream = socket.create_connection((self.hosts.get(name, name), int(port)), timeout=10)
        except OSError:
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            client.close()
            return
        upstream.settimeout(None)
        if method == "CONNECT":
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if rest:
            upstream.sendall(rest)
        threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()
        _pump(upstream, client)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Absolute-form request lines pass unchanged: HTTP/1.1 servers must take them."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        shut(src, dst)
        src.close()
        dst.close()

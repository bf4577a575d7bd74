"""A loopback TCP proxy that makes a registry look far away or slow.

``delay``: each chunk the client sends (on HTTP/1.1 one request, or one
piece of an upload) and each new connection waits that long before it goes
on: a registry ``delay`` away in round trips. ``rate``: bytes per second
towards the client, per connection, as a capped link gives. The counters say
what the delay multiplied (connections, sends) and how far a download got
(``bytes_down``), so a test can act in the middle of a layer.

Threads, not trio: it serves blocking clients and trio code alike, and a
benchmark can run it in a process of its own.
"""

from __future__ import annotations

import socket
import threading
import time


def accept_forever(sock: socket.socket, handle, closed) -> None:
    """Each connection to ``sock`` handled in a thread of its own until ``closed()``."""
    while not closed():
        try:
            client, _ = sock.accept()
        except OSError:
            return
        threading.Thread(target=handle, args=(client,), daemon=True).start()


def shut(*sockets: socket.socket) -> None:
    """Both directions of each socket ended, so the other side's pump ends too."""
    for s in sockets:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class TcpProxy:
    def __init__(self, upstream: str, *, delay: float = 0.0, rate: int | None = None):
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.delay = delay
        self.rate = rate
        self.connections = 0
        self.sends = 0
        self.bytes_down = 0
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self._sock.getsockname()[1]}"
        self._open: set[socket.socket] = set()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        accept_forever(self._sock, self._connect, lambda: self._closed)

    def _connect(self, client: socket.socket) -> None:
        time.sleep(self.delay)
        try:
            upstream = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            return
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self.connections += 1
            self._open |= {client, upstream}
        threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
        self._pump(upstream, client, False)

    def _pump(self, src: socket.socket, dst: socket.socket, upward: bool) -> None:
        try:
            while data := src.recv(16384 if self.rate else 1 << 16):
                if upward and self.delay:
                    time.sleep(self.delay)
                    with self._lock:
                        self.sends += 1
                elif not upward:
                    if self.rate:
                        time.sleep(len(data) / self.rate)
                    with self._lock:
                        self.bytes_down += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            shut(src, dst)

    def wait_for(self, nbytes: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.bytes_down < nbytes:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.bytes_down} bytes went through")
            time.sleep(0.02)

    def close(self) -> None:
        self._closed = True
        shut(self._sock)  # wakes the accept() blocked in its thread; close() alone does not
        self._sock.close()
        with self._lock:
            # Shut first: a socket another thread is reading from stays open
            # on close(), and the client would wait for its timeout.
            shut(*self._open)
            for s in self._open:
                try:
                    s.close()
                except OSError:
                    pass
        self._thread.join(5)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def ThrottleProxy(upstream: str, rate: int = 2_000_000) -> TcpProxy:
    """Slow towards the client: to catch a pull in the middle of a layer."""
    return TcpProxy(upstream, rate=rate)


def DelayProxy(upstream: str, delay: float) -> TcpProxy:
    """A fixed delay per request and per connection: a distant registry."""
    return TcpProxy(upstream, delay=delay)

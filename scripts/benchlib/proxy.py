"""A loopback TCP proxy that adds a fixed delay to every request.

Each chunk the client sends (on HTTP/1.1 that is one request, or one piece
of an upload) waits ``delay`` seconds before it is forwarded, and so does
every new connection: a registry ``delay`` away in round trips, with
loopback bandwidth. It counts connections and delayed sends, which is what
the delay multiplies.
"""

from __future__ import annotations

import socket
import threading
import time


class DelayProxy:
    def __init__(self, upstream: str, delay: float):
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.delay = delay
        self.connections = 0
        self.sends = 0
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self._sock.getsockname()[1]}"
        self._open: set[socket.socket] = set()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

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

    def _pump(self, src: socket.socket, dst: socket.socket, delayed: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if delayed:
                    time.sleep(self.delay)
                    with self._lock:
                        self.sends += 1
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed = True
        self._sock.close()
        with self._lock:
            for s in self._open:
                try:
                    s.close()
                except OSError:
                    pass
        self._thread.join(5)

    def __enter__(self) -> DelayProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

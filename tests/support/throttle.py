"""A loopback TCP proxy that slows the server-to-client direction down.

Used to catch a pull in the middle of a layer: the test watches
``bytes_down`` and acts once enough has gone through.
"""

from __future__ import annotations

import socket
import threading
import time


class ThrottleProxy:
    def __init__(self, upstream: str, rate: int = 2_000_000):
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.rate = rate
        """Bytes per second towards the client, per connection."""
        self.bytes_down = 0
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.host = f"127.0.0.1:{self._sock.getsockname()[1]}"
        self._closed = False
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, slow: bool) -> None:
        try:
            while data := src.recv(16384):
                if slow:
                    time.sleep(len(data) / self.rate)
                    with self._lock:
                        self.bytes_down += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def wait_for(self, nbytes: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.bytes_down < nbytes:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.bytes_down} bytes went through")
            time.sleep(0.02)

    def close(self) -> None:
        self._closed = True
        self._sock.close()
        for s in self._conns:
            try:
                s.close()
            except OSError:
                pass
        self._thread.join(5)

    def __enter__(self) -> ThrottleProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""Keep a FUSE connection alive between two ``lazyfs serve`` processes.

The kernel aborts a FUSE connection when the last ``/dev/fuse`` file of it
is closed; every process reading or having a file open under the mount then
sees ``ENOTCONN``, and overlay mounts stacked on it (running containers)
break for good. This small process holds a *clone* of the connection
(``FUSE_DEV_IOC_CLONE``: a device file of its own, which it never reads), so
that the connection outlives the service: while no service runs, requests
wait in the kernel's queue. A service that starts later asks it over a unix
socket for the connection (``SCM_RIGHTS``) and serves it on.

A clone rather than a second descriptor of the service's own file matters:
requests a dead process had read but not answered belong to its device file
and are ended with an error when that file is closed; had the holder kept
the same file they would wait forever.

It imports only the standard library (it outlives the service, and starts
in a few milliseconds), runs in a session of its own so that a signal to the
service's process group does not reach it, and exits when the connection is
gone (the mount was unmounted or aborted). One client at a time holds a
*lease*: its socket to the holder stays open while it serves; a second
``lazyfs serve`` for the same mount is refused while the first lives.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import socket
import struct
import sys

FUSE_DEV_IOC_CLONE = 0x8004E500
"""``_IOR(229, 0, uint32_t)``: make a device file the clone of another's connection."""


def clone(fd: int) -> int:
    """A new ``/dev/fuse`` file attached to the connection of ``fd``."""
    new = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(new, FUSE_DEV_IOC_CLONE, struct.pack("I", fd))
    except OSError:
        os.close(new)
        raise
    return new


def send(sock: socket.socket, doc: dict, fds: list[int] = ()) -> None:
    socket.send_fds(sock, [json.dumps(doc).encode() + b"\n"], list(fds))


def receive(sock: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(sock, 65536, 4)
    if not data:
        raise ConnectionError("the holder closed the connection")
    return json.loads(data), fds


class Holder:
    def __init__(self, fuse_fd: int, listener: socket.socket, lease: socket.socket | None,
                 info: dict):
        self.fuse_fd = fuse_fd
        self.listener = listener
        self.lease = lease
        self.info = info

    def run(self) -> None:
        poller = select.poll()
        # No events asked of the device: poll still reports POLLERR, which
        # is how it says the connection was aborted, and never wakes for the
        # requests queued on it.
        poller.register(self.fuse_fd, 0)
        poller.register(self.listener, select.POLLIN)
        if self.lease is not None:
            poller.register(self.lease, select.POLLIN)
        # The mount table says (POLLPRI) when a mount comes or goes: a mount
        # detached lazily leaves its connection open, and requests of the
        # files still open on it would wait for a service that never comes.
        with open("/proc/self/mountinfo", "rb") as mounts:
            poller.register(mounts, select.POLLPRI)
            self._serve(poller, mounts)

    def _serve(self, poller: select.poll, mounts) -> None:
        while True:
            for fd, events in poller.poll():
                if fd == self.fuse_fd and events & (select.POLLERR | select.POLLHUP):
                    return
                if fd == mounts.fileno():
                    mounts.seek(0)
                    if not mounted(mounts.read(), self.info.get("dev", "")):
                        return
                if fd == self.listener.fileno():
                    self._answer(poller)
                elif self.lease is not None and fd == self.lease.fileno():
                    if not self.lease.recv(4096):  # its service is gone
                        poller.unregister(self.lease)
                        self.lease.close()
                        self.lease = None

    def _answer(self, poller: select.poll) -> None:
        conn, _ = self.listener.accept()
        try:
            if self.lease is not None:
                send(conn, {"busy": True, **self.info})
                conn.close()
                return
            send(conn, {"busy": False, **self.info}, [self.fuse_fd])
        except OSError:
            conn.close()
            return
        self.lease = conn
        poller.register(conn, select.POLLIN)


def mounted(mountinfo: bytes, dev: str) -> bool:
    """Whether a mount of device ``dev`` (``major:minor``) is in ``mountinfo``."""
    key = dev.encode()
    return any(len(f) > 2 and f[2] == key for f in (line.split() for line in mountinfo.splitlines()))


def main(argv: list[str]) -> int:
    """``python -I -S holder.py SOCKET FUSE_FD LEASE_FD INFO_JSON``."""
    path, fuse_fd, lease_fd, info = argv[0], int(argv[1]), int(argv[2]), json.loads(argv[3])
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener.bind(path)
    os.chmod(path, 0o600)
    bound = os.stat(path).st_ino
    listener.listen(4)
    lease = socket.socket(fileno=lease_fd)
    info["holder"] = os.getpid()
    try:
        lease.sendall(b"ready\n")
        Holder(fuse_fd, listener, lease, info).run()
    finally:
        try:
            # unless a holder of a newer mount has bound the path since
            if os.stat(path).st_ino == bound:
                os.unlink(path)
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

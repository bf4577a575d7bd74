"""Serve a FUSE connection that another process initialised.

libfuse answers every request before ``FUSE_INIT`` with an error, and the
kernel sends ``FUSE_INIT`` once per connection, to whoever served it first.
So a successor cannot give libfuse the connection's device file directly.
It gives libfuse one end of a ``SOCK_SEQPACKET`` socket pair instead (as
``/dev/fd/N``, which ``fuse_session_mount`` takes as its channel without
mounting anything), writes a ``FUSE_INIT`` of its own into the other end,
swallows libfuse's answer, and from then on copies whole messages: requests
from the device to the socket, replies from the socket to the device, each
direction one thread doing blocking reads and writes.

The ``FUSE_INIT`` offers what the kernel offered the first process
(protocol 7.38, libfuse 3.14's own version, and the flags pyfuse3 asks
for), so that libfuse formats its replies as it did then. libfuse reads the
socket with ``splice`` (it always wants to from protocol 7.14 on, and a
socket without a splice method of its own is copied by the kernel) and
writes its replies with ``writev``: one message each, whole.

Only a resumed session pays for the copies; a fresh mount is served by
libfuse straight from the device.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import socket
import struct
import termios
import threading
import time
from dataclasses import dataclass, field

from .holder import clone

log = logging.getLogger(__name__)

FUSE_INIT = 26
PROTOCOL = (7, 38)
"""libfuse 3.14's ``FUSE_KERNEL_VERSION``/``FUSE_KERNEL_MINOR_VERSION``."""
INIT_FLAGS = ((1 << 0) | (1 << 3) | (1 << 4) | (1 << 5) | (1 << 12) | (1 << 13) | (1 << 14)
              | (1 << 15) | (1 << 18) | (1 << 22))
"""ASYNC_READ, ATOMIC_O_TRUNC, EXPORT_SUPPORT, BIG_WRITES, AUTO_INVAL_DATA,
DO_READDIRPLUS, READDIRPLUS_AUTO, ASYNC_DIO, PARALLEL_DIROPS, MAX_PAGES."""
MAX_READAHEAD = 128 * 1024
MAX_MESSAGE = 256 * 4096 + 64 * 1024
"""The biggest request (a 1 MiB write, never sent to a read-only mount) or
reply (a 1 MiB read) plus headers: ``FUSE_MAX_MAX_PAGES`` pages."""
INIT_UNIQUE = (1 << 64) - 2
"""A request id the kernel never uses (it counts up from 2)."""

_IN_HEADER = struct.Struct("=IIQQIIIHH")
_INIT_IN = struct.Struct("=IIIII44x")
_OUT_HEADER = struct.Struct("=IiQ")
_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)


def _unread(sock: socket.socket) -> int:
    """Bytes sent on ``sock`` its peer has not read yet (``SIOCOUTQ``)."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0" * 4))[0]
    except OSError:
        return 0


def init_request() -> bytes:
    body = _INIT_IN.pack(PROTOCOL[0], PROTOCOL[1], MAX_READAHEAD, INIT_FLAGS, 0)
    header = _IN_HEADER.pack(_IN_HEADER.size + len(body), FUSE_INIT, INIT_UNIQUE, 0, 0, 0, 0,
                             0, 0)
    return header + body


@dataclass
class Relay:
    """Copies between the connection (a clone of ``device``) and libfuse's socket."""

    device: int
    """Our own clone of the connection: requests we read and do not answer
    end with an error when it is closed, not in another process's queue."""
    ours: socket.socket
    theirs: socket.socket
    """The end libfuse serves, as ``/dev/fd/{theirs.fileno()}``."""
    ended: threading.Event = field(default_factory=threading.Event)
    requests: int = 0
    replies: int = 0

    @classmethod
    def open(cls, fd: int) -> Relay:
        """A relay over a clone of the connection of ``fd``, its ``FUSE_INIT`` queued."""
        device = clone(fd)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (ours, theirs):
            for opt in (_SNDBUFFORCE, socket.SO_SNDBUF):
                try:
                    s.setsockopt(socket.SOL_SOCKET, opt, 2 * MAX_MESSAGE)
                    break
                except OSError:
                    continue
        theirs.set_inheritable(False)
        ours.send(init_request())
        return cls(device, ours, theirs)

    @property
    def mountpoint(self) -> str:
        return f"/dev/fd/{self.theirs.fileno()}"

    def start(self) -> None:
        self._stop_r, self._stop_w = os.pipe()
        os.set_blocking(self.device, False)
        self._down_thread = threading.Thread(target=self._down, name="fuse-relay-down",
                                             daemon=True)
        self._down_thread.start()
        threading.Thread(target=self._up, name="fuse-relay-up", daemon=True).start()

    def pause(self, wait: float = 2.0) -> None:
        """Take no more requests from the kernel, and return once libfuse has
        read those already passed on: what is not taken waits in the
        kernel's queue for the next process, rather than dying with this one."""
        os.write(self._stop_w, b"x")
        self._down_thread.join(wait)
        deadline = time.monotonic() + wait
        while _unread(self.ours) and time.monotonic() < deadline:
            time.sleep(0.005)

    def _down(self) -> None:
        """Requests: device → libfuse."""
        buf = bytearray(MAX_MESSAGE)
        view = memoryview(buf)
        poller = select.poll()
        poller.register(self.device, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while not self.ended.is_set():
            ready = dict(poller.poll())
            if self._stop_r in ready:
                return
            if ready.get(self.device, 0) & (select.POLLERR | select.POLLHUP):
                break
            try:
                n = os.readv(self.device, [buf])
            except OSError as e:
                if e.errno in (errno.EINTR, errno.ENOENT, errno.EAGAIN):
                    continue
                if e.errno != errno.ENODEV:
                    log.warning("reading the FUSE connection: %s", e)
                break
            try:
                self.ours.send(view[:n])
            except OSError:
                break
            self.requests += 1
        self._end()

    def _up(self) -> None:
        """Replies: libfuse → device (its answer to our ``FUSE_INIT`` dropped)."""
        buf = bytearray(MAX_MESSAGE)
        view = memoryview(buf)
        while not self.ended.is_set():
            try:
                n = self.ours.recv_into(buf)
            except OSError:
                break
            if n == 0:
                break
            if n >= _OUT_HEADER.size:
                _, error, unique = _OUT_HEADER.unpack_from(buf)
                if unique == INIT_UNIQUE:
                    if error:
                        log.error("libfuse refused the resumed session: %s",
                                  os.strerror(-error))
                        break
                    continue
            try:
                os.write(self.device, view[:n])
            except OSError as e:
                # ENOENT: the request was interrupted or is gone
                if e.errno == errno.ENODEV:
                    break
                if e.errno != errno.ENOENT:
                    log.warning("answering the FUSE connection: %s", e)
            self.replies += 1
        self._end()

    def _end(self) -> None:
        if not self.ended.is_set():
            self.ended.set()
            try:
                self.ours.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        """After libfuse let go of its end. The clone is left to the process's
        exit: a thread may be blocked reading it, and closing it under that
        read would end the request it takes next with an error."""
        self._end()

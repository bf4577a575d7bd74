"""How one ``lazyfs serve`` hands its mount to the next.

A fresh mount starts a holder (``lazyfs.serve.holder``) with a clone of the
connection, in a session of its own, and keeps a lease on it. A start that
finds ``ROOT`` mounted asks the holder for the connection: it gets it when
the device the holder holds is the one mounted at ``ROOT`` and no other
service has the lease, and then serves it through a ``Relay``; it refuses
to start when another service still serves it; and when no holder answers
(a mount left by a service without one, or one whose holder is gone) the
mount is stale: it is detached lazily and a fresh one made.

On SIGTERM the service leaves the mount and the holder in place while
anything uses the mount: an overlay mount stacked on it (a running
container), or a file or directory open in it; otherwise it unmounts, and
the holder, its connection gone, exits too.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import MountError
from ..fs.daemon import FS_TYPE, device_of, is_stale, proc_mounts, state_path, unescape
from .holder import clone, receive
from .relay import Relay

log = logging.getLogger(__name__)

HOLDER_START_SECONDS = 10.0


def holder_socket(root: str) -> Path:
    return state_path(os.path.abspath(root)).with_suffix(".holder")


def inodes_path(root: str) -> Path:
    return state_path(os.path.abspath(root)).with_suffix(".inodes")


def overlay_users(mp: str, mountinfo: str | None = None) -> list[str]:
    """Mountpoints of overlay mounts with a lower directory under ``mp``."""
    prefix = mp.rstrip("/") + "/"
    users = []
    if mountinfo is None:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
    for line in mountinfo.splitlines():
        pre, _, post = line.partition(" - ")
        fields = post.split()
        if len(fields) < 3 or fields[0] != "overlay":
            continue
        for opt in fields[2].split(","):
            if opt.startswith("lowerdir=") and any(
                    d.startswith(prefix) for d in unescape(opt[9:]).split(":")):
                users.append(unescape(pre.split()[4]))
    return users


@dataclass
class Handover:
    root: str
    relay: Relay | None = None
    """Set when this process resumes a connection served before."""
    lease: socket.socket | None = None
    open_files: Callable[[], int] = lambda: 0
    """How many files and directories the service has open (set by the service)."""
    info: dict = field(default_factory=dict)
    left: bool = False
    """Set when the service exits leaving the mount to a successor."""

    @property
    def resumed(self) -> bool:
        return self.relay is not None

    def overlays(self) -> list[str]:
        return overlay_users(self.root)

    def users(self) -> list[str]:
        """Why the mount must stay: overlay mounts on it, open files."""
        why = self.overlays()
        if (n := self.open_files()):
            why.append(f"{n} open files")
        return why

    def hold(self, fuse_fd: int) -> None:
        """After a fresh mount: a holder keeps a clone of ``fuse_fd``'s connection."""
        dev = device_of(self.root)
        if dev is None:
            log.warning("%s: no mount found to hand over; no holder started", self.root)
            return
        held = clone(fuse_fd)
        ours, theirs = socket.socketpair()
        self.info = {"root": self.root, "dev": dev, "pid": os.getpid()}
        path = holder_socket(self.root)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            # its file run alone, isolated and without site: the standard
            # library is all it needs, and the service waits for it (~15 ms
            # this way, ~40 through the package's imports)
            subprocess.Popen(
                [sys.executable, "-I", "-S", holder_file(), str(path), str(held),
                 str(theirs.fileno()), json.dumps(self.info)],
                pass_fds=[held, theirs.fileno()], start_new_session=True,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=None, cwd="/")
        finally:
            os.close(held)
            theirs.close()
        ours.settimeout(HOLDER_START_SECONDS)
        try:
            ready = ours.recv(64)
        except OSError:
            ready = b""
        if not ready:
            ours.close()
            log.warning("%s: the holder did not start: this mount will not survive a restart",
                        self.root)
            return
        ours.settimeout(None)
        self.lease = ours
        log.info("%s: connection held for a successor (socket %s)", self.root, path)

    def unmount(self) -> bool:
        """Unmount a resumed session's mount (libfuse did not make it, so does
        not undo it); ``False`` when files are still open there."""
        done = subprocess.run(["fusermount3", "-u", self.root], capture_output=True, text=True,
                              timeout=30)
        if done.returncode == 0 or "not found" in done.stderr or "not mounted" in done.stderr:
            return True
        if "busy" in done.stderr.lower():
            return False
        log.warning("cannot unmount %s: %s", self.root, done.stderr.strip())
        return True

    def close(self) -> None:
        if self.lease is not None:
            self.lease.close()
            self.lease = None
        if self.relay is not None:
            self.relay.close()


def holder_file() -> str:
    return str(Path(__file__).resolve().with_name("holder.py"))


def prepare(root: str) -> Handover:
    """What to do with ``root``: resume the connection mounted there (a
    ``Handover`` with a relay), or mount fresh (one without), a stale mount
    detached first."""
    mp = os.path.abspath(root)
    kinds = [kind for _, m, kind, _ in proc_mounts() if m == mp]
    if not kinds:
        return Handover(mp)
    if kinds[-1] != FS_TYPE:
        raise MountError(f"mountpoint {mp} is busy: something is already mounted there")
    dev = device_of(mp)
    got = _ask_holder(mp)
    if got is not None:
        info, fd, lease = got
        if info.get("busy"):
            lease.close()
            raise MountError(f"{mp} is served by another lazyfs serve (pid {info.get('pid')})")
        if info.get("dev") == dev and fd is not None:
            try:
                relay = Relay.open(fd)
            finally:
                os.close(fd)
            log.info("%s: resuming the connection held by pid %s", mp, info.get("holder"))
            return Handover(mp, relay=relay, lease=lease, info=info)
        if fd is not None:
            os.close(fd)
        lease.close()
    if not is_stale(mp):
        # Answers, yet no holder has it: a mount of another process.
        raise MountError(f"mountpoint {mp} is busy: a lazyfs mount not handed over")
    log.warning("%s: a stale mount (no service, no holder): detaching it", mp)
    done = subprocess.run(["fusermount3", "-uz", mp], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise MountError(f"cannot detach the stale mount at {mp}: {done.stderr.strip()}")
    return Handover(mp)


def _ask_holder(mp: str) -> tuple[dict, int | None, socket.socket] | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(HOLDER_START_SECONDS)
    try:
        sock.connect(str(holder_socket(mp)))
        info, fds = receive(sock)
    except (OSError, ValueError, ConnectionError):
        sock.close()
        return None
    sock.settimeout(None)
    for extra in fds[1:]:
        os.close(extra)
    return info, (fds[0] if fds else None), sock



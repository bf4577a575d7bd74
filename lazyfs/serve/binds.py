"""``lazyfs mount REF MNT`` answered by a running service: a bind mount.

A mount of its own starts a Python daemon, imports its whole stack and
opens the image cold before the first read; the service has all of that
running and its images' tables in memory. So when a service answers, the
mount is the image's directory under ``ROOT`` bound onto ``MNT`` (read-only,
nosuid, nodev, as every lazyfs mount). It is bound by digest: like a mount
of its own, it keeps serving the image its tag named when it was mounted.

``lazyfs umount`` unmounts it as any mount; the service unmounts the binds it
made when it stops, since they could not answer without it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import time

import trio

from ..errors import MountError
from ..fs.daemon import (FS_TYPE, check_mountpoint, proc_mounts, read_state, state_path,
                         write_state)
from ..reference import parse_reference
from .images import ImageSet
from .paths import FSNAME

log = logging.getLogger(__name__)

_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND = 1, 2, 4, 32, 4096
_MNT_DETACH = 2


class Binds:
    def __init__(self, root: str, images: ImageSet) -> None:
        self.root = os.path.abspath(root)
        self.images = images
        self.made: dict[str, str] = {}
        """Mountpoint -> the reference bound there."""
        self._token = trio.lowlevel.current_trio_token()
        """Made on the service's loop: commands reach it from their threads."""

    def mount(self, ref_text: str, mountpoint: str) -> int:
        """Run in a command's thread: open the image on the service's loop,
        then bind its directory onto ``mountpoint``."""
        mp = check_mountpoint(mountpoint)
        ref = parse_reference(ref_text)
        slot = trio.from_thread.run(self.images.by_reference, ref, trio_token=self._token)
        source = os.path.join(self.root, *ref.registry.split("/"), *ref.repository.split("/"))
        source = f"{source}@{slot.digest}"
        try:
            os.stat(source)
        except OSError as e:
            raise MountError(f"{ref}: the service cannot serve it: {e.strerror}") from None
        _mount(source, mp, _MS_BIND)
        try:
            _mount(None, mp, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
        except MountError:
            _umount(mp)
            raise
        write_state(state_path(mp), {"pid": os.getpid(), "reference": str(ref),
                                     "digest": slot.digest, "mountpoint": mp, "bound": source,
                                     "started": time.time()})
        self.made[mp] = str(ref)
        log.info("bound %s (%s) at %s", ref, slot.digest, mp)
        return 0

    def unmount_all(self) -> None:
        """When the service stops: every bind it made that is still its own."""
        for mp in list(self.made):
            state = read_state(mp)
            if state is not None and state.get("pid") == os.getpid() and _is_bind(mp):
                _umount(mp)
                with contextlib.suppress(OSError):
                    state_path(mp).unlink()
                log.info("unmounted %s", mp)
            del self.made[mp]


def _is_bind(mp: str) -> bool:
    return any((source, m, kind) == (FSNAME, mp, FS_TYPE) for source, m, kind, _ in proc_mounts())


_libc = None


def _call(name: str, *args) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return getattr(_libc, name)(*args)


def _mount(source: str | None, target: str, flags: int) -> None:
    if _call("mount", source and os.fsencode(source), os.fsencode(target), None,
             ctypes.c_ulong(flags), None) != 0:
        err = ctypes.get_errno()
        raise MountError(f"cannot mount at {target}: {os.strerror(err)}")


def _umount(target: str) -> None:
    if _call("umount2", os.fsencode(target), _MNT_DETACH) != 0:
        log.warning("cannot unmount %s: %s", target, os.strerror(ctypes.get_errno()))

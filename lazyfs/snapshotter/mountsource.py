"""A LayerSource made of ``lazyfs mount --layers``: one mount per image under
a folder of its own, each layer a directory in overlayfs lowerdir form.

For running the snapshotter on its own (``python -m lazyfs.snapshotter``);
``lazyfs serve`` gives it one FUSE mount for every image instead. The
mounts are taken down by ``aclose``, lazily, since a running container's
overlay may still hold them.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import trio

from ..errors import MountError, NotFound

log = logging.getLogger(__name__)

MOUNT_OPTIONS = "dev,suid,allow_other"
"""A container's root needs its setuid programs and device nodes, and may run
as any user."""


class MountLayerSource:
    def __init__(self, root: Path | str, *, lazyfs: list[str] | None = None,
                 args: list[str] | None = None, env: dict | None = None):
        self.root = Path(root)
        self.lazyfs = lazyfs or [sys.executable, "-m", "lazyfs"]
        self.args = args or []
        """Global options for every ``lazyfs mount`` (``--cache-dir``, ``--insecure-registry``)."""
        self.env = env
        self._mounts: dict[str, Path] = {}
        self._locks: dict[str, trio.Lock] = {}

    async def layer_dir(self, ref: str, digest: str) -> str:
        lock = self._locks.setdefault(ref, trio.Lock())
        async with lock:
            mnt = self._mounts.get(ref)
            if mnt is None or not await trio.to_thread.run_sync(_answers, mnt):
                mnt = await self._mount(ref)
        suffix = "-" + digest.partition(":")[2][:12]
        names = await trio.to_thread.run_sync(os.listdir, mnt)
        for name in names:
            if name.endswith(suffix):
                return str(mnt / name)
        raise NotFound(f"image {ref} has no layer {digest}")

    async def _mount(self, ref: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        mnt = self.root / str(len(self._mounts) + 1)
        while mnt.exists() and any(mnt.iterdir()):
            mnt = mnt.with_name(str(int(mnt.name) + 1))
        mnt.mkdir(exist_ok=True)
        cmd = [*self.lazyfs, *self.args, "mount", "--layers", "-q", "-o", MOUNT_OPTIONS,
               ref, str(mnt)]
        log.info("mounting %s at %s", ref, mnt)
        p = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False,
                                   env=self.env)
        if p.returncode != 0:
            lines = p.stderr.decode(errors="replace").strip().splitlines() or ["(no message)"]
            raise MountError(f"lazyfs mount {ref}: {lines[-1]}")
        self._mounts[ref] = mnt
        return mnt

    async def aclose(self) -> None:
        for ref, mnt in list(self._mounts.items()):
            await trio.run_process([*self.lazyfs, "umount", "-l", str(mnt)], check=False,
                                   capture_stdout=True, capture_stderr=True, env=self.env)
            self._mounts.pop(ref, None)

    def stats(self) -> dict:
        return {ref: str(mnt) for ref, mnt in self._mounts.items()}


def _answers(path: Path) -> bool:
    try:
        os.stat(path / ".lowerdir")
        return True
    except OSError:
        return False


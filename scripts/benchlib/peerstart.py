"""A container's start through stargz-store, without a snapshotter: the
image's layer directories (``MNT/<ref>/<digest>/diff``) stacked by overlayfs
as a container's rootfs would be, and the command run chrooted in it.

stargz-store v0.12 is a store, not a snapshotter, so this is how the same
``python3`` start is measured through it: the same files are opened and
mapped as under ``ctr run`` (runc's own reads of ``/etc/passwd`` and
``/etc/group`` aside, under 1 KB). Bytes come from the registry's log.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from .peer import running_stargz_store
from .reglog import Cursor


def peer_start(registry_host: str, ref: str, layers: list[str], command: tuple[str, ...],
               cursor: Cursor) -> dict:
    """``command`` run in an overlay of the image's layers from a fresh
    stargz-store: seconds from the first lookup to its exit, and the layer
    bytes the registry served."""
    with running_stargz_store(registry_host, "start") as store, \
            tempfile.TemporaryDirectory(prefix="lazyfs-bench-ovl-") as tmp:
        cursor.mark()
        t0 = time.perf_counter()
        links = []
        for i, digest in enumerate(layers):
            # overlayfs splits lowerdir at ':', which every digest holds
            link = Path(tmp) / f"l{i}"
            link.symlink_to(store.layer_path(ref, digest))
            os.listdir(link)
            links.append(str(link))
        root = Path(tmp) / "root"
        root.mkdir()
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        "lowerdir=" + ":".join(reversed(links)), str(root)],
                       check=True, capture_output=True)
        try:
            run = subprocess.run(["chroot", str(root), *command], capture_output=True,
                                 text=True, timeout=300)
            elapsed = time.perf_counter() - t0
        finally:
            subprocess.run(["umount", str(root)], capture_output=True)
        served = cursor.served(frozenset(layers))
        out = {"total_s": elapsed, "blob_bytes": served.blob_bytes,
               "requests": served.blob_requests}
        if run.returncode:
            out["error"] = (run.stderr.strip().splitlines() or ["exit %d" % run.returncode])[-1]
        return out

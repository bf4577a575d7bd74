"""What a successor needs to place the inodes the kernel still knows.

The kernel keeps the inode numbers of a FUSE mount (open files, working
directories, the lower directories of overlay mounts) across a handover to
the next ``lazyfs serve``. An inode names a slot (an image, by manifest
digest, with or without its per-layer views) and an inode in that image's
index, which is the same file in the cache whichever process opens it; or
one of the mount's own directories and symlinks. This file keeps both
mappings, rewritten (atomically) whenever one is added, and read by a
successor at start.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

VERSION = 1


class InodeBook:
    def __init__(self, path: Path | None):
        self.path = path

    def load(self) -> dict:
        if self.path is None:
            return {}
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("%s: cannot read the inodes of the last service: %s", self.path, e)
            return {}
        return doc if doc.get("version") == VERSION else {}

    def save(self, slots: list[dict], virtual: list[list], written: list[list]) -> None:
        if self.path is None:
            return
        doc = {"version": VERSION, "slots": slots, "virtual": virtual, "written": written}
        tmp = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning("%s: cannot record inodes for a successor: %s", self.path, e)

    def forget(self) -> None:
        if self.path is not None:
            try:
                self.path.unlink()
            except OSError:
                pass

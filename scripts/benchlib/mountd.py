"""``python -m benchlib.mountd REF MOUNTPOINT``: mount through the library.

Stands in for ``lazyfs mount`` where the CLI has no such command: the same
``mount()`` and ``image_operations`` the CLI is built from, daemonised the
same way. Prints ``{"pid": ...}`` once the mount answers.
"""

from __future__ import annotations

import json
import sys

from lazyfs.errors import LazyfsError
from lazyfs.fs.operations import image_operations
from lazyfs.fs.daemon import MountOptions, mount


def main(argv: list[str]) -> int:
    ref, mp = argv[1], argv[2]
    try:
        done = mount(image_operations(ref, mp), mp, fsname=ref, options=MountOptions())
    except LazyfsError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(json.dumps({"pid": done.pid, "log": str(done.log_path or "")}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""The baseline lazyfs has to beat: a full pull and unpack by the real tools.

``skopeo copy docker://REF oci:DIR`` then ``umoci unpack``, then the same
read. umoci cannot unpack zstd layers; that is recorded as a failure of the
baseline, not hidden.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class FullPull:
    pull_s: float | None = None
    unpack_s: float | None = None
    read_s: float | None = None
    error: str = ""
    rootfs: Path | None = None

    @property
    def total_s(self) -> float | None:
        if self.pull_s is None or self.unpack_s is None or self.read_s is None:
            return None
        return self.pull_s + self.unpack_s + self.read_s


def full_pull(ref: str, work: Path, read: str = "etc/os-release") -> FullPull:
    """Pull ``ref`` whole into ``work`` and read one file from the unpacked tree."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out = FullPull()
    layout, bundle = work / "oci", work / "bundle"
    t = time.perf_counter()
    r = _run("skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}",
             f"oci:{layout}:img")
    out.pull_s = time.perf_counter() - t
    if r:
        out.error = f"skopeo: {r}"
        return out
    t = time.perf_counter()
    r = _run("umoci", "unpack", "--image", f"{layout}:img", str(bundle))
    out.unpack_s = time.perf_counter() - t
    if r:
        out.unpack_s, out.error = None, f"umoci: {r}"
        return out
    t = time.perf_counter()
    (bundle / "rootfs" / read).read_bytes()
    out.read_s = time.perf_counter() - t
    out.rootfs = bundle / "rootfs"
    return out


def _run(*cmd: str) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if r.returncode == 0:
        return ""
    lines = r.stderr.strip().splitlines()
    return lines[-1][:200] if lines else f"exit {r.returncode}"

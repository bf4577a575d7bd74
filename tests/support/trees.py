"""Describe a directory tree attribute by attribute, to compare an unpacked
image (umoci, containerd, a FUSE mount, ``lazyfs export``) with another."""

from __future__ import annotations

import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor

# Files are hashed this many at a time: through a lazy mount a read waits on
# the daemon (fetch, decompress), so one file at a time leaves both the daemon
# and this process idle half the time; several readers is also how programs
# use a mounted image.
HASHERS = 8


def describe(root: str | os.PathLike, *, xattrs: bool = True, times: bool = True,
             content: bool = True, skip: tuple[str, ...] = ()) -> dict[str, dict]:
    """path -> attributes; hardlinks appear as a ``link_group`` (the first
    path of the group), so trees from different filesystems compare equal.
    ``content=False`` leaves out the file digests (reading every byte)."""
    root = os.fspath(root)
    out: dict[str, dict] = {}
    groups: dict[tuple[int, int], str] = {}
    to_hash: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = "/" + os.path.normpath(os.path.join(rel_dir, name)).lstrip("./")
            if rel == "/.":
                continue
            if any(rel == s or rel.startswith(s + "/") for s in skip):
                continue
            st = os.lstat(full)
            item = {"type": stat.S_IFMT(st.st_mode), "mode": stat.S_IMODE(st.st_mode),
                    "uid": st.st_uid, "gid": st.st_gid}
            if stat.S_ISREG(st.st_mode):
                item["size"] = st.st_size
                if content:
                    item["sha256"] = None
                    to_hash[rel] = full
                if st.st_nlink > 1:
                    item["link_group"] = groups.setdefault((st.st_dev, st.st_ino), rel)
                    item["nlink"] = st.st_nlink
            elif stat.S_ISLNK(st.st_mode):
                item["target"] = os.readlink(full)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                item["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
            if times and not stat.S_ISDIR(st.st_mode) and not stat.S_ISLNK(st.st_mode):
                item["mtime"] = int(st.st_mtime)
            if xattrs and not stat.S_ISLNK(st.st_mode):
                item["xattrs"] = _xattrs(full)
            out[rel] = item
    if to_hash:
        with ThreadPoolExecutor(HASHERS) as pool:
            for rel, digest in zip(to_hash, pool.map(_sha256, to_hash.values())):
                out[rel]["sha256"] = digest
    return out


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in sorted(names)
            if n.startswith(("user.", "trusted.", "security.capability"))}


def differences(a: dict[str, dict], b: dict[str, dict], limit: int = 20) -> list[str]:
    out = []
    for path in sorted(a.keys() | b.keys()):
        if path not in a:
            out.append(f"only in second: {path}")
        elif path not in b:
            out.append(f"only in first: {path}")
        elif a[path] != b[path]:
            keys = sorted(k for k in a[path].keys() | b[path].keys()
                          if a[path].get(k) != b[path].get(k))
            out.append(f"{path}: " + ", ".join(
                f"{k} {a[path].get(k)!r} != {b[path].get(k)!r}" for k in keys))
        if len(out) >= limit:
            break
    return out

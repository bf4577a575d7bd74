"""Mount layer tar files with lazyfs's FUSE layer, in a process of its own.

``python -m tests.support.fsrunner SPEC.json`` where the spec says::

    {"layers": [tar paths, bottom first], "index": path for the index,
     "image": a reference to mount instead of the layers (through ``open_image``),
     "mountpoint": dir, "reference": fsname, "digest": manifest digest,
     "layers_view": bool, "foreground": bool,
     "fail": [image paths whose reads raise a LazyfsError],
     "crash": [image paths whose reads raise something unexpected],
     "slow": [image paths whose reads hang], "extra": {root file name: text}}

Entries come from the stdlib ``tarfile`` (an independent parser), content is
``pread`` from the tar files: only ``lazyfs.fs.operations``, ``lazyfs.fs.daemon`` and the
real ``lazyfs.index.merged`` are under test. Without ``foreground`` it daemonises
through ``mount()`` and prints the ``Mounted`` record as JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import sys
import tarfile
from decimal import Decimal
from pathlib import Path

import trio

from lazyfs.formats.entry import Entry, EntryType
from lazyfs.errors import LayerFormatError, LazyfsError
from lazyfs.fs.operations import LazyOperations, image_operations, lowerdir
from lazyfs.index.merged import MergedIndex, Node
from lazyfs.fs.daemon import MountOptions, mount

_LOC = struct.Struct("<IQQ")
_TYPES = {
    tarfile.REGTYPE: EntryType.FILE, tarfile.AREGTYPE: EntryType.FILE,
    tarfile.CONTTYPE: EntryType.FILE, tarfile.DIRTYPE: EntryType.DIR,
    tarfile.SYMTYPE: EntryType.SYMLINK, tarfile.LNKTYPE: EntryType.HARDLINK,
    tarfile.CHRTYPE: EntryType.CHAR, tarfile.BLKTYPE: EntryType.BLOCK,
    tarfile.FIFOTYPE: EntryType.FIFO,
}
_XATTR = "SCHILY.xattr."


def tar_entries(path: str | Path, layer: int) -> list[Entry]:
    out = []
    with tarfile.open(path, encoding="utf-8", errors="surrogateescape") as tf:
        for ti in tf:
            kind = _TYPES[ti.type]
            mtime = Decimal(ti.pax_headers.get("mtime", ti.mtime))
            out.append(Entry(
                name=ti.name, type=kind, mode=ti.mode, uid=ti.uid, gid=ti.gid,
                uname=ti.uname, gname=ti.gname, size=ti.size if kind is EntryType.FILE else 0,
                mtime_ns=int(mtime * 10**9), linkname=ti.linkname,
                devmajor=ti.devmajor, devminor=ti.devminor,
                xattrs={k[len(_XATTR):]: v.encode("utf-8", "surrogateescape")
                        for k, v in ti.pax_headers.items() if k.startswith(_XATTR)},
                data=_LOC.pack(layer, ti.offset_data, ti.size) if kind is EntryType.FILE else b"",
            ))
    return out


def build_index(spec: dict) -> MergedIndex:
    layers = [tar_entries(p, i) for i, p in enumerate(spec["layers"])]
    names = spec.get("layer_names") or [f"{i}-layer" for i in range(len(layers))]
    return MergedIndex.build(Path(spec["index"]), layers, layer_names=names)


class TarContent:
    """The read callable: bytes straight from the layer tar files."""

    def __init__(self, layers: list[str], inos: dict[str, set[int]]):
        self._layers = layers
        self._fail = inos["fail"]
        self._crash = inos["crash"]
        self._slow = inos["slow"]

    async def __call__(self, node: Node, offset: int, size: int) -> bytes:
        if node.ino in self._fail:
            raise LayerFormatError(f"layer {node.layer}: injected failure reading inode {node.ino}")
        if node.ino in self._crash:
            raise ZeroDivisionError(f"injected crash reading inode {node.ino}")
        if node.ino in self._slow:
            await trio.sleep(60)
        layer, start, length = _LOC.unpack(node.data)
        size = max(0, min(size, length - offset))
        return await trio.to_thread.run_sync(_pread, self._layers[layer], start + offset, size)


def _pread(path: str, offset: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def operations(spec: dict):
    if "image" in spec:
        return image_operations(spec["image"], spec["mountpoint"],
                                layers=bool(spec.get("layers_view")))
    @contextlib.asynccontextmanager
    async def open_ops():
        index = await trio.to_thread.run_sync(build_index, spec)
        try:
            inos = {key: {index.resolve(p, follow=False).ino for p in spec.get(key, [])}
                    for key in ("fail", "crash", "slow")}
            read = TarContent(spec["layers"], inos)
            extra = {name: text.encode() for name, text in spec.get("extra", {}).items()}
            if spec.get("layers_view"):
                extra[".lowerdir"] = lowerdir(index, spec["mountpoint"]).encode()
            yield LazyOperations(index, read, layers=bool(spec.get("layers_view")),
                                 extra_files=extra)
        finally:
            index.close()

    return open_ops


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text())
    options = MountOptions(foreground=bool(spec.get("foreground")), debug=bool(spec.get("debug")),
                           **spec.get("options", {}))
    try:
        done = mount(operations(spec), spec["mountpoint"], fsname=spec.get("reference", "test"),
                     options=options, digest=spec.get("digest", ""))
    except LazyfsError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(json.dumps({"mountpoint": done.mountpoint, "pid": done.pid,
                      "log": str(done.log_path or ""), "state": str(done.state_path)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""Write OCI image layouts on disk from layer blobs, for ``oci:`` sources and
for oracles such as ``umoci unpack`` and ``skopeo copy oci:DIR:TAG ...``.

Layers are given in their blob form (plain tar, gzip or zstd; the media type
is taken from the magic bytes unless stated), and ``tar_from_entries`` makes
a tar from ``Entry`` objects so a test can feed the same layers to lazyfs
and to a real tool.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from lazyfs.formats.entry import Entry, EntryType
from lazyfs.testing.push import (OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_LAYER_TAR,
                                 OCI_LAYER_ZSTD, OCI_MANIFEST, sha256, uncompressed)

REF_NAME = "org.opencontainers.image.ref.name"


@dataclass
class Layout:
    root: Path
    tag: str
    manifest_digest: str
    manifest: bytes
    config: bytes
    layer_digests: list[str] = field(default_factory=list)

    @property
    def ref(self) -> str:
        """``DIR:TAG``, as umoci's ``--image`` and skopeo's ``oci:`` take it."""
        return f"{self.root}:{self.tag}"

    def blob_path(self, digest: str) -> Path:
        return blob_path(self.root, digest)


def blob_path(root: Path, digest: str) -> Path:
    algo, hexdigest = digest.split(":", 1)
    return Path(root) / "blobs" / algo / hexdigest


def write_blob(root: Path, data: bytes) -> str:
    digest = sha256(data)
    path = blob_path(root, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(data)
    return digest


def media_type_of(blob: bytes) -> str:
    if blob[:2] == b"\x1f\x8b":
        return OCI_LAYER_GZIP
    if blob[:4] == b"\x28\xb5\x2f\xfd":
        return OCI_LAYER_ZSTD
    return OCI_LAYER_TAR


def write_oci_layout(root: Path, layers: list[bytes], *, tag: str = "latest",
                     layer_media_types: list[str] | None = None,
                     layer_annotations: list[dict] | None = None,
                     config_extra: dict | None = None,
                     platform: tuple[str, str] = ("linux", "amd64")) -> Layout:
    """Add one image to the layout at ``root`` (created if missing) under ``tag``;
    an existing tag of the same name is replaced, other images are kept."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    config = {
        "architecture": platform[1], "os": platform[0],
        "created": "2024-01-02T03:04:05Z",
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(uncompressed(b)) for b in layers]},
        "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
    }
    config.update(config_extra or {})
    config_bytes = json.dumps(config, sort_keys=True).encode()
    descs = []
    for i, blob in enumerate(layers):
        desc = {"mediaType": layer_media_types[i] if layer_media_types else media_type_of(blob),
                "digest": write_blob(root, blob), "size": len(blob)}
        if layer_annotations and layer_annotations[i]:
            desc["annotations"] = layer_annotations[i]
        descs.append(desc)
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": write_blob(root, config_bytes),
                   "size": len(config_bytes)},
        "layers": descs,
    }, indent=2).encode()
    digest = write_blob(root, manifest)
    _set_tag(root, tag, {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest),
                         "platform": {"architecture": platform[1], "os": platform[0]}})
    return Layout(root, tag, digest, manifest, config_bytes, [d["digest"] for d in descs])


def _set_tag(root: Path, tag: str, desc: dict) -> None:
    index_path = root / "index.json"
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    if index_path.exists():
        index = json.loads(index_path.read_text())
    index["manifests"] = [m for m in index.get("manifests", [])
                          if m.get("annotations", {}).get(REF_NAME) != tag]
    index["manifests"].append(dict(desc, annotations={REF_NAME: tag}))
    index_path.write_text(json.dumps(index, indent=2))


_TAR_TYPES = {
    EntryType.FILE: tarfile.REGTYPE,
    EntryType.DIR: tarfile.DIRTYPE,
    EntryType.SYMLINK: tarfile.SYMTYPE,
    EntryType.HARDLINK: tarfile.LNKTYPE,
    EntryType.CHAR: tarfile.CHRTYPE,
    EntryType.BLOCK: tarfile.BLKTYPE,
    EntryType.FIFO: tarfile.FIFOTYPE,
}


def tar_from_entries(entries: Iterable[Entry],
                     content: Callable[[Entry], bytes] = lambda e: e.data) -> bytes:
    """A PAX tar holding ``entries`` in order, names exactly as given; a file's
    bytes are ``content(entry)`` (by default its ``data``), xattrs go in
    ``SCHILY.xattr.`` records (values must be UTF-8)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.type = _TAR_TYPES[e.type]
            ti.mode = e.mode
            ti.uid, ti.gid, ti.uname, ti.gname = e.uid, e.gid, e.uname, e.gname
            ti.mtime = e.mtime_ns // 1_000_000_000
            ti.linkname = e.linkname
            ti.devmajor, ti.devminor = e.devmajor, e.devminor
            ti.pax_headers = {f"SCHILY.xattr.{k}": v.decode() for k, v in e.xattrs.items()}
            if e.type is EntryType.FILE:
                data = content(e)
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            else:
                tf.addfile(ti)
    return buf.getvalue()

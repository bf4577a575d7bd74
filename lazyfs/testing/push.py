"""Push images, blobs, manifests, indexes and OCI layouts to a registry over
its HTTP API, byte for byte.

Layers are given in their blob form (plain tar, gzip or zstd); config,
descriptors and manifests are made here so each caller states only what is
special about its image.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import zstandard

from ..manifest import (DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_LIST, DOCKER_MANIFEST, OCI_CONFIG,
                         OCI_INDEX, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD, OCI_MANIFEST)

__all__ = [
    "DOCKER_CONFIG", "DOCKER_LAYER_GZIP", "DOCKER_LIST", "DOCKER_MANIFEST", "OCI_CONFIG",
    "OCI_INDEX", "OCI_LAYER_GZIP", "OCI_LAYER_TAR", "OCI_LAYER_ZSTD", "OCI_MANIFEST",
    "Pushed", "push_blob", "push_image", "push_index", "push_manifest", "push_oci_layout",
    "sha256", "uncompressed",
]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Pushed:
    repository: str
    tag: str | None
    digest: str
    manifest: bytes
    media_type: str
    config: bytes = b""
    layers: list[bytes] = field(default_factory=list)


def push_blob(client: httpx.Client, repo: str, data: bytes) -> str:
    digest = sha256(data)
    if client.head(f"/v2/{repo}/blobs/{digest}").status_code == 200:
        return digest
    r = client.post(f"/v2/{repo}/blobs/uploads/")
    r.raise_for_status()
    loc = r.headers["location"]
    sep = "&" if "?" in loc else "?"
    r = client.put(f"{loc}{sep}digest={digest}", content=data,
                   headers={"content-type": "application/octet-stream"})
    r.raise_for_status()
    return digest


def push_manifest(client: httpx.Client, repo: str, ref: str, body: bytes, media_type: str) -> str:
    r = client.put(f"/v2/{repo}/manifests/{ref}", content=body,
                   headers={"content-type": media_type})
    r.raise_for_status()
    return sha256(body)


def push_image(client: httpx.Client, repo: str, tag: str | None, layers: list[bytes], *,
               layer_media_type: str = OCI_LAYER_GZIP, oci: bool = True,
               diff_ids: list[str] | None = None, config_extra: dict | None = None,
               layer_annotations: list[dict] | None = None,
               platform: tuple[str, str] = ("linux", "amd64")) -> Pushed:
    """Push ``layers`` (already in their blob form) as one image."""
    if diff_ids is None:
        diff_ids = [sha256(uncompressed(b)) for b in layers]
    config = {
        "architecture": platform[1], "os": platform[0],
        "created": "2024-01-02T03:04:05Z",
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
    }
    config.update(config_extra or {})
    config_bytes = json.dumps(config, sort_keys=True).encode()
    push_blob(client, repo, config_bytes)
    descs = []
    for i, blob in enumerate(layers):
        push_blob(client, repo, blob)
        d = {"mediaType": layer_media_type, "digest": sha256(blob), "size": len(blob)}
        if layer_annotations and layer_annotations[i]:
            d["annotations"] = layer_annotations[i]
        descs.append(d)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
        "config": {"mediaType": OCI_CONFIG if oci else DOCKER_CONFIG,
                   "digest": sha256(config_bytes), "size": len(config_bytes)},
        "layers": descs,
    }
    body = json.dumps(manifest, indent=2).encode()
    mt = manifest["mediaType"]
    digest = push_manifest(client, repo, tag or sha256(body), body, mt)
    return Pushed(repo, tag, digest, body, mt, config_bytes, layers)


def push_index(client: httpx.Client, repo: str, tag: str, entries: list[tuple[Pushed, dict]],
               *, oci: bool = True) -> Pushed:
    """Push an index over already pushed manifests; each entry's dict is its platform."""
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX if oci else DOCKER_LIST,
        "manifests": [
            {"mediaType": p.media_type, "digest": p.digest, "size": len(p.manifest),
             "platform": plat} for p, plat in entries
        ],
    }
    body = json.dumps(index, indent=2).encode()
    digest = push_manifest(client, repo, tag, body, index["mediaType"])
    return Pushed(repo, tag, digest, body, index["mediaType"])


def uncompressed(blob: bytes) -> bytes:
    """A layer blob's tar, whatever its compression (told by its magic bytes)."""
    if blob[:2] == b"\x1f\x8b":
        return gzip.decompress(blob)
    if blob[:4] == b"\x28\xb5\x2f\xfd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    return blob


def push_oci_layout(client: httpx.Client, repo: str, layout: Path | str) -> str:
    """Push an OCI layout's single image as it is (blobs unchanged); returns ``repo:v1``."""
    layout = Path(layout)
    index = json.loads((layout / "index.json").read_text())
    desc = index["manifests"][0]

    def blob(digest: str) -> bytes:
        return (layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()
    raw = blob(desc["digest"])
    manifest = json.loads(raw)
    for d in [manifest["config"], *manifest["layers"]]:
        push_blob(client, repo, blob(d["digest"]))
    push_manifest(client, repo, "v1", raw, desc["mediaType"])
    return f"{repo}:v1"

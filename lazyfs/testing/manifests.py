"""Configs, manifests and indexes around built layers, and their push into a
``MemoryRegistry`` (``registry.push_image`` / ``registry.push_index``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .layers import Layer, sha256

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
CREATED = "2024-01-02T03:04:05Z"


@dataclass(frozen=True)
class BuiltImage:
    """An image's manifest and config bytes and its layers, not yet pushed."""

    manifest: bytes
    media_type: str
    config: bytes
    layers: tuple[Layer, ...]
    platform: dict = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    def push(self, registry, repo: str, tag: str | None) -> PushedImage:
        registry.add_blob(repo, self.config)
        for layer in self.layers:
            registry.add_blob(repo, layer.blob)
        registry.add_manifest(repo, self.manifest, self.media_type, tag)
        return PushedImage(registry.host, repo, tag, self.digest, self.manifest,
                           self.media_type, self.config, self.layers, self.platform)


@dataclass(frozen=True)
class PushedImage:
    host: str
    repository: str
    tag: str | None
    digest: str
    manifest: bytes
    media_type: str
    config: bytes = b""
    layers: tuple[Layer, ...] = ()
    platform: dict = field(default_factory=dict)

    @property
    def ref(self) -> str:
        """By tag when it has one, else by digest."""
        at = f":{self.tag}" if self.tag else f"@{self.digest}"
        return f"{self.host}/{self.repository}{at}"

    @property
    def by_digest(self) -> str:
        return f"{self.host}/{self.repository}@{self.digest}"

    def descriptor(self, platform: dict | None = None) -> dict:
        d = {"mediaType": self.media_type, "digest": self.digest, "size": len(self.manifest)}
        if platform or self.platform:
            d["platform"] = platform or self.platform
        return d


def config(diff_ids: list[str], platform: dict | None = None, **extra) -> bytes:
    """An image config for layers with these diff_ids; ``extra`` keys replace
    top-level fields (``config={"Env": [...]}``)."""
    platform = platform or {"os": "linux", "architecture": "amd64"}
    doc = {"architecture": platform["architecture"], "os": platform["os"],
           "created": CREATED,
           "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                      "Cmd": ["/bin/sh"]},
           "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
           "history": [{"created": CREATED, "created_by": f"layer {i}"}
                       for i in range(len(diff_ids))]}
    if platform.get("variant"):
        doc["variant"] = platform["variant"]
    doc.update(extra)
    return json.dumps(doc, sort_keys=True).encode()


def image(layers: list[Layer], *, oci: bool = True, platform: dict | None = None,
          annotations: dict[str, str] | None = None, subject: dict | None = None,
          config_extra: dict | None = None) -> BuiltImage:
    """The manifest and config of ``layers`` (OCI unless ``oci=False``: Docker
    schema 2). ``platform`` is ``{"os": ..., "architecture": ..., "variant": ...}``."""
    layers = tuple(layers)
    raw_config = config([layer.diff_id for layer in layers], platform, **(config_extra or {}))
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
           "config": {"mediaType": OCI_CONFIG if oci else DOCKER_CONFIG,
                      "digest": sha256(raw_config), "size": len(raw_config)},
           "layers": [layer.descriptor() for layer in layers]}
    if subject:
        doc["subject"] = subject
    if annotations:
        doc["annotations"] = annotations
    raw = json.dumps(doc, indent=3).encode()
    return BuiltImage(raw, doc["mediaType"], raw_config, layers,
                      platform or {"os": "linux", "architecture": "amd64"})


@dataclass(frozen=True)
class BuiltIndex:
    raw: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return sha256(self.raw)

    def push(self, registry, repo: str, tag: str | None) -> PushedImage:
        registry.add_manifest(repo, self.raw, self.media_type, tag)
        return PushedImage(registry.host, repo, tag, self.digest, self.raw, self.media_type)


def index(images: list, *, oci: bool = True,
          annotations: dict[str, str] | None = None) -> BuiltIndex:
    """An index (Docker manifest list unless ``oci``) over pushed manifests,
    each a ``PushedImage`` (listed with the platform it was built for) or a
    ``(PushedImage, platform)`` pair."""
    pairs = [item if isinstance(item, tuple) else (item, None) for item in images]
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX if oci else DOCKER_LIST,
           "manifests": [img.descriptor(platform) for img, platform in pairs]}
    if annotations:
        doc["annotations"] = annotations
    return BuiltIndex(json.dumps(doc, indent=3).encode(), doc["mediaType"])

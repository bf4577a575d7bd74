"""Manifests, indexes, configs and platform choice, as pure functions of bytes.

Nothing here does I/O: the registry client hands over the bytes, the
Content-Type and the digest it verified, and gets frozen values back. That
keeps every quirk of the formats (OCI manifests without ``mediaType``,
schema1, attestation entries in indexes) testable from a table. Bytes that
are not a valid document raise ``InvalidManifest`` wherever they came from
(a registry, a layout, an archive, the store).
"""

from __future__ import annotations

import json
import platform as _platform
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import (InvalidManifest, LayerFormatError, LazyfsError, NoMatchingPlatform,
                     UnsupportedMediaType, UsageError)
from .reference import Reference

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_ARTIFACT_MANIFEST = "application/vnd.oci.artifact.manifest.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_ND_TAR = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_ND_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_ND_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
SCHEMA1_TYPES = (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED)
CONFIG_TYPES = (OCI_CONFIG, DOCKER_CONFIG)
ACCEPT_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST, *SCHEMA1_TYPES)
"""Everything a manifest GET asks for; schema1 is asked for only to refuse it clearly."""

_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_HEX_LENGTHS = {"sha256": 64, "sha512": 128}


def valid_digest(digest: object) -> bool:
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        return False
    algorithm, _, encoded = digest.partition(":")
    length = _HEX_LENGTHS.get(algorithm)
    if length is None:
        return True
    return len(encoded) == length and all(c in "0123456789abcdef" for c in encoded)


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    features: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``os/arch[/variant]`` as ``--platform`` takes it. One word is read
        as containerd reads it: an operating system means this host's
        architecture on it, an architecture means Linux on it."""
        parts = text.strip().split("/")
        if not all(parts) or not 1 <= len(parts) <= 3:
            raise UsageError(f"invalid platform {text!r}: expected os/arch[/variant]")
        if len(parts) == 1:
            word = parts[0].lower()
            if word in _KNOWN_OS:
                host = cls.host()
                return cls(word, host.architecture, host.variant).normalized()
            if word not in _KNOWN_ARCH and word not in _ARCH_ALIASES:
                raise UsageError(f"invalid platform {text!r}: unknown operating system or "
                                 "architecture (expected os/arch[/variant])")
            parts = ["linux", *parts]
        return cls(*parts).normalized()

    @classmethod
    def host(cls) -> Platform:
        os_name = _platform.system().lower() or "linux"
        arch = _platform.machine().lower()
        return cls(os_name, arch, _MACHINE_VARIANTS.get(arch)).normalized()

    def normalized(self) -> Platform:
        """Aliases folded and default variants filled in, so that equal means compatible."""
        arch, variant = self.architecture.lower(), (self.variant or "").lower()
        arch = _ARCH_ALIASES.get(arch, arch)
        if variant and variant[0].isdigit():
            variant = "v" + variant
        if arch == "arm64":
            variant = "v8" if variant in ("", "v8.0") else variant
        elif arch == "arm":
            variant = variant or "v7"
        elif arch == "amd64" and variant == "v1":
            variant = ""
        return Platform(self.os.lower(), arch, variant or None, self.os_version, self.features)

    def matches(self, other: Platform) -> bool:
        """Whether an image built for ``other`` serves a request for ``self``."""
        a, b = self.normalized(), other.normalized()
        if (a.os, a.architecture, a.variant) != (b.os, b.architecture, b.variant):
            return False
        return a.os_version is None or a.os_version == b.os_version

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


_ARCH_ALIASES = {
    "x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm",
    "armel": "arm", "i386": "386", "i686": "386", "armv7l": "arm", "armv6l": "arm",
}
_KNOWN_OS = frozenset({"aix", "android", "darwin", "dragonfly", "freebsd", "hurd", "illumos",
                       "ios", "js", "linux", "nacl", "netbsd", "openbsd", "plan9", "solaris",
                       "wasip1", "windows", "zos"})
_KNOWN_ARCH = frozenset({"386", "amd64", "amd64p32", "arm", "armbe", "arm64", "arm64be",
                         "loong64", "mips", "mipsle", "mips64", "mips64le", "mips64p32",
                         "mips64p32le", "ppc", "ppc64", "ppc64le", "riscv", "riscv64", "s390",
                         "s390x", "sparc", "sparc64", "wasm"})
_MACHINE_VARIANTS = {"aarch64": "v8", "arm64": "v8", "armv7l": "v7", "armv6l": "v6",
                     "armhf": "v7", "armel": "v6"}


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    artifact_type: str | None = None


@dataclass(frozen=True)
class Manifest:
    media_type: str
    digest: str
    raw: bytes = field(repr=False)
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: dict[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None
    artifact_type: str | None = None


@dataclass(frozen=True)
class Index:
    media_type: str
    digest: str
    raw: bytes = field(repr=False)
    manifests: tuple[Descriptor, ...]
    annotations: dict[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None


@dataclass(frozen=True)
class ImageConfig:
    raw: bytes = field(repr=False)
    created: str | None = None
    architecture: str = ""
    os: str = ""
    variant: str | None = None
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    working_dir: str = ""
    user: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    diff_ids: tuple[str, ...] = ()
    history: tuple[dict[str, Any], ...] = ()

    @property
    def platform(self) -> Platform | None:
        if not self.os or not self.architecture:
            return None
        return Platform(self.os, self.architecture, self.variant)


@dataclass(frozen=True)
class ResolvedImage:
    """One image narrowed to one platform; the same shape whether it came from
    a registry, the store, a layout or an archive.

    ``ref`` is the reference as asked for, with the default tag filled in: it
    carries a digest only if the user wrote one, so it names the image the
    way the user did (records, ``inspect``). What it resolved to is
    ``digest``; ``pinned`` is the reference fixed to it."""

    ref: Reference
    index: Index | None
    manifest: Manifest
    config: ImageConfig
    platforms: tuple[Platform, ...] = ()
    """The platforms the image offers, as far as its source tells."""

    @property
    def digest(self) -> str:
        """The index's digest for a multi-platform image, else the manifest's."""
        return (self.index or self.manifest).digest

    @property
    def media_type(self) -> str:
        return (self.index or self.manifest).media_type

    @property
    def pinned(self) -> Reference:
        """``ref`` fixed to ``digest``; a local reference names its image alone."""
        return self.ref if self.ref.is_local else self.ref.with_digest(self.digest)


def with_default_tag(ref: Reference) -> Reference:
    """The reference an image is resolved and recorded under: ``latest`` when
    neither a tag nor a digest was given, as docker does."""
    if ref.tag is None and ref.digest is None:
        return ref.with_tag("latest")
    return ref


def parse_manifest(raw: bytes, content_type: str, digest: str) -> Manifest | Index:
    """``content_type`` is the response's; it decides only when the body names no type."""
    doc = json_object(raw, f"manifest {digest}")
    media_type = _media_type(doc, content_type.split(";")[0].strip().lower(), digest)
    if doc.get("schemaVersion", 2) != 2:
        raise InvalidManifest(
            f"manifest {digest}: schemaVersion {doc.get('schemaVersion')!r} is not 2")
    what = f"manifest {digest}"
    if media_type in INDEX_TYPES:
        entries = _list(doc, "manifests", what)
        return Index(media_type, digest, raw,
                     tuple(_descriptor(e, f"{what} entry {i}") for i, e in enumerate(entries)),
                     _strings(doc.get("annotations"), what), _subject(doc, what))
    layers = _list(doc, "layers", what)
    if "config" not in doc:
        raise InvalidManifest(f"{what}: missing 'config'")
    artifact_type = doc.get("artifactType")
    return Manifest(media_type, digest, raw, _descriptor(doc["config"], f"{what} config"),
                    tuple(_descriptor(d, f"{what} layer {i}") for i, d in enumerate(layers)),
                    _strings(doc.get("annotations"), what), _subject(doc, what),
                    artifact_type if isinstance(artifact_type, str) else None)


def _media_type(doc: dict, content_type: str, digest: str) -> str:
    body_type = doc.get("mediaType")
    if doc.get("schemaVersion") == 1 or body_type in SCHEMA1_TYPES or (
            not body_type and content_type in SCHEMA1_TYPES):
        raise UnsupportedMediaType(
            f"manifest {digest}: schema1 manifests are not supported; "
            "push the image again with a current client (Docker schema2 or OCI)")
    if body_type is not None and not isinstance(body_type, str):
        raise InvalidManifest(f"manifest {digest}: 'mediaType' is not a string")
    if body_type:
        if body_type not in MANIFEST_TYPES + INDEX_TYPES:
            raise UnsupportedMediaType(
                f"manifest {digest}: media type {body_type} is not supported")
        return body_type
    if content_type in (OCI_MANIFEST, OCI_INDEX):
        return content_type
    if "manifests" in doc:
        return OCI_INDEX
    if "config" in doc and "layers" in doc:
        return OCI_MANIFEST
    raise UnsupportedMediaType(
        f"manifest {digest}: neither an image manifest nor an index "
        f"(Content-Type {content_type or 'none'})")


def _descriptor(d: object, what: str) -> Descriptor:
    if not isinstance(d, dict):
        raise InvalidManifest(f"{what}: descriptor is not an object")
    media_type, digest, size = d.get("mediaType"), d.get("digest"), d.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise InvalidManifest(f"{what}: descriptor lacks 'mediaType'")
    if not valid_digest(digest):
        raise InvalidManifest(f"{what}: invalid digest {digest!r}")
    if type(size) is not int or size < 0:
        raise InvalidManifest(f"{what}: invalid size {size!r} for {digest}")
    urls = d.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise InvalidManifest(f"{what}: 'urls' is not a list of strings")
    artifact_type = d.get("artifactType")
    return Descriptor(media_type, digest, size, _strings(d.get("annotations"), what),
                      _platform_of(d.get("platform"), what), tuple(urls),
                      artifact_type if isinstance(artifact_type, str) else None)


def _platform_of(p: object, what: str) -> Platform | None:
    if p is None:
        return None
    if not isinstance(p, dict) or not isinstance(p.get("os"), str) \
            or not isinstance(p.get("architecture"), str):
        raise InvalidManifest(f"{what}: platform needs 'os' and 'architecture'")
    features = p.get("features") or ()
    return Platform(p["os"], p["architecture"], p.get("variant") or None,
                    p.get("os.version") or None, tuple(str(f) for f in features))


def _subject(doc: dict, what: str) -> Descriptor | None:
    return _descriptor(doc["subject"], f"{what} subject") if doc.get("subject") else None


def json_object(raw: bytes, what: str, error: type[LazyfsError] = InvalidManifest) -> dict:
    """``raw`` as a JSON object, or ``error`` saying why not: hostile bytes
    (not JSON, nested past the recursion limit, another type) end in one
    error of the caller's kind, never in a traceback."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise error(f"{what}: not valid JSON ({e})") from None
    except RecursionError:
        raise error(f"{what}: JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise error(f"{what}: not a JSON object")
    return doc


def _list(doc: dict, key: str, what: str) -> list:
    value = doc.get(key)
    if not isinstance(value, list):
        raise InvalidManifest(f"{what}: missing or invalid '{key}'")
    return value


def _strings(value: object, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidManifest(f"{what}: annotations must map strings to strings")
    return dict(value)


def image_platforms(index: Index) -> list[Platform]:
    """The runnable platforms an index offers, without attestation entries."""
    seen: list[Platform] = []
    for desc in _runnable(index):
        if desc.platform is not None and desc.platform.normalized() not in seen:
            seen.append(desc.platform.normalized())
    return seen


def _runnable(index: Index) -> list[Descriptor]:
    out = []
    for desc in index.manifests:
        p = desc.platform
        if p is not None and (p.os, p.architecture) == ("unknown", "unknown"):
            continue
        if desc.annotations.get("vnd.docker.reference.type") == "attestation-manifest":
            continue
        out.append(desc)
    return out


def select_platform(index: Index, want: Platform | None = None) -> Descriptor:
    """The first entry whose platform serves ``want`` (the host's by default).

    An entry without a platform is a last resort, as containerd treats it.
    """
    want = want or Platform.host()
    candidates = _runnable(index)
    for desc in candidates:
        if desc.platform is not None and want.matches(desc.platform):
            return desc
    for desc in candidates:
        if desc.platform is None and desc.media_type in MANIFEST_TYPES:
            return desc
    available = ", ".join(str(p) for p in image_platforms(index)) or "none"
    raise NoMatchingPlatform(
        f"no matching manifest for {want} in the manifest list entries (available: {available})")


def parse_config(raw: bytes, digest: str = "") -> ImageConfig:
    what = f"image config {digest}".rstrip()
    doc = json_object(raw, what)
    cfg = _or(doc.get("config"), {})
    rootfs = _or(doc.get("rootfs"), {})
    if not isinstance(cfg, dict) or not isinstance(rootfs, dict):
        raise InvalidManifest(f"{what}: 'config' and 'rootfs' must be objects")
    diff_ids = _or(rootfs.get("diff_ids"), [])
    if not isinstance(diff_ids, list) or not all(valid_digest(d) for d in diff_ids):
        raise InvalidManifest(f"{what}: invalid rootfs.diff_ids")
    history = _or(doc.get("history"), [])
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise InvalidManifest(f"{what}: invalid history")
    return ImageConfig(
        raw=raw,
        created=_opt_str(doc.get("created")),
        architecture=_opt_str(doc.get("architecture")) or "",
        os=_opt_str(doc.get("os")) or "",
        variant=_opt_str(doc.get("variant")),
        env=_str_tuple(cfg.get("Env"), what) or (),
        entrypoint=_str_tuple(cfg.get("Entrypoint"), what),
        cmd=_str_tuple(cfg.get("Cmd"), what),
        working_dir=_opt_str(cfg.get("WorkingDir")) or "",
        user=_opt_str(cfg.get("User")) or "",
        labels=_strings(cfg.get("Labels"), what),
        diff_ids=tuple(diff_ids),
        history=tuple(history),
    )


def _or(value: object, default: object) -> object:
    return default if value is None else value


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _str_tuple(value: object, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidManifest(f"{what}: expected a list of strings, got {value!r}")
    return tuple(value)


def check_config(manifest: Manifest, config: ImageConfig) -> None:
    """Layers and diff_ids pair up one to one; a mismatch means a broken image."""
    if len(config.diff_ids) != len(manifest.layers):
        raise LayerFormatError(
            f"image {manifest.digest}: config lists {len(config.diff_ids)} diff_ids "
            f"for {len(manifest.layers)} layers")

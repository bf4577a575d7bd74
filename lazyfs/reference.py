"""Image references: what the user typed, turned into what a registry is asked for.

Docker references follow the grammar and the normalisation of
distribution/reference (``ParseNormalizedNamed``), so ``ubuntu`` means
``docker.io/library/ubuntu:latest`` here exactly as it does for ``docker pull``::

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ registry "/" ] path
    registry   := host [ ":" port ]      host: DNS-ish name, IPv4, or [IPv6]
    path       := component ( "/" component )*    at most 255 characters
    component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest     := algorithm ":" hex

The first path element is a registry only if it contains ``.`` or ``:``, is
``localhost``, or has upper-case letters; otherwise the name lives on Docker
Hub, where single-element names get the ``library/`` namespace.
``sha256``/``sha384``/``sha512`` digests must have the exact lower-case length;
other algorithms are accepted as long as they fit the grammar, so the registry
gets to decide about them.

Two local sources need no registry:

* ``oci:PATH[:TAG]`` -- an OCI image layout directory; TAG selects the manifest
  by its ``org.opencontainers.image.ref.name`` annotation. Everything after the
  *last* ``:`` is the tag, so a PATH may contain ``:`` only if a TAG follows it.
* ``docker-archive:PATH`` -- a ``docker save`` tarball; PATH is everything after
  the prefix, ``:`` included.

Those prefixes win over the Docker meaning (a Hub image called ``oci`` is
written ``docker.io/library/oci:TAG``); ``docker://`` may prefix a Docker
reference, as skopeo spells it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from .errors import InvalidReference

__all__ = ["Reference", "parse_reference", "parse_digest", "is_digest"]

DOCKER = "docker"
OCI = "oci"
DOCKER_ARCHIVE = "docker-archive"

DEFAULT_REGISTRY = "docker.io"
LEGACY_REGISTRY = "index.docker.io"
OFFICIAL_NAMESPACE = "library/"
DEFAULT_TAG = "latest"
MAX_PATH_LENGTH = 255

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[[a-fA-F0-9:]+\]"
_DOMAIN = re.compile(rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?")
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"([A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*):([0-9a-fA-F]{32,})")
_IDENTIFIER = re.compile(r"[a-f0-9]{64}")
_KNOWN_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
_LOCAL_PREFIXES = (f"{OCI}:", f"{DOCKER_ARCHIVE}:")
_USERINFO = re.compile(r"^((?:[a-zA-Z][a-zA-Z0-9+.-]*://)?)[^/]*@(?=[^@]*/)")


@dataclass(frozen=True, kw_only=True)
class Reference:
    """One image, as lazyfs resolves it; build it with :func:`parse_reference`.

    For the local transports ``registry`` and ``repository`` are empty and
    ``path`` names the layout directory or tarball.
    """

    transport: str = DOCKER
    registry: str = ""
    repository: str = ""
    tag: str | None = None
    digest: str | None = None
    path: str | None = None

    @property
    def is_local(self) -> bool:
        return self.transport != DOCKER

    @property
    def name(self) -> str:
        if self.is_local:
            return self.path or ""
        return f"{self.registry}/{self.repository}"

    @property
    def identifier(self) -> str:
        """What ``/v2/<repository>/manifests/<identifier>`` is asked for: a digest pins harder than a tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def familiar(self) -> str:
        """The short form ``docker images`` shows (``ubuntu:latest``, ``user/app:1``)."""
        if self.is_local:
            return str(self)
        short = _familiar_name(self.registry, self.repository) + self._suffix()
        return str(self) if short.startswith(_LOCAL_PREFIXES) else short

    def with_tag(self, tag: str) -> Reference:
        if self.transport == DOCKER_ARCHIVE:
            raise InvalidReference(f"reference {_shown(str(self))} cannot carry a tag")
        if not _TAG.fullmatch(tag):
            raise InvalidReference(f"invalid tag {_shown(tag)}")
        return dataclasses.replace(self, tag=tag)

    def with_digest(self, digest: str) -> Reference:
        if self.is_local:
            raise InvalidReference(f"reference {_shown(str(self))} cannot carry a digest")
        return dataclasses.replace(self, digest=parse_digest(digest))

    def __str__(self) -> str:
        if self.transport == OCI:
            return f"oci:{self.path}" + (f":{self.tag}" if self.tag else "")
        if self.transport == DOCKER_ARCHIVE:
            return f"docker-archive:{self.path}"
        return self.name + self._suffix()

    def _suffix(self) -> str:
        if self.tag is None and self.digest is None:
            return f":{DEFAULT_TAG}"
        return (f":{self.tag}" if self.tag is not None else "") + (f"@{self.digest}" if self.digest else "")


def parse_reference(text: str) -> Reference:
    """Parse what a user typed; every failure is an ``InvalidReference`` naming the bad part."""
    if not isinstance(text, str) or not text:
        raise InvalidReference("empty reference")
    if text.startswith(f"{OCI}:"):
        return _parse_oci(text)
    if text.startswith(f"{DOCKER_ARCHIVE}:"):
        return _parse_docker_archive(text)
    if text.startswith("docker://"):
        if text == "docker://":
            raise InvalidReference("empty reference")
        return _parse_docker(text[len("docker://"):], text)
    return _parse_docker(text, text)


def parse_digest(text: str) -> str:
    """Validate ``algorithm:hex``; known algorithms must be lower-case hex of their exact length."""
    match = _DIGEST.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidReference(f"invalid digest {_shown(text)}: expected ALGORITHM:HEX with at least 32 hex digits")
    algorithm, hex_part = match.groups()
    expected = _KNOWN_HEX_LENGTHS.get(algorithm)
    if expected is not None and (len(hex_part) != expected or hex_part != hex_part.lower()):
        raise InvalidReference(f"invalid digest {_shown(text)}: {algorithm} needs {expected} lower-case hex digits")
    return text


def is_digest(text: str) -> bool:
    try:
        parse_digest(text)
    except InvalidReference:
        return False
    return True


def _parse_docker(text: str, original: str) -> Reference:
    shown = _shown(original)
    if _IDENTIFIER.fullmatch(text):
        raise InvalidReference(f"invalid reference {shown}: cannot specify 64-byte hexadecimal strings")
    registry, remainder = _split_registry(text)
    rest, _, digest = remainder.partition("@")
    path, colon, tag = rest.partition(":")
    if path.lower() != path:
        raise InvalidReference(f"invalid reference {shown}: repository name must be lowercase")
    if not _DOMAIN.fullmatch(registry):
        if "@" in registry:
            registry = "***@" + registry.rpartition("@")[2]
        hint = " (a reference is not a URL)" if "://" in text else ""
        raise InvalidReference(f"invalid reference {shown}: invalid registry {_shown(registry)}{hint}")
    if not _PATH.fullmatch(path):
        raise InvalidReference(
            f"invalid reference {shown}: invalid repository name {_shown(path)} "
            "(lower-case letters and digits, separated by '.', '_', '__', '-' or '/')"
        )
    if len(path) > MAX_PATH_LENGTH:
        raise InvalidReference(f"invalid reference {shown}: name too long ({len(path)} > {MAX_PATH_LENGTH} characters)")
    if colon and not _TAG.fullmatch(tag):
        raise InvalidReference(f"invalid tag {_shown(tag)} in reference {shown}")
    if "@" in remainder:
        _check_digest_in(digest, shown)
    return Reference(
        registry=registry,
        repository=path,
        tag=tag if colon else None,
        digest=digest if "@" in remainder else None,
    )


def _split_registry(text: str) -> tuple[str, str]:
    """Tell a registry from a Docker Hub namespace the way docker does: by its look alone."""
    first, slash, rest = text.partition("/")
    if not slash:
        return DEFAULT_REGISTRY, OFFICIAL_NAMESPACE + text
    if first == "localhost" or any(c in first for c in ".:") or first.lower() != first:
        registry, remainder = first, rest
    else:
        registry, remainder = DEFAULT_REGISTRY, text
    if registry == LEGACY_REGISTRY:
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in remainder.partition(":")[0].partition("@")[0]:
        remainder = OFFICIAL_NAMESPACE + remainder
    return registry, remainder


def _check_digest_in(digest: str, shown: str) -> None:
    try:
        parse_digest(digest)
    except InvalidReference as e:
        raise InvalidReference(f"{e} in reference {shown}") from None


def _parse_oci(text: str) -> Reference:
    body = text[len(OCI) + 1:]
    path, colon, tag = body.rpartition(":")
    if not colon:
        path, tag = body, None
    elif not _TAG.fullmatch(tag):
        raise InvalidReference(
            f"invalid tag {_shown(tag)} in reference {_shown(text)} (a path containing ':' needs a tag after it)"
        )
    if not path:
        raise InvalidReference(f"invalid reference {_shown(text)}: oci: needs a layout directory path")
    return Reference(transport=OCI, path=path, tag=tag)


def _parse_docker_archive(text: str) -> Reference:
    path = text[len(DOCKER_ARCHIVE) + 1:]
    if not path:
        raise InvalidReference(f"invalid reference {_shown(text)}: docker-archive: needs a tarball path")
    return Reference(transport=DOCKER_ARCHIVE, path=path)


def _familiar_name(registry: str, repository: str) -> str:
    if registry != DEFAULT_REGISTRY:
        return f"{registry}/{repository}"
    short = repository.removeprefix(OFFICIAL_NAMESPACE)
    return short if short != repository and "/" not in short else repository


def _shown(text: object) -> str:
    """Quote user input for a message: bounded, and without any ``user:password@`` typed by mistake."""
    if not isinstance(text, str):
        return repr(text)
    text = _USERINFO.sub(r"\1***@", text)
    if len(text) > 200:
        text = text[:200] + "..."
    return '"' + text.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'

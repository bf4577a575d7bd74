"""How a path under a store-mode mount names an image.

A reference is written as path components exactly as typed:
``ROOT/127.0.0.1:5000/debian-py:estargz/etc/os-release``,
``ROOT/ubuntu:24.04/``, ``ROOT/library/debian@sha256:…/``. Walking down,
each component either extends a reference still being written (a directory
that lists the images already opened below it) or ends one: the component
that carries a tag (``:``) or a digest (``@``) ends the reference, and what
follows is inside the image.

The first component is the one exception: it is a registry, never the end
of a reference, when docker would take it as one and it is not itself a
complete name with a tag: ``localhost`` or ``localhost:PORT``, or a host
whose name (before any ``:``) has a dot or an upper-case letter, or an
``[IPv6]`` address. So ``127.0.0.1:5000`` and ``ghcr.io`` are registries,
``ubuntu:24.04`` is ``docker.io/library/ubuntu:24.04``. A registry without a
dot written with a port (``myhost:5000``) reads as an image with a numeric
tag; write its address or a dotted name instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidReference
from ..reference import Reference, parse_reference

FSNAME = "lazyfs-store"
"""The source of a store-mode mount in /proc/mounts."""
LAYERS_DIR = ".layers"
"""The root's directory of per-layer views, named by layer digest."""


@dataclass(frozen=True)
class Step:
    """What a path component led to: a longer prefix, or a whole reference."""

    parts: tuple[str, ...]
    reference: Reference | None = None

    @property
    def text(self) -> str:
        return "/".join(self.parts)


def is_registry(component: str) -> bool:
    if "@" in component:
        return False
    host = component.partition(":")[0]
    if host == "localhost":
        return True
    return host.startswith("[") or "." in host or host.lower() != host


def step(parts: tuple[str, ...], name: str) -> Step:
    """Where ``name`` below the prefix ``parts`` leads; ``InvalidReference``
    when it cannot be part of any reference."""
    if not name or name in (".", "..") or name.startswith("."):
        raise InvalidReference(f"invalid reference component {name!r}")
    longer = (*parts, name)
    if not parts and is_registry(name):
        parse_reference(name + "/x")  # a host docker would accept, or ENOENT now
        return Step(longer)
    if ":" in name or "@" in name:
        ref = parse_reference("/".join(longer))
        if ref.transport != "docker":
            raise InvalidReference(f"{'/'.join(longer)!r}: only registry references are served")
        return Step(longer, ref)
    # Checked now, so that a prefix that can never become a reference is ENOENT
    # at once rather than an empty directory.
    parse_reference("/".join(longer) + ":latest")
    return Step(longer)

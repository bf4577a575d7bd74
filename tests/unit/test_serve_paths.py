"""How a path under a store-mode mount names an image, and which command
lines the CLI sends to a service."""

from __future__ import annotations

import pytest

from lazyfs.cli.client import servable
from lazyfs.errors import InvalidReference
from lazyfs.serve.paths import step


def _walk(*components: str):
    parts: tuple[str, ...] = ()
    for name in components:
        where = step(parts, name)
        parts = where.parts
    return where


@pytest.mark.parametrize("components, expected", [
    (("127.0.0.1:5000", "debian-py:estargz"), "127.0.0.1:5000/debian-py:estargz"),
    (("ubuntu:24.04",), "docker.io/library/ubuntu:24.04"),
    (("library", "debian:12"), "docker.io/library/debian:12"),
    (("localhost", "a", "b:v1"), "localhost/a/b:v1"),
    (("localhost:5000", "a@sha256:" + "a" * 64), "localhost:5000/a@sha256:" + "a" * 64),
    (("ghcr.io", "org", "app:1.0"), "ghcr.io/org/app:1.0"),
    (("name@sha256:" + "b" * 64,), "docker.io/library/name@sha256:" + "b" * 64),
])
def test_a_component_with_a_tag_or_digest_ends_the_reference(components, expected):
    where = _walk(*components)
    assert str(where.reference) == expected
    assert where.text == "/".join(components)


@pytest.mark.parametrize("components", [("127.0.0.1:5000",), ("ghcr.io", "org"), ("library",)])
def test_a_component_without_tag_or_digest_is_a_prefix(components):
    assert _walk(*components).reference is None


@pytest.mark.parametrize("components", [
    ("Bad::",), ("127.0.0.1:5000", "UPPER:v1"), ("x", "bad tag:v 1"), ("a", ".hidden"),
    ("oci:dir:tag",), ("127.0.0.1:5000", "a@sha256:short"), ("no_such:",),
])
def test_what_cannot_be_part_of_a_reference_is_refused(components):
    with pytest.raises(InvalidReference):
        _walk(*components)


@pytest.mark.parametrize("argv, expected", [
    (["cat", "REF", "/etc/os-release"], True),
    (["ls", "-l", "REF"], True),
    (["export", "REF", "-"], True),
    (["mount", "REF", "/mnt"], True),
    (["mount", "--alone", "REF", "/mnt"], False),
    (["umount", "/mnt"], False),
    (["--cache-dir", "/x", "cat", "REF", "/f"], False),
    (["cat", "--platform=linux/arm64", "REF", "/f"], False),
    (["cat", "--help"], False),
    ([], False),
])
def test_which_command_lines_are_sent_to_a_service(argv, expected):
    assert servable(argv) is expected

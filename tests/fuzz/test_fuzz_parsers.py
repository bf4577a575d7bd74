"""Untrusted text and JSON: references, manifests, indexes and configs.

Whatever comes in, the parsers answer with a value or a ``LazyfsError``
(never ``KeyError``, ``TypeError``, ``RecursionError`` ...), and a reference
that parses prints back to text that parses to the same reference.
"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from lazyfs.errors import LazyfsError
from lazyfs.manifest import parse_config, parse_manifest
from lazyfs.reference import parse_reference
from tests.fuzz.budget import fuzz

DIGEST = "sha256:" + "ab" * 32
HEX = "0123456789abcdef"

ref_alphabet = st.sampled_from(list("abcz09._-/:@") + ["sha256:", "a" * 64, "localhost",
                                                      "127.0.0.1:5000", "oci:", "docker-archive:",
                                                      "docker://", "..", "//", "UPPER", "é", "\0"])


@given(st.one_of(st.text(max_size=300), st.lists(ref_alphabet, max_size=30).map("".join)))
@fuzz(400)
def test_references_parse_or_raise_lazyfs_errors_and_round_trip(text):
    try:
        ref = parse_reference(text)
    except LazyfsError:
        return
    text = str(ref)
    assert str(parse_reference(text)) == text


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                         st.text(max_size=20),
                         st.sampled_from([DIGEST, "sha256:zz", "application/vnd.oci.image.layer.v1.tar",
                                          "application/vnd.oci.image.manifest.v1+json",
                                          "application/vnd.oci.image.index.v1+json", "linux", "amd64",
                                          "layers", -1, 2**70]))
KEYS = ["schemaVersion", "mediaType", "config", "layers", "manifests", "digest", "size",
        "annotations", "platform", "os", "architecture", "variant", "rootfs", "diff_ids",
        "type", "history", "created", "Env", "Cmd", "User", "subject", "artifactType", "urls",
        "fsLayers", "os.version", "os.features"]
json_docs = st.recursive(json_scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), kids,
                                                max_size=6)), max_leaves=40)


def manifest_like():
    desc = st.fixed_dictionaries({"mediaType": json_scalars, "digest": json_scalars,
                                  "size": json_scalars}, optional={"platform": json_docs,
                                                                   "annotations": json_docs})
    return st.fixed_dictionaries(
        {"schemaVersion": st.sampled_from([2, 1, "2", None])},
        optional={"mediaType": json_scalars, "config": desc | json_docs,
                  "layers": st.lists(desc, max_size=3) | json_docs,
                  "manifests": st.lists(desc, max_size=3) | json_docs})


bodies = st.one_of(st.binary(max_size=200), json_docs.map(lambda d: json.dumps(d).encode()),
                   manifest_like().map(lambda d: json.dumps(d).encode()),
                   st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n))
content_types = st.sampled_from(["", "application/json", "application/vnd.oci.image.manifest.v1+json",
                                 "application/vnd.oci.image.index.v1+json",
                                 "application/vnd.docker.distribution.manifest.v2+json",
                                 "application/vnd.docker.distribution.manifest.list.v2+json",
                                 "application/vnd.docker.distribution.manifest.v1+prettyjws",
                                 "text/html; charset=utf-8"])


@given(bodies, content_types)
@fuzz(400)
def test_manifests_parse_or_raise_lazyfs_errors(raw, content_type):
    try:
        parse_manifest(raw, content_type, DIGEST)
    except LazyfsError:
        pass


def config_like():
    return st.fixed_dictionaries({}, optional={
        "architecture": json_scalars, "os": json_scalars, "variant": json_scalars,
        "config": json_docs, "created": json_scalars,
        "rootfs": st.fixed_dictionaries({"type": json_scalars},
                                        optional={"diff_ids": st.lists(json_scalars, max_size=3)})
        | json_docs,
        "history": json_docs})


@given(st.one_of(bodies, config_like().map(lambda d: json.dumps(d).encode())))
@fuzz(400)
def test_configs_parse_or_raise_lazyfs_errors(raw):
    try:
        parse_config(raw, DIGEST)
    except LazyfsError:
        pass

import json

import pytest

from lazyfs.errors import (InvalidManifest, LayerFormatError, NoMatchingPlatform,
                           UnsupportedMediaType, UsageError)
from lazyfs.manifest import (DOCKER_LIST, DOCKER_MANIFEST, DOCKER_SCHEMA1_SIGNED,
                             OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST, Descriptor,
                             Index, Manifest, Platform, check_config, image_platforms,
                             parse_config, parse_manifest, select_platform, valid_digest)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


def desc(digest=D1, size=10, media_type=OCI_LAYER_GZIP, **extra):
    return {"mediaType": media_type, "digest": digest, "size": size, **extra}


def manifest_doc(media_type=OCI_MANIFEST, layers=None, **extra):
    doc = {"schemaVersion": 2, "config": desc(D3, 5, OCI_CONFIG),
           "layers": [desc()] if layers is None else layers, **extra}
    if media_type:
        doc["mediaType"] = media_type
    return doc


def index_doc(platforms, media_type=OCI_INDEX):
    entries = []
    for i, p in enumerate(platforms):
        d = desc("sha256:" + f"{i:x}" * 64, 100 + i, OCI_MANIFEST)
        if p is not None:
            d["platform"] = p
        entries.append(d)
    doc = {"schemaVersion": 2, "manifests": entries}
    if media_type:
        doc["mediaType"] = media_type
    return doc


def parse(doc, content_type="", digest=D2):
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return parse_manifest(raw, content_type, digest)


@pytest.mark.parametrize("doc, content_type, kind, media_type", [
    (manifest_doc(), OCI_MANIFEST, Manifest, OCI_MANIFEST),
    (manifest_doc(None), OCI_MANIFEST, Manifest, OCI_MANIFEST),
    (manifest_doc(None), "application/octet-stream", Manifest, OCI_MANIFEST),
    (manifest_doc(None), "", Manifest, OCI_MANIFEST),
    (manifest_doc(DOCKER_MANIFEST), "application/json; charset=utf-8", Manifest, DOCKER_MANIFEST),
    (index_doc([]), OCI_INDEX, Index, OCI_INDEX),
    (index_doc([], None), f"{OCI_INDEX}; charset=utf-8", Index, OCI_INDEX),
    (index_doc([], None), "text/plain", Index, OCI_INDEX),
    (index_doc([], DOCKER_LIST), DOCKER_LIST, Index, DOCKER_LIST),
])
def test_parse_manifest_kinds(doc, content_type, kind, media_type):
    m = parse(doc, content_type)
    assert type(m) is kind and m.media_type == media_type and m.digest == D2


def test_parse_manifest_fields():
    doc = manifest_doc(layers=[desc(D1, 7, annotations={"a": "b"}, urls=["http://x/y"])],
                       annotations={"org.x": "y"}, subject=desc(D2, 3, OCI_MANIFEST),
                       artifactType="application/x-test")
    m = parse(doc)
    assert m.config == Descriptor(OCI_CONFIG, D3, 5)
    assert m.layers == (Descriptor(OCI_LAYER_GZIP, D1, 7, {"a": "b"}, None, ("http://x/y",)),)
    assert m.annotations == {"org.x": "y"}
    assert m.subject == Descriptor(OCI_MANIFEST, D2, 3)
    assert m.artifact_type == "application/x-test"
    assert m.raw == json.dumps(doc).encode()


@pytest.mark.parametrize("doc, content_type", [
    ({"schemaVersion": 1, "name": "x", "fsLayers": []}, ""),
    ({"schemaVersion": 1, "name": "x", "fsLayers": []}, DOCKER_SCHEMA1_SIGNED),
    ({"name": "x", "fsLayers": []}, DOCKER_SCHEMA1_SIGNED),
    (manifest_doc("application/vnd.docker.distribution.manifest.v1+json"), ""),
])
def test_schema1_is_refused_clearly(doc, content_type):
    with pytest.raises(UnsupportedMediaType, match="schema1 manifests are not supported; "):
        parse(doc, content_type)


@pytest.mark.parametrize("doc, message", [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (manifest_doc(layers="x"), "missing or invalid 'layers'"),
    ({k: v for k, v in manifest_doc().items() if k != "config"}, "missing 'config'"),
    (manifest_doc(layers=[desc("sha256:abc")]), "invalid digest 'sha256:abc'"),
    (manifest_doc(layers=[desc("sha256:" + "A" * 64)]), "invalid digest"),
    (manifest_doc(layers=[desc("md5")]), "invalid digest"),
    (manifest_doc(layers=[desc(size=-1)]), "invalid size -1"),
    (manifest_doc(layers=[desc(size="10")]), "invalid size '10'"),
    (manifest_doc(layers=[desc(size=True)]), "invalid size True"),
    (manifest_doc(layers=[{"digest": D1, "size": 1}]), "lacks 'mediaType'"),
    (manifest_doc(layers=["x"]), "not an object"),
    (manifest_doc(annotations={"a": 1}), "annotations must map strings"),
    (manifest_doc(schemaVersion=3), "schemaVersion 3 is not 2"),
    (index_doc([{"os": "linux"}]), "platform needs 'os' and 'architecture'"),
    ({"schemaVersion": 2, "mediaType": OCI_INDEX}, "missing or invalid 'manifests'"),
])
def test_malformed_manifest_names_the_digest(doc, message):
    with pytest.raises(InvalidManifest, match=message) as e:
        parse(doc)
    assert str(e.value).startswith(f"manifest {D2}")


@pytest.mark.parametrize("doc, content_type", [
    ({"schemaVersion": 2, "foo": 1}, "application/json"),
    (manifest_doc("application/vnd.example+json"), ""),
])
def test_unknown_manifest_kinds_are_unsupported(doc, content_type):
    with pytest.raises(UnsupportedMediaType, match=D2):
        parse(doc, content_type)


@pytest.mark.parametrize("digest, ok", [
    (D1, True), ("sha512:" + "a" * 128, True), ("sha256:" + "a" * 63, False),
    ("sha256:" + "g" * 64, False), ("blake3:abcDEF=", True), ("", False), (None, False),
    ("sha256", False), ("SHA256:" + "a" * 64, False),
])
def test_valid_digest(digest, ok):
    assert valid_digest(digest) is ok


@pytest.mark.parametrize("text, expected", [
    ("linux/amd64", Platform("linux", "amd64")),
    ("linux/x86_64", Platform("linux", "amd64")),
    ("linux/arm64", Platform("linux", "arm64", "v8")),
    ("linux/aarch64", Platform("linux", "arm64", "v8")),
    ("linux/arm64/8", Platform("linux", "arm64", "v8")),
    ("linux/arm", Platform("linux", "arm", "v7")),
    ("linux/arm/v6", Platform("linux", "arm", "v6")),
    ("linux/armhf", Platform("linux", "arm", "v7")),
    ("Linux/S390X", Platform("linux", "s390x")),
    ("arm64", Platform("linux", "arm64", "v8")),
    ("windows/amd64", Platform("windows", "amd64")),
])
def test_platform_parse(text, expected):
    assert Platform.parse(text) == expected


@pytest.mark.parametrize("text", ["", "linux/", "/amd64", "a/b/c/d", "nonsense"])
def test_platform_parse_rejects(text):
    with pytest.raises(UsageError, match="invalid platform"):
        Platform.parse(text)


def test_one_word_naming_an_os_means_this_hosts_architecture_on_it():
    host = Platform.host()
    assert Platform.parse("linux") == host
    assert Platform.parse("Windows") == Platform("windows", host.architecture, host.variant)
    assert Platform.parse("s390x") == Platform("linux", "s390x")


@pytest.mark.parametrize("machine, expected", [
    ("x86_64", "linux/amd64"), ("aarch64", "linux/arm64/v8"), ("armv7l", "linux/arm/v7"),
    ("armv6l", "linux/arm/v6"), ("s390x", "linux/s390x"), ("i686", "linux/386"),
])
def test_platform_host(monkeypatch, machine, expected):
    import platform
    monkeypatch.setattr(platform, "machine", lambda: machine)
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    assert str(Platform.host()) == expected


@pytest.mark.parametrize("want, have, ok", [
    ("linux/arm64", Platform("linux", "arm64"), True),
    ("linux/arm64", Platform("linux", "arm64", "v8"), True),
    ("linux/arm64/v8", Platform("linux", "arm64"), True),
    ("linux/arm64", Platform("linux", "arm64", "v9"), False),
    ("linux/arm", Platform("linux", "arm", "v7"), True),
    ("linux/arm", Platform("linux", "arm", "v6"), False),
    ("linux/amd64", Platform("linux", "amd64"), True),
    ("linux/amd64", Platform("linux", "x86_64"), True),
    ("linux/amd64", Platform("windows", "amd64", os_version="10.0"), False),
    ("linux/amd64", Platform("linux", "arm64"), False),
])
def test_platform_matches(want, have, ok):
    assert Platform.parse(want).matches(have) is ok


MULTI = [
    {"os": "linux", "architecture": "amd64"},
    {"os": "linux", "architecture": "arm", "variant": "v6"},
    {"os": "linux", "architecture": "arm64", "variant": "v8"},
    {"os": "unknown", "architecture": "unknown"},
]


def idx(platforms):
    return parse(index_doc(platforms))


@pytest.mark.parametrize("want, position", [
    ("linux/amd64", 0), ("linux/arm64", 2), ("linux/arm64/v8", 2), ("linux/arm/v6", 1),
])
def test_select_platform(want, position):
    index = idx(MULTI)
    assert select_platform(index, Platform.parse(want)) == index.manifests[position]


def test_select_platform_defaults_to_host(monkeypatch):
    import platform
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert select_platform(idx(MULTI)).platform.architecture == "arm64"


def test_no_matching_platform_lists_available_without_attestations():
    with pytest.raises(NoMatchingPlatform) as e:
        select_platform(idx(MULTI), Platform.parse("linux/s390x"))
    assert str(e.value) == ("no matching manifest for linux/s390x in the manifest list entries "
                            "(available: linux/amd64, linux/arm/v6, linux/arm64/v8)")


def test_attestation_entries_are_never_chosen():
    index = idx([{"os": "unknown", "architecture": "unknown"}])
    with pytest.raises(NoMatchingPlatform, match=r"\(available: none\)"):
        select_platform(index, Platform.parse("linux/amd64"))
    assert image_platforms(index) == []


def test_entry_without_platform_is_a_last_resort():
    index = idx([{"os": "linux", "architecture": "arm64"}, None])
    assert select_platform(index, Platform.parse("linux/amd64")) == index.manifests[1]
    assert select_platform(index, Platform.parse("linux/arm64")) == index.manifests[0]


def config_doc(**extra):
    doc = {"architecture": "arm64", "os": "linux", "variant": "v8",
           "created": "2024-01-02T03:04:05Z",
           "config": {"Env": ["PATH=/bin"], "Entrypoint": ["/init"], "Cmd": None,
                      "WorkingDir": "/srv", "User": "1000:1000", "Labels": {"a": "b"}},
           "rootfs": {"type": "layers", "diff_ids": [D1, D2]},
           "history": [{"created_by": "x"}, {"created_by": "y", "empty_layer": True}]}
    doc.update(extra)
    return json.dumps(doc).encode()


def test_parse_config():
    raw = config_doc()
    c = parse_config(raw)
    assert (c.architecture, c.os, c.variant, c.created) == ("arm64", "linux", "v8",
                                                            "2024-01-02T03:04:05Z")
    assert c.env == ("PATH=/bin",) and c.entrypoint == ("/init",) and c.cmd is None
    assert (c.working_dir, c.user, c.labels) == ("/srv", "1000:1000", {"a": "b"})
    assert c.diff_ids == (D1, D2) and len(c.history) == 2 and c.raw == raw
    assert c.platform == Platform("linux", "arm64", "v8")


def test_parse_config_minimal():
    c = parse_config(b'{"architecture": "amd64", "os": "linux"}')
    assert c.env == () and c.cmd is None and c.diff_ids == () and c.labels == {}


@pytest.mark.parametrize("raw, message", [
    (b"nope", "not valid JSON"),
    (config_doc(rootfs={"diff_ids": ["x"]}), "invalid rootfs.diff_ids"),
    (config_doc(config={"Env": "PATH=/bin", "Cmd": [1]}), "expected a list of strings"),
    (config_doc(history={}), "invalid history"),
    (config_doc(config=[]), "'config' and 'rootfs' must be objects"),
])
def test_parse_config_rejects(raw, message):
    with pytest.raises(InvalidManifest, match=f"image config {D3}: {message}"):
        parse_config(raw, D3)


def test_check_config_counts_layers():
    m = parse(manifest_doc(layers=[desc(D1), desc(D2)]))
    check_config(m, parse_config(config_doc()))
    with pytest.raises(LayerFormatError, match=f"image {D2}: config lists 1 diff_ids for 2 layers"):
        check_config(m, parse_config(config_doc(rootfs={"diff_ids": [D1]})))


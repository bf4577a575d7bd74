"""Manifest and config lies end to end, through the real registry (which
stores these as they are: it checks that blobs exist, not what they say).

Decisions: a descriptor size that does not match the blob is refused when
the blob is fetched (exit 6 when the registry sends more, 8 when less) or
found in the store;
a config that is not JSON (exit 9) or whose size lies is refused by
``inspect`` too;
``diff_ids`` that do not count the layers are refused (exit 9);
an unknown layer media type is refused when the layers are read (``inspect``
still describes the image); zero layers is an empty root directory; an index
naming a missing manifest is exit 3; schema1 is exit 9 (the registry will not
store it, so that case goes through an OCI layout). A ``diff_id`` that does
not match its gzip layer is refused (exit 6), since the layer is read whole
to build its table anyway, as containerd refuses it.
"""

from __future__ import annotations

import json

import pytest

from lazyfs.testing.push import OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST, push_blob
from tests.hostile import corpus as C
from tests.hostile.conftest import one_error_line, repo_name

TAR = C.file("a", b"hello\n") + C.end()
GZ = C.gzip_bytes(TAR)
DIFF = C.sha256(TAR)
CFG = C.config_doc([DIFF])


def layer(**kw) -> dict:
    return {"mediaType": OCI_LAYER_GZIP, "digest": C.sha256(GZ), "size": len(GZ), **kw}


MANIFESTS = {
    "layer-size-smaller": (CFG, [layer(size=len(GZ) - 10)], None),
    "layer-size-larger": (CFG, [layer(size=len(GZ) + 10)], None),
    "diff-ids-do-not-count-the-layers": (C.config_doc([DIFF, DIFF]), [layer()], None),
    "diff-ids-wrong": (C.config_doc([C.sha256(b"other")]), [layer()], None),
    "unknown-layer-media-type": (CFG, [layer(mediaType="application/x-evil")], None),
    "zero-layers": (C.config_doc([]), [], None),
    "config-not-json": (b"\x00\x01not json", [layer()], None),
    "config-size-smaller": (CFG, [layer()], {"size": len(CFG) - 5}),
    "config-size-larger": (CFG, [layer()], {"size": len(CFG) + 5}),
}


def push_raw(client, name: str, config: bytes, layers: list[dict], config_edit) -> tuple[str, bytes]:
    repo = repo_name(name)
    push_blob(client, repo, config)
    push_blob(client, repo, GZ)
    doc = C.manifest_doc(config, layers)
    doc["config"].update(config_edit or {})
    body = json.dumps(doc).encode()
    r = client.put(f"/v2/{repo}/manifests/v1", content=body, headers={"content-type": OCI_MANIFEST})
    r.raise_for_status()
    return repo, body


@pytest.fixture(scope="module")
def refs(registry):
    out = {}
    with registry.client() as c:
        for name, (config, layers, edit) in MANIFESTS.items():
            repo, _ = push_raw(c, name, config, layers, edit)
            out[name] = f"{registry.host}/{repo}:v1"
        repo, body = push_raw(c, "index-target", CFG, [layer()], None)
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": C.sha256(body), "size": len(body),
             "platform": {"os": "linux", "architecture": "amd64"}}]}
        c.put(f"/v2/{repo}/manifests/idx", content=json.dumps(index).encode(),
              headers={"content-type": OCI_INDEX}).raise_for_status()
        assert c.delete(f"/v2/{repo}/manifests/{C.sha256(body)}").status_code == 202
        out["index-names-a-missing-manifest"] = f"{registry.host}/{repo}:idx"
    return out


REFUSED = {
    # name: (commands refused, exit code, message fragment)
    "layer-size-smaller": (("ls", "pull"), C.EXIT_DIGEST, "more than"),
    "layer-size-larger": (("ls", "pull"), C.EXIT_REGISTRY, ""),
    "unknown-layer-media-type": (("ls",), C.EXIT_FORMAT, "unsupported layer media type"),
    "config-not-json": (("inspect", "ls", "pull"), C.EXIT_FORMAT, "not valid JSON"),
    "config-size-smaller": (("inspect", "ls"), C.EXIT_DIGEST, "more than"),
    "config-size-larger": (("inspect", "ls"), C.EXIT_REGISTRY, ""),
    "index-names-a-missing-manifest": (("inspect", "ls", "pull"), C.EXIT_NOT_FOUND,
                                       "manifest unknown"),
}


def args_for(command: str, ref: str) -> tuple[str, ...]:
    return {"ls": ("ls", ref, "/"), "cat": ("cat", ref, "/a")}.get(command, (command, ref))


@pytest.mark.parametrize("name", REFUSED)
def test_manifest_lies_are_refused(name, refs, cli):
    commands, code, message = REFUSED[name]
    for command in commands:
        p = cli(*args_for(command, refs[name]))
        assert p.returncode == code, (command, p.stderr)
        assert message in one_error_line(p)


def test_unknown_layer_type_still_inspects(refs, cli):
    doc = json.loads(cli("inspect", refs["unknown-layer-media-type"]).stdout)
    assert doc


def test_zero_layers_is_an_empty_root(refs, cli):
    p = cli("ls", refs["zero-layers"], "/")
    assert (p.returncode, p.stdout) == (0, b"")


def test_wrong_diff_ids_are_refused(refs, cli):
    p = cli("cat", refs["diff-ids-wrong"], "/a")
    assert (p.returncode, p.stdout) == (C.EXIT_DIGEST, b"")
    assert "diff_id" in one_error_line(p)


def test_diff_ids_that_do_not_count_the_layers_are_refused(refs, cli):
    p = cli("ls", refs["diff-ids-do-not-count-the-layers"], "/")
    assert p.returncode == C.EXIT_FORMAT
    assert "diff_ids" in one_error_line(p)


def test_size_lie_is_refused_even_when_the_blob_is_cached(registry, refs, cli):
    with registry.client() as c:
        push_raw(c, "honest-twin", CFG, [layer()], None)
    assert cli("pull", f"{registry.host}/{repo_name('honest-twin')}:v1").returncode == 0
    p = cli("ls", refs["layer-size-smaller"], "/")
    assert p.returncode == C.EXIT_DIGEST


def test_schema1_is_refused(tmp_path, cli):
    """The registry refuses to store schema1, so it comes from a layout."""
    from tests.support.ocilayout import write_blob
    root = tmp_path / "layout"
    s1 = json.dumps({"schemaVersion": 1, "name": "x", "tag": "v1", "architecture": "amd64",
                     "fsLayers": [{"blobSum": write_blob(root, GZ)}],
                     "history": [{"v1Compatibility": "{}"}]}).encode()
    mt = "application/vnd.docker.distribution.manifest.v1+prettyjws"
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": mt, "digest": write_blob(root, s1), "size": len(s1),
         "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}))
    for command in ("inspect", "ls"):
        p = cli(*args_for(command, f"oci:{root}:v1"))
        assert p.returncode == C.EXIT_FORMAT, p.stderr
        assert "schema" in one_error_line(p).lower()


def test_inspect_reads_an_oci_layout_without_a_registry(tmp_path, cli):
    """``inspect oci:DIR:TAG`` used to try a registry named by the path."""
    from tests.support.ocilayout import write_oci_layout
    layout = write_oci_layout(tmp_path / "layout", [GZ], tag="v1")
    p = cli("inspect", f"oci:{layout.root}:v1")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["Manifest"]["Digest"] == layout.manifest_digest

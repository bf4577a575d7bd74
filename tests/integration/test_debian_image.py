"""The cached Debian images are what they claim to be, checked by real tools.

Building them the first time needs the Debian mirror and takes minutes; an
image that cannot be built makes these tests error, never skip.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from lazyfs.testing import debian


def test_mirror_from_deb822_sources(tmp_path):
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "other.sources").write_text(
        "Types: deb\nURIs: https://example.invalid/node\nSuites: nodistro\nComponents: main\n")
    (d / "debian.sources").write_text(
        "Types: deb-src\nURIs: http://src.invalid/debian\nSuites: bookworm\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.invalid/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n")
    (d / "ignored.list.disabled").write_text("deb http://wrong.invalid/debian bookworm main\n")
    assert debian.debian_mirror(tmp_path) == "http://mirror.invalid/debian"


def test_mirror_from_one_line_sources(tmp_path):
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.invalid/debian bookworm main\n"
        "deb-src http://src.invalid/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.invalid/debian bookworm main\n")
    assert debian.debian_mirror(tmp_path) == "http://mirror.invalid/debian"


def test_no_bookworm_source_is_an_error(tmp_path):
    (tmp_path / "sources.list").write_text("deb http://mirror.invalid/debian trixie main\n")
    with pytest.raises(debian.ImageBuildError, match="bookworm"):
        debian.debian_mirror(tmp_path)


@pytest.mark.slow
def test_gzip_image_unpacks_with_umoci_and_merges_the_change_layers(debian_rootfs):
    layout = debian.debian_layout("bookworm", "gzip")
    assert [i.media_type for i in debian.layer_infos(layout, "bookworm")] == \
        [debian.OCI_LAYER_GZIP] * 3
    root = debian_rootfs("bookworm")
    assert 'VERSION_CODENAME=bookworm' in (root / "etc/os-release").read_text()
    assert (root / "etc/issue").read_text().endswith("lazyfs test image\n")
    assert not (root / "etc/issue.net").exists()
    assert not (root / "usr/share/doc/debconf").exists()
    assert (root / "usr/share/doc/dpkg").is_dir()
    assert sorted(p.name for p in (root / "etc/cron.daily").iterdir()) == ["lazyfs"]
    assert (root / "etc/lazyfs-release.link").readlink() == Path("lazyfs-release")
    hello = root / "usr/local/bin/lazyfs-hello"
    assert hello.stat().st_ino == (root / "usr/local/bin/lazyfs-hello.hardlink").stat().st_ino


@pytest.mark.slow
def test_change_layer_whiteouts_were_made_by_umoci():
    layout = debian.debian_layout("bookworm", "gzip")
    change, opaque = debian.layer_infos(layout, "bookworm")[1:3]
    assert {"etc/.wh.issue.net", "usr/share/doc/.wh.debconf"} <= set(_tar_names(layout, change))
    assert "etc/cron.daily/.wh..wh..opq" in _tar_names(layout, opaque)


@pytest.mark.slow
def test_estargz_layers_carry_toc_digest_and_footer():
    layout = debian.debian_layout("bookworm", "estargz")
    infos = debian.layer_infos(layout, "bookworm")
    assert len(infos) == 3
    for info in infos:
        assert info.annotations[debian.ESTARGZ_TOC].startswith("sha256:")
        with open(debian.blob_path(layout, info.digest), "rb") as f:
            f.seek(-51, 2)
            footer = f.read()
        assert footer[:2] == b"\x1f\x8b" and b"STARGZ" in footer


@pytest.mark.slow
def test_tar_layers_are_the_configs_diff_ids():
    layout = debian.debian_layout("bookworm", "tar")
    manifest = debian.image_manifest(layout, "bookworm")
    config = json.loads(debian.blob_path(layout, manifest["config"]["digest"]).read_bytes())
    assert [d["digest"] for d in manifest["layers"]] == config["rootfs"]["diff_ids"]
    for d in manifest["layers"]:
        assert d["mediaType"] == debian.OCI_LAYER_TAR
        assert _sha256_file(debian.blob_path(layout, d["digest"])) == d["digest"]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["zstd", "zstd-chunked"])
def test_zstd_layers_are_zstd(fmt):
    layout = debian.debian_layout("bookworm", fmt)
    for info in debian.layer_infos(layout, "bookworm"):
        with open(debian.blob_path(layout, info.digest), "rb") as f:
            magic = f.read(4)
        assert magic in (b"\x28\xb5\x2f\xfd", b"\x50\x2a\x4d\x18")  # frame / skippable
        if fmt == "zstd-chunked":
            keys = info.annotations.keys()
            assert {debian.ZSTD_CHUNKED_CHECKSUM, debian.ZSTD_CHUNKED_CHECKSUM_OLD} & keys


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["gzip", "tar", "estargz"])
def test_push_keeps_every_digest(registry, fmt):
    image = debian.debian_image(registry.host, "bookworm", fmt)
    assert image.tag == ("bookworm" if fmt == "gzip" else f"bookworm-{fmt}")
    assert image.digest == debian.manifest_descriptor(image.layout, "bookworm")["digest"]
    with registry.client() as c:
        r = c.get(f"/v2/debian/manifests/{image.tag}", headers={"accept": debian.OCI_MANIFEST})
        r.raise_for_status()
        assert r.headers["docker-content-digest"] == image.digest
        for info in debian.layer_infos(image.layout, "bookworm"):
            h = c.head(f"/v2/debian/blobs/{info.digest}")
            assert h.status_code == 200 and int(h.headers["content-length"]) == info.size


def _tar_names(layout: Path, info: debian.LayerInfo) -> list[str]:
    import tarfile
    with gzip.open(debian.blob_path(layout, info.digest)) as f, tarfile.open(fileobj=f) as tf:
        return tf.getnames()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()

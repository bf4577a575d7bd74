"""The merged tree lazyfs describes and exports equals what ``umoci unpack``
writes for the same image, attribute by attribute."""

from __future__ import annotations

import gzip

import pytest

from lazyfs.cli import browse
from lazyfs.image import open_image_async
from lazyfs.store.blobs import Store
from lazyfs.testing.push import OCI_LAYER_GZIP, OCI_LAYER_TAR, push_image
from tests.support.trees import describe, differences


@pytest.mark.parametrize("media_type", [OCI_LAYER_GZIP, OCI_LAYER_TAR])
async def test_export_equals_umoci_unpack(registry, awkward, tmp_path, media_type):
    tars, _, expected = awkward
    blobs = [gzip.compress(t, mtime=0) for t in tars] if media_type == OCI_LAYER_GZIP else tars
    repo = "conformance/" + media_type.rsplit("+", 1)[-1].rsplit(".", 1)[-1]
    with registry.client() as c:
        push_image(c, repo, "v1", blobs, layer_media_type=media_type)
    async with open_image_async(f"{registry.host}/{repo}:v1", store=Store(tmp_path / "c")) as img:
        await browse.export(img, str(tmp_path / "out"))
    got = describe(tmp_path / "out")
    assert differences(expected, got) == []
    assert got["/usr/bin/tool"]["link_group"] == got["/usr/bin/tool-link2"]["link_group"]
    assert "/d2/again" in got and "/opt/a" not in got and "/data/old" not in got


async def test_oci_layout_source_matches_umoci(awkward, tmp_path):
    _, layout, expected = awkward
    async with open_image_async(f"oci:{layout.ref}", store=Store(tmp_path / "c")) as img:
        await browse.export(img, str(tmp_path / "out"))
    assert differences(expected, describe(tmp_path / "out")) == []

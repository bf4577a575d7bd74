"""Fixtures shared by the integration tests."""

from __future__ import annotations

import gzip
import subprocess

import pytest

from tests.support.awkward import awkward_tars
from tests.support.ocilayout import write_oci_layout
from tests.support.trees import describe


@pytest.fixture(scope="session")
def awkward(tmp_path_factory):
    """The awkward image as tars, as an OCI layout, and as umoci unpacks it."""
    tars = awkward_tars()
    root = tmp_path_factory.mktemp("awkward")
    layout = write_oci_layout(root / "layout", [gzip.compress(t, mtime=0) for t in tars],
                              tag="awkward")
    bundle = root / "bundle"
    subprocess.run(["umoci", "unpack", "--image", layout.ref, str(bundle)], check=True,
                   capture_output=True)
    return tars, layout, describe(bundle / "rootfs")


@pytest.fixture(scope="session")
def debian_rootfs(tmp_path_factory):
    """``debian_rootfs(variant)``: ``umoci unpack`` of that cached Debian gzip
    image, made once a session (it takes seconds); tests only read it."""
    from lazyfs.testing.debian import debian_layout
    made = {}

    def rootfs(variant: str):
        if variant not in made:
            bundle = tmp_path_factory.mktemp(f"debian-{variant}") / "bundle"
            subprocess.run(["umoci", "unpack", "--image",
                            f"{debian_layout(variant, 'gzip')}:{variant}", str(bundle)],
                           check=True, capture_output=True)
            made[variant] = bundle / "rootfs"
        return made[variant]
    return rootfs

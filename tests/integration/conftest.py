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

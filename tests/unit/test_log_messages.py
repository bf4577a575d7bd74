"""Log lines name their layer once: a message that already starts with
``layer sha256:…`` is not wrapped in the same prefix again."""

from __future__ import annotations

import logging
import random

import pytest

from lazyfs.errors import naming
from lazyfs.image import OpenOptions, open_image_async
from lazyfs.store.blobs import Store
from lazyfs.testing import MemoryRegistry, build_layer

DATA = random.Random(9).randbytes(100_000)


def test_naming_prefixes_only_what_does_not_name_its_subject():
    assert naming("layer sha256:ab", "layer sha256:ab: span 3 mismatch") \
        == "layer sha256:ab: span 3 mismatch"
    assert naming("layer sha256:ab", "HTTP 503") == "layer sha256:ab: HTTP 503"
    assert naming("blob sha256:ab", "registry r: r/x@sha256:ab: HTTP 503", "sha256:ab") \
        == "registry r: r/x@sha256:ab: HTTP 503"


@pytest.mark.parametrize("fmt", ["estargz", "zstd:chunked"])
async def test_a_failed_verification_logs_its_layer_once(tmp_path, caplog, fmt):
    registry = MemoryRegistry()
    layer = build_layer(fmt, {"data": DATA})
    pushed = registry.push_image("log/app", "v1", [layer])
    options = OpenOptions(registry=registry.options())
    caplog.set_level(logging.INFO, logger="lazyfs")
    logging.getLogger("lazyfs").addHandler(caplog.handler)
    async with open_image_async(pushed.ref, options, store=Store(tmp_path)) as image:
        node = image.index.resolve("/data")
        registry.fault("flip", kind=("range", "multirange"), digest=layer.digest)
        try:
            assert await image.read(node, 0, node.size) == DATA
        finally:
            logging.getLogger("lazyfs").removeHandler(caplog.handler)
    lines = [r.getMessage() for r in caplog.records if layer.digest in r.getMessage()]
    assert lines, caplog.text
    assert not [line for line in lines if line.count(layer.digest) > 1], lines

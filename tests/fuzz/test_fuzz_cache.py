"""Untrusted cache files: a layer table or merged index that a crash, a full
disk or another user left damaged must be a ``CacheError`` (which callers
answer by rebuilding), never another exception and never a wrong tree.

Damage that keeps the layer table's keyed checksum valid is generated too
(the key is no secret), so the decoder behind the checksum is fuzzed as well.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from lazyfs.index import layertable
from lazyfs.formats.entry import Entry, EntryType
from lazyfs.errors import CacheError, NotFound
from lazyfs.formats import LayerTable
from lazyfs.index.merged import ROOT_INO, MergedIndex
from lazyfs.index.layertable import load_layer_table, save_layer_table
from tests.fuzz.budget import fuzz
from tests.fuzz.test_fuzz_formats import mutated

ENTRIES = [Entry("a", EntryType.DIR, 0o755), Entry("a/f", EntryType.FILE, 0o644, size=5, data=b"loc"),
           Entry("a/l", EntryType.SYMLINK, 0o777, linkname="f"),
           Entry("x", EntryType.FILE, 0o600, xattrs={"user.k": b"v"}, data=b"y")]
TABLE = LayerTable(format="tar", lazy=True, state=b"s\n", entries=ENTRIES)


def _seeds() -> tuple[bytes, bytes]:
    with tempfile.TemporaryDirectory(prefix="lazyfs-fuzz-") as d:
        save_layer_table(Path(d) / "seed.table", TABLE)
        MergedIndex.build(Path(d) / "seed.index", [ENTRIES]).close()
        return (Path(d) / "seed.table").read_bytes(), (Path(d) / "seed.index").read_bytes()


SEED_TABLE, SEED_INDEX = _seeds()
SEED_PAYLOAD = zstandard.ZstdDecompressor().decompress(SEED_TABLE[len(layertable.MAGIC) + 32:])


def sealed(payload: bytes) -> bytes:
    """A table file around ``payload`` with a valid magic and checksum."""
    digest = hashlib.blake2b(payload, digest_size=32, key=layertable._DIGEST_KEY).digest()
    return layertable.MAGIC + digest + payload


def write(data: bytes) -> Path:
    fd, name = tempfile.mkstemp(prefix="lazyfs-fuzz-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(name)


@given(st.one_of(st.binary(max_size=300), mutated(SEED_TABLE),
                 mutated(SEED_PAYLOAD).map(lambda p: sealed(zstandard.compress(p))),
                 st.binary(max_size=200).map(sealed)))
@fuzz(300)
def test_layer_table_loads_or_raises_cache_error(data):
    path = write(data)
    try:
        table = load_layer_table(path)
    except CacheError:
        return
    finally:
        path.unlink()
    for e in table.entries:
        assert isinstance(e, Entry) and isinstance(e.name, str)


# the inputs are whole index files: hypothesis warns that their repr is large
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")
@given(mutated(SEED_INDEX, 6) | st.binary(max_size=2000)
       | st.integers(0, len(SEED_INDEX)).map(lambda n: SEED_INDEX[:n]))
@fuzz(200)
def test_merged_index_opens_or_raises_cache_error(data):
    path = write(data)
    try:
        index = MergedIndex.open(path)
    except CacheError:
        path.unlink()
        return
    try:
        for path_, node in index.walk(ROOT_INO):
            index.xattrs(node.ino)
            index.getattr(node.ino)
        index.resolve("/a/l")
    except (CacheError, NotFound):
        pass
    finally:
        index.close()
        path.unlink()

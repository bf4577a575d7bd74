"""A cache directory that cannot be written is a ``CacheError`` naming it and
saying why, on open and on every write: never a raw ``OSError``."""

from __future__ import annotations

import hashlib

import pytest

from lazyfs.errors import CacheError
from lazyfs.store.blobs import Store
from tests.support.immutable import immutable


def test_an_immutable_cache_directory_is_a_cache_error(tmp_path):
    root = tmp_path / "cache"
    root.mkdir(mode=0o700)
    with immutable(root), pytest.raises(CacheError) as e:
        Store(root)
    assert str(root) in str(e.value) and "not permitted" in str(e.value)


def test_a_file_where_the_cache_should_be_is_a_cache_error(tmp_path):
    (tmp_path / "cache").write_text("in the way\n")
    with pytest.raises(CacheError) as e:
        Store(tmp_path / "cache" / "below")
    assert str(tmp_path / "cache") in str(e.value)


def test_writing_a_blob_into_an_unwritable_store_is_a_cache_error(tmp_path):
    store = Store(tmp_path / "cache")
    data = b"config\n"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with immutable(store.root / "tmp", store.root / "indexes"):
        with pytest.raises(CacheError) as e:
            store.put_bytes(digest, data)
        assert digest in str(e.value) and str(store.root) in str(e.value)
        with pytest.raises(CacheError):
            store.index_path("layer-tar", digest)


async def test_an_async_blob_writer_in_an_unwritable_store_is_a_cache_error(tmp_path):
    store = Store(tmp_path / "cache")
    with immutable(store.root / "tmp"), pytest.raises(CacheError):
        async with store.blob_writer("sha256:" + "0" * 64, 10):
            pass


def test_a_damaged_image_database_is_a_cache_error(tmp_path):
    tmp_path.chmod(0o700)
    (tmp_path / "images.db").write_bytes(b"not sqlite at all" * 300)
    with pytest.raises(CacheError, match="images.db: file is not a database"):
        Store(tmp_path)

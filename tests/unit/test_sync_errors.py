"""``open_image``'s methods fail as the ``os`` functions they are documented
to work like: the ``OSError`` subclass Python code catches, with errno and
filename set, and still the ``LazyfsError`` kind the CLI knows."""

from __future__ import annotations

import errno
import os

import pytest

from lazyfs.errors import (IsADirectory, NotADirectory, NotASymlink, NotFound, PathLoop,
                           PathNotFound, SymlinkLoop, UsageError)
from lazyfs.image import OpenOptions
from lazyfs.store.blobs import Store
from lazyfs.sync import SyncImage
from lazyfs.testing import Dir, MemoryRegistry, build_layer

ENTRIES = {"etc/": Dir(), "etc/hostname": "box\n", "link": ("symlink", "etc/hostname"),
           "loop": ("symlink", "loop")}


@pytest.fixture
def image(tmp_path):
    registry = MemoryRegistry()
    pushed = registry.push_image("sync/errors", "v1", [build_layer("tar", ENTRIES)])
    with SyncImage(pushed.ref, OpenOptions(registry=registry.options()),
                   Store(tmp_path / "store")) as im:
        yield im


def test_stat_of_a_missing_path_is_file_not_found(image):
    for call in (lambda: image.stat("/nope"), lambda: image.open("/etc/nope"),
                 lambda: image.listdir("/nope"), lambda: image.readlink("/nope")):
        with pytest.raises(FileNotFoundError) as e:
            call()
        assert isinstance(e.value, PathNotFound) and isinstance(e.value, NotFound)
        assert e.value.errno == errno.ENOENT and e.value.filename.endswith("nope")
    assert str(e.value) == "[Errno 2] No such file or directory: '/nope'"


@pytest.mark.parametrize("method, path, oserror, cls, kind, code", [
    ("stat", "/loop", OSError, PathLoop, SymlinkLoop, errno.ELOOP),
    ("open", "/etc", IsADirectoryError, IsADirectory, UsageError, errno.EISDIR),
    ("listdir", "/etc/hostname", NotADirectoryError, NotADirectory, NotFound, errno.ENOTDIR),
    ("readlink", "/etc/hostname", OSError, NotASymlink, UsageError, errno.EINVAL),
])
def test_wrong_kind_of_path_is_the_os_error_and_the_lazyfs_error(image, method, path, oserror,
                                                                cls, kind, code):
    with pytest.raises(oserror) as e:
        getattr(image, method)(path)
    assert isinstance(e.value, cls) and isinstance(e.value, kind)
    assert e.value.errno == code and e.value.filename == path
    assert str(e.value) == f"[Errno {code}] {os.strerror(code)}: {path!r}"


def test_readlink_of_a_link_still_answers(image):
    assert image.readlink("/link") == "etc/hostname"

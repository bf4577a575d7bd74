"""A representative part of the corpus through ``lazyfs mount``: refused
images never mount (one line, exit code, nothing left mounted or running);
served ones show exactly the tree ``ls`` shows; a damaged chunk is EIO for
its file only and the mount lives on.

Symlinks in a mount are resolved by the kernel in the caller's root, as on
any file system: ``evil -> /tmp/...`` inside a mount points at the host. A
consumer that must stay inside the image resolves paths under the mount
with ``chroot`` or ``openat2(RESOLVE_IN_ROOT)``; see docs/security.md.
"""

from __future__ import annotations

import errno
import json
import os

import pytest

from lazyfs.errors import LayerFormatError
from tests.hostile import corpus as C
from tests.hostile.conftest import push_case
from tests.hostile.test_toc import FILES
from tests.hostile.test_toc import cases as toc_cases
from tests.hostile.test_toc import push as push_toc
from tests.support.climount import cli_mount, lazyfs, lazyfs_env
from tests.support.mounts import is_mounted


@pytest.fixture(scope="module")
def images(registry, host):
    by_name = {c.name: c for c in C.header_cases() + C.symlink_cases(str(host.dir))}
    out = {}
    for name in ("bad-checksum", "size-negative-base256", "symlink-dir-later-layer",
                 "symlink-loop"):
        case = by_name[name]
        out[name] = push_case(registry, "mount-" + name, [C.gzip_bytes(t) for t in case.tars])
    return out


@pytest.mark.parametrize("name", ["bad-checksum", "size-negative-base256"])
def test_refused_images_do_not_mount_when_indexed_first(name, images, tmp_path):
    env = lazyfs_env(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = lazyfs("mount", "--wait-index", images[name], str(mnt), env=env, check=False,
               timeout=60)
    assert p.returncode == C.EXIT_FORMAT, p.stderr
    assert p.stderr.startswith("lazyfs: ") and p.stderr.count("\n") == 1, p.stderr
    assert not is_mounted(mnt)
    assert not list((tmp_path / "run" / "lazyfs").glob("*.json"))


@pytest.mark.parametrize("name", ["bad-checksum", "size-negative-base256"])
def test_refused_images_indexed_in_the_background_answer_eio(name, images, tmp_path):
    """A first mount returns before the image is read; what is found wrong
    later fails every request with EIO and is told by ``lazyfs stats``."""
    env = lazyfs_env(tmp_path)
    with cli_mount(images[name], tmp_path / "mnt", env) as mnt:
        with pytest.raises(OSError) as info:
            os.listdir(mnt)
        assert info.value.errno == errno.EIO
        stats = json.loads(lazyfs("stats", "--json", str(mnt), env=env).stdout)
        assert stats["index"].startswith("failed: layer sha256:")
        assert "\n" not in stats["index"]
        listed = lazyfs("mounts", env=env).stdout
        assert str(mnt) in listed


def test_symlinked_directory_trick_is_the_images_own_tree(images, tmp_path, host):
    env = lazyfs_env(tmp_path)
    with cli_mount(images["symlink-dir-later-layer"], tmp_path / "mnt", env) as mnt:
        assert os.readlink(mnt / "evil").endswith(str(host.dir).lstrip("/"))
        inside = mnt / str(host.dir).lstrip("/") / "planted"
        assert inside.read_bytes() == b"planted\n"
        assert host.untouched()


def test_symlink_loop_is_eloop(images, tmp_path):
    env = lazyfs_env(tmp_path)
    with cli_mount(images["symlink-loop"], tmp_path / "mnt", env) as mnt:
        with pytest.raises(OSError) as info:
            (mnt / "a").read_bytes()
        assert info.value.errno == errno.ELOOP
        assert (mnt / "f").read_bytes() == b"f\n"


def test_damaged_chunk_is_eio_and_the_mount_survives(registry, tmp_path):
    all_cases = toc_cases()
    honest = push_toc(registry, "mount-estargz-honest", *all_cases["estargz-honest"])
    damaged = push_toc(registry, "mount-estargz-flipped", *all_cases["estargz-flipped-chunk"])
    with cli_mount(honest, tmp_path / "a", lazyfs_env(tmp_path / "x")) as good, \
            cli_mount(damaged, tmp_path / "b", lazyfs_env(tmp_path / "y")) as bad:
        failed = 0
        for path in FILES:
            truth = (good / path.lstrip("/")).read_bytes()
            try:
                got = (bad / path.lstrip("/")).read_bytes()
            except OSError as e:
                assert e.errno == errno.EIO
                failed += 1
            else:
                assert got == truth
        assert failed >= 1
        assert (bad / "etc/hostname").read_bytes() == (good / "etc/hostname").read_bytes()


async def test_open_image_raises_the_layer_error_itself(images, tmp_path):
    from lazyfs.image import open_image_async
    from lazyfs.store.blobs import Store
    with pytest.raises(LayerFormatError):
        async with open_image_async(images["bad-checksum"], store=Store(tmp_path / "c")):
            pass

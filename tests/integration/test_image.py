import trio
from lazyfs.testing.push import OCI_LAYER_TAR, push_image
from lazyfs.image import open_image_async
from lazyfs.sync import open_image
from lazyfs.store.blobs import Store
from tests.support.images import gzip_bytes, make_tar

async def test_open_image_lists_and_reads_gzip_and_tar_images(registry, tmp_path):
    l1 = make_tar({"etc/": None, "etc/os-release": "ID=test\n", "bin/": None, "bin/sh": b"x"*100000, "gone": "a"})
    l2 = make_tar({"etc/hostname": "box\n", ".wh.gone": "", "link": ("symlink", "/etc/os-release")})
    with registry.client() as c:
        push_image(c, "e2e/a", "v1", [gzip_bytes(l1), gzip_bytes(l2)])
        push_image(c, "e2e/b", "v1", [l1, l2], layer_media_type=OCI_LAYER_TAR)
    for repo in ("a", "b"):
        store = Store(tmp_path / "c")
        async with open_image_async(f"{registry.host}/e2e/{repo}:v1", store=store) as img:
            names = [n for n, _, _ in img.index.readdir(1)]
            assert names == sorted(["etc", "bin", "link"]), names
            node = img.index.resolve("/link")
            assert await img.read(node, 0, 100) == b"ID=test\n"
            node = img.index.resolve("/bin/sh")
            assert await img.read(node, 5, 10) == b"x"*10
            assert img.stats()["layers"][0]["format"] == ("gzip" if repo == "a" else "tar")
    def sync():
        with open_image(f"{registry.host}/e2e/a:v1", store=Store(tmp_path / "c")) as im:
            assert im.listdir("/etc") == ["hostname", "os-release"]
            assert im.open("/etc/hostname").read() == b"box\n"
            assert im.readlink("/link") == "/etc/os-release"
            assert im.stat("/link").st_size == 8 and im.stat("/link", follow_symlinks=False).st_size == len("/etc/os-release")
            with im.open("/bin/sh") as f:
                f.seek(99_990)
                assert f.read() == b"x" * 10
            assert im.stats()["layers"][0]["format"] == "gzip"
            assert list(im.walk("/")) == [("/", ["bin", "etc"], ["link"]), ("/bin", [], ["sh"]), ("/etc", [], ["hostname", "os-release"])]
    await trio.to_thread.run_sync(sync)

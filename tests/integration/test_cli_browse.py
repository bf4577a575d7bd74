"""ls, cat, stat, find, diff and export from the command line, on real images
in the real registry; the tree they show is checked against umoci elsewhere."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import pytest

from lazyfs.testing.push import push_image
from tests.support.awkward import awkward_tars
from tests.support.images import make_tar
from tests.support.trees import describe

LAZYFS = [sys.executable, "-m", "lazyfs"]


@pytest.fixture(scope="module")
def images(registry):
    tars = awkward_tars(many=50)
    extra = make_tar({"etc/": None, "etc/os-release": "ID=awkward\nVERSION_ID=3\n",
                      "added": "new file\n"})
    with registry.client() as c:
        push_image(c, "browse/awkward", "v1", [gzip.compress(t, mtime=0) for t in tars])
        push_image(c, "browse/awkward", "v2", [gzip.compress(t, mtime=0) for t in tars + [extra]])
    return f"{registry.host}/browse/awkward:v1", f"{registry.host}/browse/awkward:v2"


def run(*args, cache, check=True):
    env = dict(os.environ, LAZYFS_CACHE_DIR=str(cache))
    p = subprocess.run([*LAZYFS, *args], capture_output=True, env=env, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"lazyfs {args} exited {p.returncode}: {p.stderr.decode()}")
    return p


def test_ls_long_shows_modes_owners_links_and_devices(images, tmp_path):
    out = run("ls", "-l", images[0], "/", cache=tmp_path).stdout.decode().splitlines()
    assert out[0].startswith("total ")
    by_name = {line.split()[-1] if "->" not in line else line.split()[-3]: line for line in out[1:]}
    assert by_name["bin"].startswith("lrwxrwxrwx") and by_name["bin"].endswith("bin -> usr/bin")
    assert by_name["tmp"].startswith("drwxrwxrwt")
    owned = by_name["owned"].split()
    assert owned[0] == "-rw-r-----" and owned[2:5] == ["user", "users", "5"]
    dev = run("ls", "-l", images[0], "/dev", cache=tmp_path).stdout.decode()
    assert any(l.startswith("crw-rw-rw-") and "1, 3" in l and l.endswith("null") for l in dev.splitlines())
    su = run("ls", "-l", images[0], "/usr/bin/su", cache=tmp_path).stdout.decode()
    assert su.startswith("-rwsr-xr-x")


def test_ls_plain_and_recursive(images, tmp_path):
    names = run("ls", images[0], "/data", cache=tmp_path).stdout.decode().split()
    assert names == ["new"]  # opaque directory hid the lower content
    rec = run("ls", "-R", images[0], "/x", cache=tmp_path).stdout.decode()
    assert rec.splitlines()[0] == "/x:" and "child" in rec


def test_ls_takes_combined_flags_and_shows_a_named_symlink_with_l(images, tmp_path):
    la = run("ls", "-la", images[0], "/", cache=tmp_path).stdout.decode()
    assert la == run("ls", "-l", images[0], "/", cache=tmp_path).stdout.decode()
    assert run("ls", "-lR", images[0], "/x", cache=tmp_path).stdout.decode().startswith("/x:\ntotal ")
    link = run("ls", "-l", images[0], "/bin", cache=tmp_path).stdout.decode().splitlines()
    assert len(link) == 1 and link[0].startswith("lrwxrwxrwx") and link[0].endswith(" /bin -> usr/bin")
    usr_bin = run("ls", images[0], "/usr/bin", cache=tmp_path).stdout.decode()
    assert run("ls", images[0], "/bin", cache=tmp_path).stdout.decode() == usr_bin
    followed = run("ls", "-l", images[0], "/bin/", cache=tmp_path).stdout.decode()
    assert followed == run("ls", "-l", images[0], "/usr/bin", cache=tmp_path).stdout.decode()
    tmp = run("ls", "-ld", images[0], "/tmp", cache=tmp_path).stdout.decode().splitlines()
    assert len(tmp) == 1 and tmp[0].startswith("drwxrwxrwt") and tmp[0].endswith(" /tmp")


def test_find_takes_maxdepth_and_mindepth(images, tmp_path):
    top = run("find", images[0], "/", "-maxdepth", "1", cache=tmp_path).stdout.decode().split()
    assert top[0] == "/" and "/usr" in top and not any(p.count("/") > 1 for p in top)
    kids = run("find", images[0], "/usr", "-mindepth", "1", "-maxdepth", "1", "-type", "d",
               cache=tmp_path).stdout.decode().split()
    assert "/usr/bin" in kids and "/usr" not in kids and all(p.count("/") == 2 for p in kids)
    deep = run("find", images[0], "/", "-mindepth", "2", "-name", "tool*", cache=tmp_path)
    assert deep.stdout.decode().split() == ["/usr/bin/tool", "/usr/bin/tool-link", "/usr/bin/tool-link2"]
    bad = run("find", images[0], "/", "-maxdepth", "x", cache=tmp_path, check=False)
    assert bad.returncode == 2


def test_cat_follows_symlinks_inside_the_image_only(images, tmp_path):
    p = run("cat", images[0], "/etc/os-release", "/with space", cache=tmp_path)
    assert p.stdout == b"ID=awkward\nVERSION_ID=2\n" + b"space\n"
    # /bin -> usr/bin, so /bin/su is /usr/bin/su inside the image
    assert run("cat", images[0], "/bin/su", cache=tmp_path).stdout == b"setuid"
    missing = run("cat", images[0], "/etc/localtime", cache=tmp_path, check=False)
    assert missing.returncode == 3 and missing.stderr.decode().count("\n") == 1
    assert b"Traceback" not in missing.stderr


def test_stat_json(images, tmp_path):
    doc = json.loads(run("stat", images[0], "/usr/bin/tool", cache=tmp_path).stdout)
    assert doc["type"] == "file" and doc["mode"] == "0755" and doc["nlink"] == 2
    assert doc["size"] == 7004 and doc["layer"].startswith("sha256:")
    caps = json.loads(run("stat", images[0], "/caps", cache=tmp_path).stdout)
    assert caps["xattrs"] == {"user.comment": "hello"}
    link = json.loads(run("stat", images[0], "/etc/localtime", cache=tmp_path).stdout)
    assert link["type"] == "symlink" and link["target"] == "/usr/share/zoneinfo/UTC"


def test_find_by_name_and_type(images, tmp_path):
    out = run("find", images[0], "/", "-name", "tool*", cache=tmp_path).stdout.decode().split()
    assert out == ["/usr/bin/tool", "/usr/bin/tool-link", "/usr/bin/tool-link2"]
    links = run("find", images[0], "-type", "l", cache=tmp_path).stdout.decode().split()
    assert links == ["/bin", "/etc/localtime"]
    bad = run("find", images[0], "-type", "z", cache=tmp_path, check=False)
    assert bad.returncode == 2


def test_diff_names_what_changed(images, tmp_path):
    out = run("diff", images[0], images[1], cache=tmp_path).stdout.decode().splitlines()
    assert "A /added" in out
    assert any(l.startswith("C /etc/os-release") and "content" in l for l in out)
    doc = json.loads(run("diff", "--json", images[0], images[1], cache=tmp_path).stdout)
    assert doc["seconds"] > 0
    assert [i["reference"].rpartition("/")[2].partition("@")[0] for i in doc["images"]] == \
        [r.rpartition("/")[2] for r in images[:2]]
    assert all(i["layers"] >= 1 and i["bytes_fetched"] >= 0 for i in doc["images"])
    changed = {c["path"]: c for c in doc["changes"]}
    assert changed["/etc/os-release"]["what"]["content"][0] != changed["/etc/os-release"]["what"]["content"][1]
    assert {"/added", "/etc/os-release"} <= set(changed) <= {"/", "/etc", "/added", "/etc/os-release"}


def test_export_writes_the_tree(images, tmp_path):
    run("export", "-q", images[0], str(tmp_path / "out"), cache=tmp_path / "c")
    tree = describe(tmp_path / "out")
    assert tree["/usr/bin/su"]["mode"] == 0o4755
    assert tree["/dev/null"]["rdev"] == (1, 3)
    assert tree["/usr/bin/tool"]["link_group"] == tree["/usr/bin/tool-link2"]["link_group"]
    assert "link_group" not in tree["/usr/bin/tool-link"]  # keeps the replaced content
    again = run("export", images[0], str(tmp_path / "out"), cache=tmp_path / "c", check=False)
    assert again.returncode == 2 and b"not empty" in again.stderr


def test_export_as_tar_equals_the_directory_export(images, tmp_path):
    import io
    import tarfile
    run("export", "-q", images[0], str(tmp_path / "dir"), cache=tmp_path / "c")
    stream = run("export", "-q", images[0], "-", cache=tmp_path / "c").stdout
    run("export", "-q", "--tar", str(tmp_path / "image.tar"), images[0], cache=tmp_path / "c")
    assert (tmp_path / "image.tar").read_bytes() == stream
    members = {m.name: m for m in tarfile.open(fileobj=io.BytesIO(stream), encoding="utf-8",
                                               errors="surrogateescape")}
    tree = describe(tmp_path / "dir")
    assert {"/" + name for name in members} == set(tree)
    assert members["bin"].issym() and members["bin"].linkname == "usr/bin"
    assert members["dev/null"].ischr() and (members["dev/null"].devmajor, members["dev/null"].devminor) == (1, 3)
    assert members["usr/bin/su"].mode == 0o4755 and members["tmp"].mode == 0o1777
    assert members["owned"].uid == tree["/owned"]["uid"] and members["owned"].gid == tree["/owned"]["gid"]
    links = [m for m in members.values() if m.islnk()]
    assert links and all("/" + m.linkname == tree["/" + m.name]["link_group"] for m in links)
    assert members["caps"].pax_headers["SCHILY.xattr.user.comment"] == "hello"
    # what GNU tar unpacks from the stream is the directory export, byte for byte
    out = tmp_path / "untarred"
    out.mkdir()
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", "-",
                    "-C", str(out)], input=stream, check=True)
    assert describe(out) == tree


def test_export_needs_one_destination(images, tmp_path):
    both = run("export", "--tar", str(tmp_path / "t"), images[0], str(tmp_path / "d"),
               cache=tmp_path / "c", check=False)
    neither = run("export", images[0], cache=tmp_path / "c", check=False)
    assert both.returncode == neither.returncode == 2
    assert not (tmp_path / "-").exists() and not (tmp_path / "t").exists()


def test_export_refuses_a_destination_it_cannot_use_before_opening_the_image(tmp_path):
    """One line and exit 2, and before the image is looked for: the
    reference names a registry nobody listens on (exit 7 if it were asked)."""
    afile, full = tmp_path / "afile", tmp_path / "full"
    afile.write_text("x")
    full.mkdir()
    (full / "x").write_text("x")
    ref = "127.0.0.1:1/nobody/here:v1"
    cases = {
        (ref, str(afile)): f"{afile} exists and is not a directory",
        (ref, str(afile / "sub")): f"cannot create {afile / 'sub'}: {afile} is not a directory",
        (ref, str(full)): f"{full} is not empty",
        ("--tar", str(full), ref): f"{full} is a directory",
        ("--tar", str(tmp_path / "no" / "x.tar"), ref): f"no directory {tmp_path / 'no'}",
    }
    for args, says in cases.items():
        p = run("export", *args, cache=tmp_path / "c", check=False)
        err = p.stderr.decode()
        assert p.returncode == 2, (args, err)
        assert err.startswith("lazyfs: export: ") and says in err and err.count("\n") == 1, err
    assert afile.read_text() == "x" and sorted(os.listdir(full)) == ["x"]
    assert not (tmp_path / "no").exists()


def test_a_full_disk_under_stdout_is_one_error_line(images, tmp_path):
    """As cat says "write error": the reason, exit 1, no traceback (also
    for what argparse prints, and for the interpreter's last flush)."""
    env = dict(os.environ, LAZYFS_CACHE_DIR=str(tmp_path / "c"))
    for args in (["cat", images[1], "/etc/os-release"], ["ls", "-lR", images[0], "/"],
                 ["export", images[0], "-"], ["--help"]):
        with open("/dev/full", "wb") as full:
            p = subprocess.run([*LAZYFS, *args], stdout=full, stderr=subprocess.PIPE,
                               env=env, timeout=120)
        assert p.returncode == 1, (args, p.stderr)
        assert p.stderr.decode() == ("lazyfs: cannot write to standard output: "
                                     "No space left on device\n"), args


def test_prune_all_empties_the_chunk_cache_and_cache_size_is_checked(registry, tmp_path):
    from pathlib import Path

    from lazyfs.testing.push import push_oci_layout
    golden = Path(__file__).parents[1] / "data" / "estargz-ctr-remote"
    with registry.client() as c:
        ref = f"{registry.host}/" + push_oci_layout(c, "browse/estargz", golden)
    run("cat", ref, "/usr/bin/big", cache=tmp_path)  # eStargz: read by ranges, cached in pieces
    chunks = tmp_path / "chunks"

    def pieces():
        return [p for p in chunks.rglob("*")
                if p.is_file() and "leases" not in p.parts and p.suffix != ".lock"]
    assert pieces()
    out = run("prune", "--all", "-f", cache=tmp_path).stdout.decode()
    assert " cached pieces" in out and ", 0 cached pieces" not in out
    assert pieces() == []
    bad = run("--cache-size", "lots", "cat", ref, "/etc/empty", cache=tmp_path, check=False)
    assert bad.returncode == 2 and b"not a size" in bad.stderr


def test_cat_stats_show_what_was_fetched(registry, tmp_path):
    from pathlib import Path

    from lazyfs.testing.push import push_oci_layout
    golden = Path(__file__).parents[1] / "data" / "estargz-ctr-remote"
    with registry.client() as c:
        ref = f"{registry.host}/" + push_oci_layout(c, "browse/estargz-stats", golden)
    p = run("cat", "--stats", ref, "/etc/hostname", cache=tmp_path)
    table = p.stderr.decode()
    assert "estargz" in table and "lazy" in table and "FETCHED" in table
    assert len(p.stdout) == 14  # etc/hostname in the golden sample


def test_export_and_pull_refuse_what_cannot_fit(registry, images, tmp_path):
    with registry.client() as c:
        push_image(c, "browse/random", "v1", [gzip.compress(make_tar({"r": os.urandom(2 << 20)}))])
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        out = run("export", images[0], str(small / "out"), cache=tmp_path / "c", check=False)
        assert out.returncode == 11 and b"not enough space" in out.stderr
        assert out.stderr.count(b"\n") == 1 and os.listdir(small / "out") == []
        pulled = run("pull", f"{registry.host}/browse/random:v1", cache=small / "cache", check=False)
        assert pulled.returncode == 11 and b"not enough space" in pulled.stderr
        assert not list((small / "cache" / "blobs").rglob("*.tar*"))
    finally:
        subprocess.run(["umount", str(small)], check=True)

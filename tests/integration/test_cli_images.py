"""``lazyfs images / inspect / rmi / prune`` as a user runs them."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from lazyfs.cli.render import human_since, human_size, render
from lazyfs.errors import CacheError, NotFound, RegistryUnreachable, UsageError
from lazyfs.store.blobs import Store
from lazyfs.testing.push import push_image, push_index, sha256
from lazyfs.testing.realregistry import start_registry
from tests.support.images import gzip_bytes, make_tar

ROOT = Path(__file__).resolve().parents[2]


def lazyfs(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "lazyfs", *args], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"lazyfs {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def one_layer(content: bytes = b"") -> bytes:
    return gzip_bytes(make_tar({"etc/": None, "etc/data": content or os.urandom(3000)}))


# -- pure formatting, docker's numbers ---------------------------------------------


@pytest.mark.parametrize("size,text", [
    (0, "0B"), (999, "999B"), (5_580, "5.58kB"), (74_800_000, "74.8MB"), (123_456_789, "123MB"),
    (1_234_000_000, "1.23GB"), (77_812_345, "77.8MB"),
])
def test_human_size_matches_docker(size, text):
    assert human_size(size) == text


@pytest.mark.parametrize("ago,text", [
    (dt.timedelta(seconds=0.5), "Less than a second ago"), (dt.timedelta(seconds=30), "30 seconds ago"),
    (dt.timedelta(seconds=70), "About a minute ago"), (dt.timedelta(minutes=45), "45 minutes ago"),
    (dt.timedelta(minutes=65), "About an hour ago"), (dt.timedelta(hours=5), "5 hours ago"),
    (dt.timedelta(days=3), "3 days ago"), (dt.timedelta(days=20), "2 weeks ago"),
    (dt.timedelta(days=100), "3 months ago"), (dt.timedelta(days=800), "2 years ago"),
])
def test_human_since_matches_docker(ago, text):
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    assert human_since(now - ago, now.timestamp()) == text


def test_render_table_plain_json_and_unknown_placeholder():
    rows = [{"Repository": "ubuntu", "Tag": "latest", "ID": "0123456789ab", "Digest": "sha256:x",
             "CreatedSince": "2 years ago", "CreatedAt": "N/A", "Size": "74.8MB"},
            {"Repository": "a-much-longer-name", "Tag": "<none>", "ID": "ba9876543210", "Digest": "sha256:y",
             "CreatedSince": "N/A", "CreatedAt": "N/A", "Size": "1kB"}]
    assert render("{{.ID}}: {{.Repository}}", rows) == "0123456789ab: ubuntu\nba9876543210: a-much-longer-name\n"
    assert render(r"{{.Tag}}\t{{.Size}}", rows[:1]) == "latest\t74.8MB\n"
    assert render(r"table {{.ID}}\t{{.Repository}}\t{{.Tag}}", rows) == (
        "IMAGE ID       REPOSITORY           TAG\n"
        "0123456789ab   ubuntu               latest\n"
        "ba9876543210   a-much-longer-name   <none>\n")
    doc = json.loads(render("{{json .}}", rows[:1]))
    assert doc["Repository"] == "ubuntu" and doc["Size"] == "74.8MB"
    assert "\\u003cnone\\u003e" in render("{{json .}}", rows[1:])
    with pytest.raises(UsageError, match=r"\.Nope"):
        render("{{.ID}} {{.Nope}}", rows)


# -- against the registry ---------------------------------------------------------------


@pytest.fixture(scope="module")
def pulled_once(registry, tmp_path_factory):
    """Two tags of one repository and a multi-platform image, pulled into a template store."""
    repo = f"cli/app-{uuid.uuid4().hex[:8]}"
    with registry.client() as c:
        v1 = push_image(c, repo, "v1", [one_layer(), one_layer()],
                        config_extra={"created": "2020-05-06T07:08:09Z"})
        v2 = push_image(c, repo, "v2", [one_layer()])
        amd = push_image(c, repo, None, [one_layer()], platform=("linux", "amd64"))
        arm = push_image(c, repo, None, [one_layer()], platform=("linux", "arm64"))
        att = push_image(c, repo, None, [b"{}"], layer_media_type="application/vnd.in-toto+json")
        multi = push_index(c, repo, "multi", [
            (amd, {"os": "linux", "architecture": "amd64"}),
            (arm, {"os": "linux", "architecture": "arm64", "variant": "v8"}),
            (att, {"os": "unknown", "architecture": "unknown"}),
        ])
    name = f"{registry.host}/{repo}"
    template = tmp_path_factory.mktemp("pulled") / "cache"
    for tag in ("v1", "v2"):
        lazyfs("--cache-dir", str(template), "pull", "-q", f"{name}:{tag}")
    lazyfs("--cache-dir", str(template), "pull", "-q", "--platform", "linux/amd64", f"{name}:multi")
    return name, {"v1": v1, "v2": v2, "multi": multi, "amd": amd, "arm": arm}, template


@pytest.fixture
def pulled(pulled_once, cache_dir):
    """A private copy of the template store, so tests may change it."""
    name, images, template = pulled_once
    shutil.copytree(template, cache_dir)
    return name, images


def test_images_default_quiet_digests_and_no_trunc(pulled):
    name, img = pulled
    lines = lazyfs("images").stdout.splitlines()
    assert lines[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert lines[0].index("TAG") == len(name) + 3
    v1 = next(line for line in lines if " v1 " in line)
    hexid = sha256(img["v1"].config)[7:19]
    size = human_size(2 * 3000)  # the unpacked files: etc/data in each of two layers
    assert v1.split() == [name, "v1", hexid, *human_since_words(v1), size]
    assert "years ago" in v1
    # Newest first: v1 was created in 2020, the others in 2024.
    assert [line.split()[1] for line in lines[1:]][-1] == "v1"

    ids = lazyfs("images", "-q").stdout.split()
    assert len(ids) == 3 and hexid in ids and all(len(i) == 12 for i in ids)
    assert sha256(img["v1"].config) in lazyfs("images", "-q", "--no-trunc").stdout.split()

    dig = lazyfs("images", "--digests").stdout.splitlines()
    assert dig[0].split()[:3] == ["REPOSITORY", "TAG", "DIGEST"]
    multi = next(line for line in dig if " multi " in line)
    assert multi.split()[2] == img["multi"].digest
    assert multi.split()[3] == sha256(img["amd"].config)[7:19]


def human_since_words(line: str) -> list[str]:
    words = line.split()
    return words[3:-1]


def test_images_filter_and_format(pulled):
    name, img = pulled
    out = lazyfs("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}", f"{name}:v2").stdout
    assert out == f"{name}:v2 {sha256(img['v2'].config)[7:19]}\n"
    out = lazyfs("images", "--format", r"{{.Tag}}\t{{.Digest}}", name).stdout
    assert sorted(out.splitlines()) == sorted(
        [f"multi\t{img['multi'].digest}", f"v1\t{img['v1'].digest}", f"v2\t{img['v2'].digest}"])
    table = lazyfs("images", "--format", r"table {{.Tag}}\t{{.Size}}", f"{name}:v*").stdout.splitlines()
    assert table[0].split() == ["TAG", "SIZE"] and len(table) == 3
    assert lazyfs("images", f"{name}:nope").stdout.splitlines()[1:] == []

    doc = json.loads(lazyfs("images", "--format", "{{json .}}", f"{name}:v1").stdout)
    assert doc["Tag"] == "v1" and doc["Digest"] == img["v1"].digest and doc["CreatedAt"].startswith("2020-05-06 07:08:09")

    bad = lazyfs("images", "--format", "{{.Repository}} {{.Bogus}}", check=False)
    assert bad.returncode == UsageError.exit_code
    assert bad.stderr.startswith("lazyfs: ") and ".Bogus" in bad.stderr and len(bad.stderr.splitlines()) == 1


def test_inspect_prints_manifest_config_and_layers_without_fetching_layers(registry, cache_dir):
    repo = f"cli/inspect-{uuid.uuid4().hex[:8]}"
    with registry.client() as c:
        amd = push_image(c, repo, None, [one_layer()], platform=("linux", "amd64"),
                         config_extra={"config": {"Env": ["A=1"], "Entrypoint": ["/bin/app"], "Cmd": ["--x"],
                                                  "WorkingDir": "/srv", "User": "nobody",
                                                  "Labels": {"k": "v"}}},
                         layer_annotations=[{"org.example.layer": "first"}])
        arm = push_image(c, repo, None, [one_layer()], platform=("linux", "arm64"))
        att = push_image(c, repo, None, [b"{}"], layer_media_type="application/vnd.in-toto+json")
        multi = push_index(c, repo, "v1", [
            (amd, {"os": "linux", "architecture": "amd64"}),
            (arm, {"os": "linux", "architecture": "arm64", "variant": "v8"}),
            (att, {"os": "unknown", "architecture": "unknown"}),
        ])
    ref = f"{registry.host}/{repo}:v1"
    doc = json.loads(lazyfs("inspect", "--platform", "linux/amd64", ref).stdout)
    assert doc["Name"] == ref
    assert doc["Digest"] == multi.digest and doc["MediaType"] == multi.media_type
    assert doc["Manifest"] == {"Digest": amd.digest, "MediaType": amd.media_type}
    assert doc["Platform"] == "linux/amd64"
    assert doc["Platforms"] == ["linux/amd64", "linux/arm64/v8"]
    cfg = doc["Config"]
    assert cfg["Digest"] == sha256(amd.config)
    assert (cfg["Env"], cfg["Entrypoint"], cfg["Cmd"], cfg["WorkingDir"], cfg["User"], cfg["Labels"]) == (
        ["A=1"], ["/bin/app"], ["--x"], "/srv", "nobody", {"k": "v"})
    assert cfg["Created"] == "2024-01-02T03:04:05Z"
    assert doc["Layers"] == [{"Digest": sha256(amd.layers[0]), "MediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                              "Size": len(amd.layers[0]), "Annotations": {"org.example.layer": "first"}}]
    assert not any(f"GET /v2/{repo}/blobs/{sha256(amd.layers[0])}" in line
                   for line in registry.access_log().splitlines())
    assert not Store(cache_dir).has_blob(sha256(amd.layers[0]))

    arm_doc = json.loads(lazyfs("inspect", "--platform", "linux/arm64", ref).stdout)
    assert arm_doc["Manifest"]["Digest"] == arm.digest and arm_doc["Platform"].startswith("linux/arm64")


def test_images_format_json_and_go_template_actions(pulled):
    name, img = pulled
    lines = lazyfs("images", "--format", "json", f"{name}:v*").stdout.splitlines()
    assert sorted(json.loads(line)["Tag"] for line in lines) == ["v1", "v2"]
    out = lazyfs("images", "--format", '{{if eq .Tag "v1"}}{{.Tag | printf "%s!"}}{{end}}',
                 f"{name}:v*").stdout
    assert sorted(out.splitlines()) == ["", "v1!"]
    assert lazyfs("images", "--format", "table", f"{name}:v1").stdout.split()[:2] == ["REPOSITORY", "TAG"]


def test_inspect_format_and_raw(registry, cache_dir):
    repo = f"cli/inspect-f-{uuid.uuid4().hex[:8]}"
    with registry.client() as c:
        amd = push_image(c, repo, None, [one_layer()], platform=("linux", "amd64"))
        multi = push_index(c, repo, "v1", [(amd, {"os": "linux", "architecture": "amd64"})])
    ref = f"{registry.host}/{repo}:v1"
    assert lazyfs("inspect", "-f", "{{.Config.Digest}}", ref).stdout == sha256(amd.config) + "\n"
    out = lazyfs("inspect", "--format", "{{range .Layers}}{{.Size}} {{end}}{{json .Platforms}}", ref).stdout
    assert out == f'{len(amd.layers[0])} ["linux/amd64"]\n'
    raw = subprocess.run([sys.executable, "-m", "lazyfs", "inspect", "--raw", ref],
                         capture_output=True, cwd=ROOT, timeout=120, check=True).stdout
    assert raw == multi.manifest
    chosen = subprocess.run([sys.executable, "-m", "lazyfs", "inspect", "--raw", "--platform",
                             "linux/amd64", ref], capture_output=True, cwd=ROOT, timeout=120,
                            check=True).stdout
    assert chosen == amd.manifest
    bad = lazyfs("inspect", "-f", "{{.Name | nosuch}}", ref, check=False)
    assert bad.returncode == UsageError.exit_code and "nosuch" in bad.stderr
    assert len(bad.stderr.splitlines()) == 1


def test_inspect_works_offline_for_a_pulled_image(tmp_path, cache_dir):
    reg = start_registry(tmp_path / "short-lived")
    try:
        with reg.client() as c:
            pushed = push_image(c, "off/line", "v1", [one_layer()])
        ref = f"{reg.host}/off/line:v1"
        online = json.loads(lazyfs("inspect", ref).stdout)
        lazyfs("pull", "-q", ref)
    finally:
        reg.stop()
    offline = json.loads(lazyfs("inspect", ref).stdout)
    assert offline == online and offline["Digest"] == pushed.digest
    by_digest = json.loads(lazyfs("inspect", f"{reg.host}/off/line@{pushed.digest}").stdout)
    assert by_digest["Layers"] == online["Layers"]
    never = lazyfs("inspect", f"{reg.host}/off/line:other", check=False)
    assert never.returncode == RegistryUnreachable.exit_code, never.stderr


def test_rmi_and_prune(pulled, cache_dir):
    name, img = pulled
    store = Store(cache_dir)
    v1_layers = [sha256(b) for b in img["v1"].layers]
    assert all(store.has_blob(d) for d in v1_layers)

    out = lazyfs("rmi", f"{name}:v1").stdout
    assert out == f"Untagged: {name}:v1\n"
    missing = lazyfs("rmi", f"{name}:v1", check=False)
    assert missing.returncode == NotFound.exit_code and f"{name}:v1" in missing.stderr

    out = lazyfs("prune", "-f").stdout.splitlines()
    assert out[0].startswith("Deleted 4 blobs,")  # v1: manifest, config, two layers
    assert all(not store.has_blob(d) for d in v1_layers)
    assert store.has_blob(sha256(img["v2"].layers[0]))

    lazyfs("rmi", f"{name}@{img['v2'].digest}")
    hexid = sha256(img["amd"].config)[7:19]
    assert lazyfs("rmi", hexid).stdout == f"Untagged: {name}:multi\n"
    assert lazyfs("images", "-q").stdout == ""
    out = lazyfs("prune", "--all", "-f").stdout
    assert "Total reclaimed space" in out
    assert not any((cache_dir / "blobs" / "sha256").iterdir())


def test_images_size_is_the_unpacked_size_whatever_the_compression(registry, cache_dir):
    repo = f"cli/size-{uuid.uuid4().hex[:8]}"
    files = {"etc/": None, "etc/big": os.urandom(40_000), "etc/zeros": bytes(250_000),
             "etc/link": ("symlink", "big"), "etc/hard": ("hardlink", "etc/big")}
    tar = make_tar(files)
    with registry.client() as c:
        push_image(c, repo, "gz", [gzip_bytes(tar), gzip_bytes(make_tar({"more": b"x" * 7}))])
        push_image(c, repo, "tar", [tar, make_tar({"more": b"x" * 7})],
                   layer_media_type="application/vnd.oci.image.layer.v1.tar")
    name = f"{registry.host}/{repo}"
    for tag in ("gz", "tar"):
        lazyfs("pull", "-q", f"{name}:{tag}")
    sizes = dict(line.split() for line in
                 lazyfs("images", "--format", "{{.Tag}} {{.Size}}", name).stdout.splitlines())
    assert sizes == {"gz": human_size(290_007), "tar": human_size(290_007)}


def lazyfs_with_stdin(*args: str, answer: str | None) -> subprocess.CompletedProcess:
    """``lazyfs`` with no terminal (``answer=None``) or a terminal on stdin that
    has ``answer`` typed."""
    if answer is None:
        return subprocess.run([sys.executable, "-m", "lazyfs", *args], capture_output=True,
                              text=True, cwd=ROOT, timeout=120, stdin=subprocess.DEVNULL)
    import pty
    main_fd, tty_fd = pty.openpty()
    try:
        os.write(main_fd, answer.encode() + b"\n")
        return subprocess.run([sys.executable, "-m", "lazyfs", *args], capture_output=True,
                              text=True, cwd=ROOT, timeout=120, stdin=tty_fd)
    finally:
        os.close(tty_fd)
        os.close(main_fd)


def test_prune_asks_on_a_terminal_and_needs_force_without_one(pulled, cache_dir):
    name, img = pulled
    lazyfs("rmi", f"{name}:v1")
    store = Store(cache_dir)
    v1_layers = [sha256(b) for b in img["v1"].layers]

    refused = lazyfs_with_stdin("prune", answer=None)
    assert refused.returncode == UsageError.exit_code, refused.stderr
    assert refused.stderr.count("\n") == 1 and "-f" in refused.stderr
    assert all(store.has_blob(d) for d in v1_layers)

    declined = lazyfs_with_stdin("prune", answer="n")
    assert declined.returncode == 0, declined.stderr
    assert declined.stdout.startswith("WARNING! This will remove")
    assert "Are you sure you want to continue? [y/N]" in declined.stdout
    assert "Deleted" not in declined.stdout
    assert all(store.has_blob(d) for d in v1_layers)

    ended = lazyfs_with_stdin("prune", answer="\x04")  # Ctrl-D: no answer is no
    assert ended.returncode == 0 and "Traceback" not in ended.stderr, ended.stderr
    assert all(store.has_blob(d) for d in v1_layers)

    accepted = lazyfs_with_stdin("prune", answer="y")
    assert accepted.returncode == 0, accepted.stderr
    assert "Deleted 4 blobs," in accepted.stdout
    assert all(not store.has_blob(d) for d in v1_layers)

    assert lazyfs_with_stdin("prune", "--all", "-f", answer=None).returncode == 0
    assert lazyfs("images", "-q").stdout == ""


def test_rmi_force_untags_every_name_of_an_image_id(pulled, cache_dir):
    name, img = pulled
    lazyfs("pull", "-q", f"{name}@{img['v2'].digest}")
    hexid = sha256(img["v2"].config)[7:19]
    refused = lazyfs("rmi", hexid, check=False)
    assert refused.returncode == CacheError.exit_code
    assert refused.stderr == f"lazyfs: unable to delete {hexid} (must be forced): image is " \
                             "referenced by 2 names\n"
    assert hexid in lazyfs("images", "-q").stdout.split()
    out = lazyfs("rmi", "-f", hexid).stdout
    assert sorted(out.splitlines()) == sorted([f"Untagged: {name}:v2",
                                               f"Untagged: {name}@{img['v2'].digest}"])
    assert hexid not in lazyfs("images", "-q").stdout.split()


def test_cache_dir_option_and_unusable_store(tmp_path, cache_dir, registry):
    repo = f"cli/cachedir-{uuid.uuid4().hex[:8]}"
    with registry.client() as c:
        push_image(c, repo, "v1", [one_layer()])
    other = tmp_path / "elsewhere"
    lazyfs("--cache-dir", str(other), "pull", "-q", f"{registry.host}/{repo}:v1")
    assert len(lazyfs("images", "-q", "--cache-dir", str(other)).stdout.split()) == 1
    assert lazyfs("images", "-q").stdout == ""
    assert (other.stat().st_mode & 0o777) == 0o700

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    p = lazyfs("images", "--cache-dir", str(shared), check=False)
    assert p.returncode == CacheError.exit_code
    assert p.stderr == f"lazyfs: cache directory {shared} is world-writable; refusing to use it\n"

    p = lazyfs("pull", "oci:/some/layout:v1", check=False)
    assert p.returncode == UsageError.exit_code and "local image" in p.stderr

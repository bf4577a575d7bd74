"""``lazyfs pull`` as a user runs it, against a real registry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from lazyfs.errors import (DigestMismatch, InvalidReference, NoMatchingPlatform, NotFound, Unauthorized,
                           UsageError)
from lazyfs.store.blobs import Store
from lazyfs.testing.push import (DOCKER_LAYER_GZIP, OCI_LAYER_GZIP, OCI_LAYER_TAR, push_image,
                                 push_index, sha256)
from lazyfs.testing.proxy import ThrottleProxy
from tests.support.images import gzip_bytes, make_tar

ROOT = Path(__file__).resolve().parents[2]


def lazyfs(*args: str, check: bool | None = True, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "lazyfs", *args], capture_output=True, text=True,
                       cwd=ROOT, timeout=120, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"lazyfs {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def repo_name(tag: str) -> str:
    return f"pull/{tag}-{uuid.uuid4().hex[:8]}"


def layers(n: int = 2) -> list[bytes]:
    return [gzip_bytes(make_tar({f"dir{i}/": None, f"dir{i}/file": os.urandom(2000)})) for i in range(n)]


def store_blobs(cache: Path) -> set[str]:
    d = cache / "blobs" / "sha256"
    return {f"sha256:{p.name}" for p in d.iterdir()} if d.exists() else set()


@pytest.mark.parametrize("oci", [True, False], ids=["oci", "docker"])
def test_pull_stores_verified_blobs_and_records_the_image(registry, cache_dir, oci):
    repo = repo_name("img")
    blobs = layers(2)
    with registry.client() as c:
        pushed = push_image(c, repo, "v1", blobs, oci=oci,
                            layer_media_type=OCI_LAYER_GZIP if oci else DOCKER_LAYER_GZIP)
    ref = f"{registry.host}/{repo}:v1"
    out = lazyfs("pull", ref).stdout.splitlines()
    assert out == [f"Digest: {pushed.digest}", f"Status: Downloaded newer image for {ref}", ref]

    store = Store(cache_dir)
    for data in blobs + [pushed.config, pushed.manifest]:
        assert store.blob_path(sha256(data)).read_bytes() == data
    [rec] = store.list_images()
    assert (rec.repository, rec.tag, rec.digest, rec.manifest_digest) == (
        f"{registry.host}/{repo}", "v1", pushed.digest, pushed.digest)
    assert rec.config_digest == sha256(pushed.config)
    assert rec.media_type == pushed.media_type
    assert rec.size == len(pushed.config) + sum(len(b) for b in blobs)
    assert rec.platform == "linux/amd64" and rec.created == "2024-01-02T03:04:05Z"

    again = lazyfs("pull", ref).stdout.splitlines()
    assert again[1] == f"Status: Image is up to date for {ref}"
    assert lazyfs("pull", "-q", ref).stdout == ref + "\n"
    assert len(store.list_images()) == 1


def test_pull_by_digest_and_default_tag(registry, cache_dir):
    repo = repo_name("dig")
    with registry.client() as c:
        pushed = push_image(c, repo, "latest", layers(1))
    name = f"{registry.host}/{repo}"
    assert lazyfs("pull", "-q", name).stdout == f"{name}:latest\n"
    assert lazyfs("pull", "-q", f"{name}@{pushed.digest}").stdout == f"{name}@{pushed.digest}\n"
    recs = Store(cache_dir).list_images()
    assert {(r.tag, r.digest) for r in recs} == {("latest", pushed.digest), (None, pushed.digest)}


def push_multiarch(c, repo: str, tag: str):
    amd = push_image(c, repo, None, layers(1), platform=("linux", "amd64"))
    arm = push_image(c, repo, None, layers(1), platform=("linux", "arm64"))
    # An attestation manifest, as buildx attaches: platform unknown/unknown.
    att_layer = b'{"predicateType": "https://slsa.dev/provenance/v0.2"}'
    att = push_image(c, repo, None, [att_layer], layer_media_type="application/vnd.in-toto+json")
    index = push_index(c, repo, tag, [
        (amd, {"os": "linux", "architecture": "amd64"}),
        (arm, {"os": "linux", "architecture": "arm64", "variant": "v8"}),
        (att, {"os": "unknown", "architecture": "unknown"}),
    ])
    return index, amd, arm, att


def test_pull_multiarch_index_picks_the_platform_and_skips_attestations(registry, cache_dir):
    repo = repo_name("multi")
    with registry.client() as c:
        index, amd, arm, att = push_multiarch(c, repo, "v1")
    ref = f"{registry.host}/{repo}:v1"
    out = lazyfs("pull", "--platform", "linux/arm64", ref).stdout.splitlines()
    assert out[0] == f"Digest: {index.digest}"
    store = Store(cache_dir)
    [rec] = store.list_images()
    assert (rec.digest, rec.manifest_digest, rec.platform) == (index.digest, arm.digest, "linux/arm64")
    have = store_blobs(cache_dir)
    assert {index.digest, arm.digest, sha256(arm.config), sha256(arm.layers[0])} <= have
    assert sha256(amd.layers[0]) not in have and sha256(att.layers[0]) not in have

    p = lazyfs("pull", "--platform", "windows/amd64", ref, check=False)
    assert p.returncode == NoMatchingPlatform.exit_code
    assert p.stderr.startswith("lazyfs: ") and "windows/amd64" in p.stderr and len(p.stderr.splitlines()) == 1


def test_all_tags_refused_with_a_tag_or_digest(registry, cache_dir):
    for ref in [f"{registry.host}/x/y:v1", f"{registry.host}/x/y@sha256:{'a' * 64}"]:
        p = lazyfs("pull", "-a", ref, check=False)
        assert p.returncode == UsageError.exit_code
        assert p.stderr == "lazyfs: tag can't be used with --all-tags/-a\n"


def test_all_tags_pulls_every_tag(registry, cache_dir):
    repo = repo_name("all")
    with registry.client() as c:
        for tag in ["a", "b", "c"]:
            push_image(c, repo, tag, layers(1))
    name = f"{registry.host}/{repo}"
    out = lazyfs("pull", "-a", "-q", name).stdout.split()
    assert sorted(out) == [f"{name}:a", f"{name}:b", f"{name}:c"]
    assert sorted(r.tag for r in Store(cache_dir).list_images()) == ["a", "b", "c"]


def test_exit_codes_for_bad_reference_missing_image_and_auth(registry, auth_registry, cache_dir, docker_config):
    cases = [
        (["pull", "Ubuntu:latest"], InvalidReference.exit_code),
        (["pull", f"{registry.host}/nope/missing:v1"], NotFound.exit_code),
        (["inspect", f"{registry.host}/nope/missing:v1"], NotFound.exit_code),
        (["pull", f"{auth_registry.host}/private/app:v1"], Unauthorized.exit_code),
        (["pull", "--bogus-flag", "x"], 2),
    ]
    for args, code in cases:
        p = lazyfs(*args, check=False)
        assert p.returncode == code, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 or args[1] == "--bogus-flag", p.stderr
        assert "Traceback" not in p.stderr
    assert "s3cret" not in p.stderr


def test_pull_from_auth_registry_with_credentials(auth_registry, cache_dir, docker_config):
    import base64
    import json
    repo = repo_name("auth")
    with auth_registry.client() as c:
        push_image(c, repo, "v1", layers(1))
    token = base64.b64encode(b"alice:s3cret").decode()
    (docker_config / "config.json").write_text(json.dumps({"auths": {auth_registry.host: {"auth": token}}}))
    ref = f"{auth_registry.host}/{repo}:v1"
    assert lazyfs("pull", "-q", ref).stdout == ref + "\n"


def test_corrupted_blob_in_registry_is_refused(registry, cache_dir):
    repo = repo_name("bad")
    blob = gzip_bytes(make_tar({"f": os.urandom(5000)}))
    with registry.client() as c:
        push_image(c, repo, "v1", [blob])
    digest = sha256(blob)
    hexd = digest.split(":")[1]
    data = registry.root / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexd[:2] / hexd / "data"
    evil = bytearray(blob)
    evil[len(evil) // 2] ^= 0xFF
    data.write_bytes(bytes(evil))
    try:
        p = lazyfs("pull", f"{registry.host}/{repo}:v1", check=False)
        assert p.returncode == DigestMismatch.exit_code, p.stderr
        assert digest in p.stderr
        assert digest not in store_blobs(cache_dir)
        assert Store(cache_dir).list_images() == []
        assert not any((cache_dir / "tmp").iterdir())
    finally:
        data.write_bytes(blob)


def test_sigkill_during_pull_then_clean_repull(registry, cache_dir):
    repo = repo_name("kill")
    big = os.urandom(24 << 20)
    blob = make_tar({"big": big})
    with registry.client() as c:
        pushed = push_image(c, repo, "v1", [blob], layer_media_type=OCI_LAYER_TAR)
    with ThrottleProxy(registry.host, rate=8 << 20) as proxy:
        ref = f"{proxy.host}/{repo}:v1"
        proc = subprocess.Popen([sys.executable, "-m", "lazyfs", "pull", "--insecure-registry", proxy.host, ref],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proxy.wait_for(4 << 20)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
        assert proc.returncode == -signal.SIGKILL
        have = store_blobs(cache_dir)
        assert sha256(blob) not in have
        for d in have:
            assert Store(cache_dir).blob_path(d).read_bytes() and sha256(Store(cache_dir).read_bytes(d)) == d
        assert Store(cache_dir).list_images() == []
        [partial] = list((cache_dir / "tmp").iterdir())
        kept = partial.stat().st_size
        assert 0 < kept < len(blob)

        proxy.rate = 1 << 30
        before = proxy.bytes_down
        out = lazyfs("pull", "--insecure-registry", proxy.host, ref).stdout.splitlines()
        # The re-pull resumed from the partial file rather than starting over.
        assert proxy.bytes_down - before < len(blob) - kept // 2
    assert out[0] == f"Digest: {pushed.digest}"
    store = Store(cache_dir)
    assert store.blob_path(sha256(blob)).read_bytes() == blob
    assert not any((cache_dir / "tmp").iterdir())
    assert len(store.list_images()) == 1


def test_tty_progress_and_concurrent_pulls_of_one_image(registry, cache_dir):
    import pty
    repo = repo_name("tty")
    blobs = [gzip_bytes(make_tar({"f": os.urandom(300_000)})) for _ in range(3)]
    with registry.client() as c:
        pushed = push_image(c, repo, "v1", blobs)
    ref = f"{registry.host}/{repo}:v1"
    other = subprocess.Popen([sys.executable, "-m", "lazyfs", "pull", "-q", ref], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    leader, follower = pty.openpty()
    try:
        p = subprocess.run([sys.executable, "-m", "lazyfs", "pull", ref], cwd=ROOT, stdout=follower,
                           stderr=follower, timeout=120)
        os.close(follower)
        screen = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
    finally:
        os.close(leader)
    out, err = other.communicate(timeout=120)
    assert p.returncode == 0 and other.returncode == 0, (p.stderr, err)
    assert out == ref + "\n"
    text = screen.decode()
    for b in blobs:
        short = sha256(b)[7:19]
        assert f"{short}: " in text
    assert "\x1b[2K" in text and ("Pull complete" in text or "Already exists" in text)
    assert f"Digest: {pushed.digest}" in text
    store = Store(cache_dir)
    assert all(store.blob_path(sha256(b)).read_bytes() == b for b in blobs)
    assert not any((cache_dir / "tmp").iterdir())
    assert len(store.list_images()) == 1


def test_bad_leftover_partial_download_is_discarded_and_refetched(registry, cache_dir):
    repo = repo_name("leftover")
    blob = gzip_bytes(make_tar({"f": os.urandom(50_000)}))
    with registry.client() as c:
        push_image(c, repo, "v1", [blob])
    Store(cache_dir)
    leftover = cache_dir / "tmp" / f"sha256-{sha256(blob)[7:]}.999999.abcd.part"
    leftover.write_bytes(b"\0" * (len(blob) // 2))
    lazyfs("pull", "-q", f"{registry.host}/{repo}:v1")
    assert Store(cache_dir).blob_path(sha256(blob)).read_bytes() == blob
    assert not any((cache_dir / "tmp").iterdir())

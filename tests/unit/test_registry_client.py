"""``RegistryClient`` against the memory registry: what it asks for, what it
makes of the answers, and which ``LazyfsError`` each failure becomes."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest
import trio

from lazyfs.errors import (DigestMismatch, NoMatchingPlatform, NotFound, RangeNotSupported,
                           RegistryInterrupted,
                           RegistryError, RegistryUnreachable, Unauthorized)
from lazyfs.manifest import Platform
from lazyfs.reference import parse_reference
from lazyfs.registry import RegistryClient
from lazyfs.registry.download import fetch_blob
from lazyfs.store.blobs import Store
from lazyfs.testing import MemoryRegistry, build_layer
from lazyfs.testing.manifests import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, image

DATA = bytes(range(251)) * 400
"""Incompressible enough that a tar layer of it is larger than 64 KiB."""


def push(registry: MemoryRegistry, repo: str = "library/app", tag: str = "v1", **kw):
    layer = build_layer("tar", {"etc/hostname": "app\n", "data.bin": DATA})
    return registry.push_image(repo, tag, [layer], **kw), layer


@pytest.fixture
def registry() -> MemoryRegistry:
    return MemoryRegistry()


# --- resolving --------------------------------------------------------------------------

@pytest.mark.parametrize("oci", [True, False])
async def test_resolve_by_tag_and_by_digest(registry, oci):
    pushed, layer = push(registry, oci=oci)
    async with RegistryClient(registry.options()) as client:
        by_tag = await client.resolve(parse_reference(pushed.ref))
        by_digest = await client.resolve(parse_reference(pushed.by_digest))
    for r in (by_tag, by_digest):
        assert r.digest == pushed.digest
        assert r.pinned.digest == pushed.digest
        assert r.index is None
        assert r.manifest.media_type == (OCI_MANIFEST if oci else DOCKER_MANIFEST)
        assert [d.digest for d in r.manifest.layers] == [layer.digest]
        assert r.config.diff_ids == (layer.diff_id,)
        assert list(r.platforms) == [Platform("linux", "amd64")]
    assert registry.count("ping") == 1


@pytest.mark.parametrize("oci", [True, False])
async def test_platform_chosen_from_an_index(registry, oci):
    amd = registry.push_image("multi", None, [build_layer("gzip", {"arch": "amd64"})], oci=oci)
    arm = registry.push_image("multi", None, [build_layer("gzip", {"arch": "arm64"})], oci=oci,
                              platform={"os": "linux", "architecture": "arm64",
                                        "variant": "v8"})
    top = registry.push_index("multi", "latest", [amd, arm], oci=oci)
    ref = parse_reference(top.ref)
    async with RegistryClient(registry.options()) as client:
        got_arm = await client.resolve(ref, Platform.parse("linux/arm64"))
        got_amd = await client.resolve(ref, Platform.parse("linux/amd64"))
        with pytest.raises(NoMatchingPlatform):
            await client.resolve(ref, Platform.parse("linux/s390x"))
    assert got_arm.manifest.digest == arm.digest
    assert got_amd.manifest.digest == amd.digest
    assert got_arm.digest == top.digest
    assert got_arm.index.media_type == (OCI_INDEX if oci else DOCKER_LIST)
    assert {str(p) for p in got_arm.platforms} == {"linux/amd64", "linux/arm64/v8"}


async def test_a_registry_named_with_a_port():
    registry = MemoryRegistry("127.0.0.1:5000")
    pushed, _ = push(registry)
    async with RegistryClient(registry.options()) as client:
        resolved = await client.resolve(parse_reference(pushed.ref))
    assert resolved.manifest.digest == pushed.digest
    assert {r.host for r in registry.requests} == {"127.0.0.1:5000"}


async def test_head_manifest_reads_no_body(registry):
    pushed, _ = push(registry)
    async with RegistryClient(registry.options()) as client:
        desc = await client.head_manifest(parse_reference(pushed.ref))
    assert (desc.digest, desc.size, desc.media_type) == \
        (pushed.digest, len(pushed.manifest), OCI_MANIFEST)
    assert [(r.method, r.sent) for r in registry.seen("manifest")] == [("HEAD", 0)]


async def test_missing_image_is_not_found(registry):
    push(registry)
    async with RegistryClient(registry.options()) as client:
        with pytest.raises(NotFound, match="manifest unknown"):
            await client.resolve(parse_reference("registry.test/library/app:v2"))
        with pytest.raises(NotFound, match="manifest unknown"):
            await client.resolve(parse_reference("registry.test/library/other:v1"))
        with pytest.raises(NotFound, match="repository unknown"):
            await client.list_tags(parse_reference("registry.test/library/other"))


async def test_unknown_host_is_unreachable(registry):
    async with RegistryClient(registry.options()) as client:
        with pytest.raises(RegistryUnreachable, match="elsewhere.test"):
            await client.resolve(parse_reference("elsewhere.test/app:v1"))


# --- auth -------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["basic", "bearer"])
async def test_credentials_are_used_and_checked(scheme):
    registry = MemoryRegistry(auth=scheme)
    pushed, layer = push(registry)
    ref = parse_reference(pushed.ref)
    async with RegistryClient(registry.options(auth=registry.credentials("alice", "s3cret"))) \
            as client:
        resolved = await client.resolve(ref)
        assert await client.get_range(ref, layer.digest, 0, 100) == layer.blob[:100]
    assert resolved.manifest.digest == pushed.digest
    if scheme == "bearer":
        token = registry.seen("token")[0]
        assert token.url.params.get_list("scope") == ["repository:library/app:pull"]
        assert token.url.params["service"] == "memory-registry"
    async with RegistryClient(registry.options(auth=registry.credentials("alice", "wrong"))) \
            as client:
        with pytest.raises(Unauthorized):
            await client.resolve(ref)


async def test_anonymous_bearer_pulls_when_allowed():
    registry = MemoryRegistry(auth="bearer", anonymous=True)
    pushed, _ = push(registry)
    async with RegistryClient(registry.options()) as client:
        assert (await client.resolve(parse_reference(pushed.ref))).manifest.digest \
            == pushed.digest
        with pytest.raises(Unauthorized):
            await client.push_blob(parse_reference(pushed.ref), b"not allowed")


# --- blobs and ranges ---------------------------------------------------------------------

async def test_single_and_multi_range_reads(registry):
    pushed, layer = push(registry)
    ref = parse_reference(pushed.ref)
    spans = [(0, 10), (5000, 5100), (len(layer.blob) - 7, len(layer.blob))]
    async with RegistryClient(registry.options()) as client:
        one = await client.get_range(ref, layer.digest, 512, 1024)
        many = await client.get_ranges(ref, layer.digest, spans)
        assert client.multi_range(ref) is True
    assert one == layer.blob[512:1024]
    assert many == [layer.blob[s:e] for s, e in spans]
    assert registry.count("range") == 1 and registry.count("multirange") == 1
    assert registry.bytes_sent("range") == 512


async def test_registry_ignoring_range(registry):
    pushed, layer = push(registry)
    ref = parse_reference(pushed.ref)
    registry.fault("ignore_range", kind=("range", "multirange"), times=None)
    async with RegistryClient(registry.options()) as client:
        with pytest.raises(RangeNotSupported):
            await client.get_range(ref, layer.digest, 0, 10)
        with pytest.raises(RangeNotSupported):
            await client.get_ranges(ref, layer.digest, [(0, 10), (100, 110)])
        assert client.multi_range(ref) is False


async def test_multi_range_falls_back_to_single_ranges(registry):
    pushed, layer = push(registry)
    ref = parse_reference(pushed.ref)
    registry.fault("ignore_range", kind="multirange", times=None)
    async with RegistryClient(registry.options()) as client:
        got = await client.get_ranges(ref, layer.digest, [(0, 10), (100, 110)])
        assert client.multi_range(ref) is False
    assert got == [layer.blob[:10], layer.blob[100:110]]
    assert registry.count("range") == 2


async def test_redirects_keep_credentials_home_and_are_reused():
    registry = MemoryRegistry(auth="basic", redirect=True)
    pushed, layer = push(registry)
    ref = parse_reference(pushed.ref)
    async with RegistryClient(registry.options(auth=registry.credentials("alice", "s3cret"))) \
            as client:
        await client.resolve(ref)
        first = await client.get_range(ref, layer.digest, 0, 100)
        second = await client.get_range(ref, layer.digest, 100, 200)
        spans = [(0, 10), (300, 310)]
        assert await client.get_ranges(ref, layer.digest, spans) == \
            [layer.blob[s:e] for s, e in spans]
        assert client.multi_range(ref) is False
    assert first + second == layer.blob[:200]
    storage = registry.seen(host="storage.registry.test")
    assert [r.status for r in storage] == [200, 206, 206, 200, 206, 206]
    assert not any("authorization" in r.headers for r in storage)
    assert registry.count(host="registry.test", digest=layer.digest) == 1


async def test_download_verifies_the_blob(registry, tmp_path):
    pushed, layer = push(registry)
    ref = parse_reference(pushed.ref)
    async with RegistryClient(registry.options()) as client:
        manifest = (await client.resolve(ref)).manifest
        path = await fetch_blob(client, ref, manifest.layers[0], Store(tmp_path / "good"))
        assert path.read_bytes() == layer.blob
        registry.fault("flip", digest=layer.digest)
        bad = Store(tmp_path / "bad")
        with pytest.raises(DigestMismatch):
            await fetch_blob(client, ref, manifest.layers[0], bad)
        assert bad.blob_path(layer.digest) is None


# --- retries and faults --------------------------------------------------------------------

async def test_busy_manifest_is_retried(registry):
    pushed, _ = push(registry)
    registry.fault("status", kind="manifest", status=503, retry_after="0", times=2)
    async with RegistryClient(registry.options()) as client:
        resolved = await client.resolve(parse_reference(pushed.ref))
    assert resolved.manifest.digest == pushed.digest
    assert [r.status for r in registry.seen("manifest")] == [503, 503, 200]


@pytest.mark.parametrize("status, retry_after, requests", [
    (500, None, 3),
    (429, "3600", 1),
])
async def test_busy_for_too_long_is_reported(registry, status, retry_after, requests):
    """Always busy: an error after the retries; a Retry-After beyond
    ``max_backoff``: reported at once rather than waited for."""
    pushed, _ = push(registry)
    registry.fault("status", kind="manifest", status=status, retry_after=retry_after,
                   times=None)
    async with RegistryClient(registry.options(max_retries=2, max_backoff=30)) as client:
        with pytest.raises(RegistryError, match=f"HTTP {status}"):
            await client.resolve(parse_reference(pushed.ref))
    assert registry.count("manifest") == requests


async def test_a_dropped_range_is_sent_once_unless_retries_are_asked_for(registry):
    """A reader's attempts are a range read's retry budget; a whole blob
    fetched in ranges (``retry=True``) uses the client's."""
    pushed, layer = push(registry)
    ref = parse_reference(pushed.ref)
    async with RegistryClient(registry.options(max_retries=1)) as client:
        registry.fault("drop", kind="range")
        with pytest.raises(RegistryUnreachable):
            await client.get_range(ref, layer.digest, 0, 10)
        registry.fault("drop", kind="range")
        assert await client.get_range(ref, layer.digest, 0, 10, retry=True) == layer.blob[:10]
    assert [r.fault for r in registry.seen("range")] == ["drop", "drop", ""]


@pytest.mark.parametrize("action, kw, error", [
    ("drop", {"at": 0.5}, "cut short"),
    ("drop", {"at": 0.5, "error": httpx.RemoteProtocolError}, "cut short"),
    ("truncate", {}, "returned 50 of 100 bytes"),
])
async def test_broken_range_bodies_are_registry_errors(registry, action, kw, error):
    pushed, layer = push(registry)
    registry.fault(action, kind="range", **kw)
    async with RegistryClient(registry.options()) as client:
        with pytest.raises(RegistryError, match=error):
            await client.get_range(parse_reference(pushed.ref), layer.digest, 0, 100)


async def test_tampered_manifest_is_a_digest_mismatch(registry):
    pushed, _ = push(registry)
    registry.fault("flip", kind="manifest")
    async with RegistryClient(registry.options()) as client:
        with pytest.raises(DigestMismatch):
            await client.resolve(parse_reference(pushed.by_digest))


@pytest.mark.parametrize("at", [None, 0.5])
async def test_a_stalled_range_is_cut_at_its_own_deadline(registry, autojump_clock, at):
    """Stalled before its headers or part-way, a range request ends at its
    deadline (first byte + body at the minimum rate), not the caller's."""
    pushed, layer = push(registry)
    registry.fault("stall", kind="range", seconds=600, at=at)
    options = registry.options(first_byte_timeout=5.0, min_rate=1000)
    async with RegistryClient(options) as client:
        started = trio.current_time()
        with trio.fail_after(300):
            with pytest.raises(RegistryInterrupted, match="request cut"):
                await client.get_range(parse_reference(pushed.ref), layer.digest, 0, 1000)
        assert trio.current_time() - started == pytest.approx(6.0, abs=0.5)


# --- tags, pushes, referrers ----------------------------------------------------------------

async def test_tags_follow_pagination(registry):
    for tag in ("v1", "v2", "v3", "latest", "edge"):
        push(registry, tag=tag)
    async with RegistryClient(registry.options()) as client:
        tags = await client.list_tags(parse_reference("registry.test/library/app"), page_size=2)
    assert tags == ["edge", "latest", "v1", "v2", "v3"]
    assert registry.count("tags") == 3


@pytest.mark.parametrize("api", [True, False])
async def test_push_and_find_referrers(api):
    registry = MemoryRegistry(referrers=api)
    pushed, _ = push(registry)
    ref = parse_reference(pushed.ref)
    artifact = image([], subject=pushed.descriptor())
    async with RegistryClient(registry.options()) as client:
        assert await client.push_blob(ref, artifact.config) == \
            "sha256:" + hashlib.sha256(artifact.config).hexdigest()
        at = ref.with_digest(artifact.digest)
        assert await client.push_manifest(at, artifact.manifest, OCI_MANIFEST) == artifact.digest
        if not api:
            registry.add_manifest("library/app", _referrers_index(artifact), OCI_INDEX,
                                  pushed.digest.replace(":", "-"))
        found = await client.get_referrers(ref, pushed.digest)
    assert [d.digest for d in found] == [artifact.digest]
    assert registry.count("referrers") == 1
    assert registry.seen("upload")[-1].status == 201


def _referrers_index(artifact) -> bytes:
    """The tag-schema fallback index a pusher keeps where there is no referrers API."""
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                       "manifests": [{"mediaType": OCI_MANIFEST, "digest": artifact.digest,
                                      "size": len(artifact.manifest)}]}).encode()

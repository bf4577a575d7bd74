"""The memory registry of ``lazyfs.testing``, spoken to in plain HTTP, so that
what other tests learn from it is what a distribution registry would say."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest
import trio

from lazyfs.registry.ranges import boundary_of, parse_multipart
from lazyfs.testing import MemoryRegistry, build_layer
from lazyfs.testing.byteranges import Unsatisfiable, parse_range
from lazyfs.testing.manifests import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, image

BASE = "https://registry.test"
BLOB = bytes(range(256)) * 40
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
ACCEPT_ALL = {"accept": f"{OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}"}


def client(registry: MemoryRegistry, **kw) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=registry, base_url=BASE, **kw)


@pytest.fixture
def registry() -> MemoryRegistry:
    reg = MemoryRegistry()
    reg.add_blob("r", BLOB)
    return reg


def blob_url(digest: str = BLOB_DIGEST, repo: str = "r") -> str:
    return f"/v2/{repo}/blobs/{digest}"


# --- ping, manifests ------------------------------------------------------------------

async def test_ping_answers_like_distribution(registry):
    async with client(registry) as c:
        r = await c.get("/v2/")
    assert r.status_code == 200
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"
    assert registry.seen()[0].kind == "ping"


async def test_manifest_by_tag_and_digest_with_headers(registry):
    pushed = registry.push_image("r", "v1", [build_layer("gzip", {"a": "x"})])
    async with client(registry) as c:
        by_tag = await c.get("/v2/r/manifests/v1", headers=ACCEPT_ALL)
        by_digest = await c.get(f"/v2/r/manifests/{pushed.digest}", headers=ACCEPT_ALL)
        head = await c.head("/v2/r/manifests/v1", headers=ACCEPT_ALL)
    for r in (by_tag, by_digest):
        assert r.status_code == 200
        assert r.content == pushed.manifest
        assert r.headers["docker-content-digest"] == pushed.digest
        assert r.headers["content-type"] == OCI_MANIFEST
    assert head.content == b""
    assert head.headers["content-length"] == str(len(pushed.manifest))
    assert head.headers["docker-content-digest"] == pushed.digest


async def test_oci_types_need_a_matching_accept_docker_types_do_not(registry):
    oci = registry.push_image("r", "oci", [build_layer("tar", {"a": "x"})])
    docker = registry.push_image("r", "docker", [build_layer("gzip", {"a": "x"})], oci=False)
    registry.push_index("r", "multi", [oci])
    async with client(registry) as c:
        refused = await c.get("/v2/r/manifests/oci", headers={"accept": DOCKER_MANIFEST})
        index_refused = await c.get("/v2/r/manifests/multi", headers={"accept": OCI_MANIFEST})
        served = await c.get("/v2/r/manifests/docker")
    assert refused.status_code == index_refused.status_code == 404
    assert refused.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert "accept header does not support OCI indexes" in index_refused.text
    assert served.status_code == 200 and served.content == docker.manifest


async def test_unknown_names_and_tags(registry):
    async with client(registry) as c:
        no_repo = await c.get("/v2/nope/manifests/v1", headers=ACCEPT_ALL)
        no_tags = await c.get("/v2/nope/tags/list")
        no_tag = await c.get("/v2/r/manifests/v9", headers=ACCEPT_ALL)
        no_blob = await c.get(blob_url("sha256:" + "0" * 64))
        no_route = await c.get("/v3/")
    assert no_repo.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert no_tags.json()["errors"][0]["code"] == "NAME_UNKNOWN"
    assert no_tag.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert (no_blob.status_code, no_blob.json()["errors"][0]["code"]) == (404, "BLOB_UNKNOWN")
    assert no_route.status_code == 404 and no_route.text == "404 page not found\n"


# --- ranges ----------------------------------------------------------------------------

@pytest.mark.parametrize("header, spans", [
    ("bytes=0-9", [(0, 10)]),
    ("bytes=10-", [(10, 100)]),
    ("bytes=-5", [(95, 100)]),
    ("bytes=-500", [(0, 100)]),
    ("bytes=90-200", [(90, 100)]),
    ("bytes=0-0, 5-6", [(0, 1), (5, 7)]),
    ("bytes=0-1,200-300", [(0, 2)]),
    ("", []),
])
def test_parse_range_as_go_does(header, spans):
    assert parse_range(header, 100) == spans


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=200-300", "items=0-1", "bytes=5-2",
                                    "bytes=x-1", "bytes=-0", "bytes=0"])
def test_unsatisfiable_ranges(header):
    with pytest.raises(Unsatisfiable):
        parse_range(header, 100)


async def test_single_and_suffix_ranges(registry):
    async with client(registry) as c:
        one = await c.get(blob_url(), headers={"range": "bytes=100-199"})
        suffix = await c.get(blob_url(), headers={"range": "bytes=-10"})
        whole = await c.get(blob_url())
    assert one.status_code == 206 and one.content == BLOB[100:200]
    assert one.headers["content-range"] == f"bytes 100-199/{len(BLOB)}"
    assert suffix.content == BLOB[-10:]
    assert suffix.headers["content-range"] == f"bytes {len(BLOB) - 10}-{len(BLOB) - 1}/{len(BLOB)}"
    assert whole.status_code == 200 and whole.content == BLOB
    assert whole.headers["docker-content-digest"] == BLOB_DIGEST
    assert whole.headers["content-length"] == str(len(BLOB))
    assert [r.kind for r in registry.seen()] == ["range", "range", "blob"]
    assert registry.bytes_sent("range") == 110


async def test_multi_range_is_multipart_byteranges(registry):
    async with client(registry) as c:
        r = await c.get(blob_url(), headers={"range": "bytes=0-3,1000-1009,-2"})
    assert r.status_code == 206
    boundary = boundary_of(r.headers["content-type"])
    assert boundary
    parts = parse_multipart(r.content, boundary)
    assert [(p.start, p.end, p.data) for p in parts] == [
        (0, 4, BLOB[:4]), (1000, 1010, BLOB[1000:1010]),
        (len(BLOB) - 2, len(BLOB), BLOB[-2:])]
    assert registry.seen()[0].kind == "multirange"


async def test_unsatisfiable_and_oversized_multi_ranges(registry):
    """A 416 declares the blob's length and sends Go's short message, so its
    body breaks off, as distribution 2.8's does."""
    async with client(registry) as c:
        async with c.stream("GET", blob_url(), headers={"range": f"bytes={len(BLOB)}-"}) as beyond:
            assert beyond.status_code == 416
            assert beyond.headers["content-range"] == f"bytes */{len(BLOB)}"
            assert beyond.headers["content-length"] == str(len(BLOB))
            with pytest.raises(httpx.RemoteProtocolError):
                await beyond.aread()
        async with c.stream("GET", blob_url(), headers={"range": "items=0-1"}) as invalid:
            assert invalid.status_code == 416 and "content-range" not in invalid.headers
        too_much = await c.get(blob_url(), headers={"range": f"bytes=0-,0-{len(BLOB) - 1}"})
    assert too_much.status_code == 200 and too_much.content == BLOB
    assert registry.seen()[0].sent == len(b"invalid range: failed to overlap\n")


# --- uploads, manifests put, referrers, tags ------------------------------------------

def with_digest(answer: httpx.Response, digest: str) -> httpx.URL:
    """Where to PUT the end of an upload: its Location, ``_state`` kept."""
    return httpx.URL(answer.headers["location"]).copy_merge_params({"digest": digest})


async def test_chunked_upload_then_put(registry):
    data = b"chunk one|chunk two|end"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with client(registry) as c:
        start = await c.post("/v2/new/blobs/uploads/")
        assert start.status_code == 202
        loc = start.headers["location"]
        first = await c.patch(loc, content=data[:10], headers={"content-range": "0-9"})
        assert first.headers["range"] == "0-9"
        stale = await c.patch(loc, content=b"x")
        assert (stale.status_code, stale.json()["errors"][0]["code"]) == \
            (404, "BLOB_UPLOAD_INVALID")
        second = await c.patch(first.headers["location"], content=data[10:20])
        done = await c.put(with_digest(second, digest), content=data[20:])
        got = await c.get(blob_url(digest, "new"))
    assert done.status_code == 201
    assert done.headers["docker-content-digest"] == digest
    assert got.content == data


async def test_upload_checks_digest_and_mounts(registry):
    async with client(registry) as c:
        start = await c.post("/v2/new/blobs/uploads/")
        lost = await c.put(start.headers["location"], params={"digest": BLOB_DIGEST},
                           content=BLOB)
        bad = await c.put(with_digest(start, BLOB_DIGEST), content=b"other")
        ended = await c.put(with_digest(start, BLOB_DIGEST), content=BLOB)
        mono = await c.post("/v2/new/blobs/uploads/", params={"digest": BLOB_DIGEST},
                            content=BLOB)
        mount = await c.post("/v2/third/blobs/uploads/",
                             params={"mount": BLOB_DIGEST, "from": "r"})
        head = await c.head(blob_url(repo="third"))
    assert lost.json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID", "params drop _state"
    assert bad.json()["errors"][0]["code"] == "DIGEST_INVALID"
    assert ended.json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"
    assert mono.status_code == 202 and "new" not in registry.repositories
    assert mount.status_code == 201
    assert head.status_code == 200 and head.headers["content-length"] == str(len(BLOB))


async def test_manifest_put_checks_references_and_digest(registry):
    built = image([build_layer("tar", {"f": "1"})])
    async with client(registry) as c:
        missing = await c.put("/v2/r/manifests/v1", content=built.manifest,
                              headers={"content-type": OCI_MANIFEST})
        registry.add_blob("r", built.config)
        registry.add_blob("r", built.layers[0].blob)
        wrong = await c.put(f"/v2/r/manifests/sha256:{'1' * 64}", content=built.manifest,
                            headers={"content-type": OCI_MANIFEST})
        mismatch = await c.put("/v2/r/manifests/v1", content=built.manifest,
                               headers={"content-type": DOCKER_MANIFEST})
        ok = await c.put("/v2/r/manifests/v1", content=built.manifest,
                         headers={"content-type": OCI_MANIFEST})
    assert missing.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    assert wrong.json()["errors"][0]["code"] == "DIGEST_INVALID"
    assert mismatch.json()["errors"][0]["code"] == "MANIFEST_INVALID"
    assert ok.status_code == 201 and ok.headers["docker-content-digest"] == built.digest
    assert registry.repositories["r"].tags["v1"] == built.digest


@pytest.mark.parametrize("api", [True, False])
async def test_referrers_api_or_none(api):
    registry = MemoryRegistry(referrers=api)
    subject = registry.push_image("r", "v1", [build_layer("tar", {"f": "1"})])
    art = image([], subject=subject.descriptor(),
                config_extra={}).push(registry, "r", None)
    async with client(registry) as c:
        r = await c.get(f"/v2/r/referrers/{subject.digest}")
        filtered = await c.get(f"/v2/r/referrers/{subject.digest}",
                               params={"artifactType": "application/x-other"})
    if not api:
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/plain")
        return
    assert r.headers["content-type"] == OCI_INDEX
    assert [d["digest"] for d in r.json()["manifests"]] == [art.digest]
    assert r.json()["manifests"][0]["artifactType"] == "application/vnd.oci.image.config.v1+json"
    assert filtered.json()["manifests"] == []
    assert filtered.headers["oci-filters-applied"] == "artifactType"


async def test_tags_are_paginated_with_link(registry):
    for tag in ["c", "a", "e", "b", "d"]:
        registry.add_manifest("r", json.dumps({"tag": tag}).encode(), OCI_MANIFEST, tag)
    pages = []
    async with client(registry) as c:
        url = "/v2/r/tags/list?n=2"
        while url:
            r = await c.get(url)
            pages.append(r.json()["tags"])
            link = r.headers.get("link")
            url = link[1:link.index(">")] if link else None
    assert pages == [["a", "b"], ["c", "d"], ["e"]]


# --- auth ------------------------------------------------------------------------------

async def test_basic_auth_challenges_and_checks_passwords():
    registry = MemoryRegistry(auth="basic")
    registry.add_blob("r", BLOB)
    async with client(registry) as anon, client(registry, auth=("alice", "s3cret")) as good, \
            client(registry, auth=("alice", "wrong")) as bad:
        refused = await anon.get("/v2/")
        ok = await good.get(blob_url())
        wrong = await bad.get(blob_url())
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Basic realm=")
    assert ok.status_code == 200 and ok.content == BLOB
    assert wrong.status_code == 401


async def test_bearer_challenge_token_and_scopes():
    registry = MemoryRegistry(auth="bearer", permissions={"bob": "pull"},
                              users={"alice": "s3cret", "bob": "pw"})
    registry.add_blob("r", BLOB)
    async with client(registry) as c:
        refused = await c.get(blob_url())
        challenge = refused.headers["www-authenticate"]
        assert challenge == ('Bearer realm="https://auth.registry.test/token",'
                             'service="memory-registry",scope="repository:r:pull"')
        bad = await c.get("https://auth.registry.test/token", auth=("alice", "nope"),
                          params={"scope": "repository:r:pull"})
        assert bad.status_code == 401
        token = (await c.get("https://auth.registry.test/token", auth=("bob", "pw"),
                             params={"service": "memory-registry",
                                     "scope": "repository:r:pull,push"})).json()["token"]
        bearer = {"authorization": f"Bearer {token}"}
        pulled = await c.get(blob_url(), headers=bearer)
        pushed = await c.post("/v2/r/blobs/uploads/", headers=bearer)
        registry.access.revoke_tokens()
        revoked = await c.get(blob_url(), headers=bearer)
    assert pulled.content == BLOB
    assert pushed.status_code == 401
    assert 'error="insufficient_scope"' in pushed.headers["www-authenticate"]
    assert revoked.status_code == 401
    assert [r.kind for r in registry.seen("token")] == ["token", "token"]


@pytest.mark.parametrize("anonymous", [True, False])
async def test_anonymous_tokens_pull_only_when_allowed(anonymous):
    registry = MemoryRegistry(auth="bearer", anonymous=anonymous)
    registry.add_blob("r", BLOB)
    async with client(registry) as c:
        token = (await c.get("https://auth.registry.test/token",
                             params={"scope": "repository:r:pull,push"})).json()["token"]
        r = await c.get(blob_url(), headers={"authorization": f"Bearer {token}"})
    assert r.status_code == (200 if anonymous else 401)


async def test_catalog_needs_its_own_scope():
    registry = MemoryRegistry(auth="bearer", anonymous=True)
    registry.add_blob("r", BLOB)
    catalog = {"scope": "registry:catalog:*"}
    async with client(registry) as c:
        anon = (await c.get("https://auth.registry.test/token", params=catalog)).json()["token"]
        user = (await c.get("https://auth.registry.test/token", params=catalog,
                            auth=("alice", "s3cret"))).json()["token"]
        refused = await c.get("/v2/_catalog", headers={"authorization": f"Bearer {anon}"})
        listed = await c.get("/v2/_catalog", headers={"authorization": f"Bearer {user}"})
    assert refused.status_code == 401
    assert 'scope="registry:catalog:*"' in refused.headers["www-authenticate"]
    assert listed.json() == {"repositories": ["r"]}


# --- redirects ---------------------------------------------------------------------------

async def test_blobs_redirect_to_expiring_storage_urls(registry):
    registry.redirect = True
    async with client(registry) as c:
        r = await c.get(blob_url())
        assert r.status_code == 307
        target = httpx.URL(r.headers["location"])
        assert target.host == "storage.registry.test"
        got = await c.get(target, headers={"range": "bytes=5-9"})
        several = await c.get(target, headers={"range": "bytes=0-1,5-9"})
        expired = await c.get(target.copy_set_param("Expires", "1000"))
    assert got.status_code == 206 and got.content == BLOB[5:10]
    assert several.status_code == 200 and several.content == BLOB
    assert expired.status_code == 403


# --- faults ------------------------------------------------------------------------------

async def test_status_fault_with_retry_after_from_the_nth_request(registry):
    registry.fault("status", kind="blob", status=503, retry_after="7", nth=2, times=2)
    async with client(registry) as c:
        codes = [(await c.get(blob_url())).status_code for _ in range(4)]
        r = await c.get(blob_url())
    assert codes == [200, 503, 503, 200]
    assert [rec.fault for rec in registry.seen()] == ["", "status", "status", "", ""]
    assert r.status_code == 200


async def test_drop_before_headers_and_mid_body(registry):
    registry.fault("drop", kind="blob")
    registry.fault("drop", kind="range", at=0.5, error=httpx.RemoteProtocolError)
    async with client(registry) as c:
        with pytest.raises(httpx.ReadError):
            await c.get(blob_url())
        with pytest.raises(httpx.RemoteProtocolError):
            await c.get(blob_url(), headers={"range": "bytes=0-999"})
        assert (await c.get(blob_url())).content == BLOB
    assert registry.seen("range")[0].sent == 500


async def test_truncate_flip_and_ignore_range(registry):
    registry.fault("truncate", kind="blob")
    registry.fault("flip", kind="range")
    registry.fault("ignore_range", kind="multirange")
    async with client(registry) as c:
        short = await c.get(blob_url())
        flipped = await c.get(blob_url(), headers={"range": "bytes=0-9"})
        ignored = await c.get(blob_url(), headers={"range": "bytes=0-1,4-5"})
    assert short.content == BLOB[:len(BLOB) // 2]
    assert short.headers["content-length"] == str(len(BLOB))
    assert flipped.content != BLOB[:10] and len(flipped.content) == 10
    assert sum(a != b for a, b in zip(flipped.content, BLOB)) == 1
    assert ignored.status_code == 200 and ignored.content == BLOB


async def test_body_faults_wait_for_a_body(registry):
    """A redirect or a HEAD on the way does not use up a body fault."""
    registry.redirect = True
    registry.fault("truncate", digest=BLOB_DIGEST)
    async with client(registry, follow_redirects=True) as c:
        head = await c.head(blob_url())
        r = await c.get(blob_url())
    assert head.status_code == 200
    assert len(r.content) == len(BLOB) // 2
    assert [(s.host, s.fault) for s in registry.seen(method="GET")] == \
        [("registry.test", ""), ("storage.registry.test", "truncate")]


async def test_stall_is_trio_time(registry, autojump_clock):
    registry.fault("stall", kind="blob", seconds=30)
    registry.fault("stall", kind="range", seconds=5, at=0.5)
    async with client(registry) as c:
        with trio.move_on_after(10) as scope:
            await c.get(blob_url())
        assert scope.cancelled_caught
        before = trio.current_time()
        r = await c.get(blob_url(), headers={"range": "bytes=0-99"})
    assert r.content == BLOB[:100]
    assert trio.current_time() - before >= 5


def test_unknown_fault_names_are_refused(registry):
    with pytest.raises(ValueError):
        registry.fault("explode")
    with pytest.raises(ValueError):
        registry.fault("drop", kind="blobs")


async def test_unknown_hosts_do_not_connect(registry):
    async with httpx.AsyncClient(transport=registry) as c:
        with pytest.raises(httpx.ConnectError):
            await c.get("https://elsewhere.test/v2/")

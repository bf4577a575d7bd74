"""RegistryClient against the real registry, and against small servers for what it won't do."""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import uuid

import httpx
import pytest
import trio

from lazyfs.errors import (DigestMismatch, NoMatchingPlatform, NotFound, RangeNotSupported,
                           RegistryError, RegistryUnreachable, Unauthorized, UnsupportedMediaType)
from lazyfs.manifest import OCI_INDEX as M_OCI_INDEX
from lazyfs.manifest import DOCKER_MANIFEST as M_DOCKER_MANIFEST
from lazyfs.manifest import Descriptor, Platform
from lazyfs.reference import parse_reference
from lazyfs.registry.client import RegistryClient, _next_link
from lazyfs.registry.download import fetch_blob
from lazyfs.store.blobs import Store
from lazyfs.registry.transport import (Endpoint, RegistryOptions, _retry_after, is_insecure,
                                       most_useful_error)
from lazyfs.testing.push import (DOCKER_LIST, OCI_MANIFEST, push_image, push_index, push_manifest,
                                 sha256)
from lazyfs.testing.realregistry import free_port
from tests.support.images import gzip_bytes, make_tar
from tests.support.servers import Request, Response, forward, serve, with_ping

FAST = dict(backoff=0.01)


def new_repo(prefix: str = "reg") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:10]}"


def layer(seed: str = "x") -> bytes:
    return gzip_bytes(make_tar({"etc/": None, "etc/hello": f"hello {seed}\n" + "z" * 3000}))


@pytest.fixture
async def client(docker_config):
    async with RegistryClient(RegistryOptions(**FAST)) as c:
        yield c


@pytest.fixture
def pushed(registry):
    with registry.client() as c:
        repo = new_repo()
        return push_image(c, repo, "v1", [layer("a"), layer("b")])


def ref_to(host: str, repo: str, ident: str = "v1"):
    sep = "@" if ident.startswith("sha256:") else ":"
    return parse_reference(f"{host}/{repo}{sep}{ident}")


# --- resolve ------------------------------------------------------------------


async def test_resolve_oci_image_by_tag_and_digest(client, registry, pushed):
    r = await client.resolve(ref_to(registry.host, pushed.repository))
    assert r.pinned.digest == pushed.digest and r.ref.tag == "v1"
    assert r.index is None and r.manifest.raw == pushed.manifest
    assert r.manifest.media_type == OCI_MANIFEST and len(r.manifest.layers) == 2
    assert r.config.raw == pushed.config and r.config.cmd == ("/bin/sh",)
    assert r.platforms == (Platform("linux", "amd64"),)
    by_digest = await client.resolve(ref_to(registry.host, pushed.repository, pushed.digest))
    assert by_digest.manifest == r.manifest


async def test_docker_manifest_comes_back_unconverted(client, registry):
    with registry.client() as c:
        p = push_image(c, new_repo(), "d", [layer()], oci=False)
    r = await client.resolve(ref_to(registry.host, p.repository, "d"))
    assert r.manifest.media_type == M_DOCKER_MANIFEST and r.pinned.digest == p.digest
    assert await client.head_manifest(ref_to(registry.host, p.repository, "d")) == \
        Descriptor(M_DOCKER_MANIFEST, p.digest, len(p.manifest))


@pytest.fixture
def multiarch(registry):
    repo = new_repo("multi")
    with registry.client() as c:
        amd = push_image(c, repo, None, [layer("amd")])
        arm = push_image(c, repo, None, [layer("arm")], platform=("linux", "arm64"))
        att = push_image(c, repo, None, [b'{"predicate": {}}'], layer_media_type="application/vnd.in-toto+json")
        idx = push_index(c, repo, "multi", [
            (amd, {"os": "linux", "architecture": "amd64"}),
            (arm, {"os": "linux", "architecture": "arm64", "variant": "v8"}),
            (att, {"os": "unknown", "architecture": "unknown"}),
        ])
    return repo, idx, amd, arm


async def test_index_platform_choice(client, registry, multiarch):
    repo, idx, amd, arm = multiarch
    ref = ref_to(registry.host, repo, "multi")
    r = await client.resolve(ref, Platform.parse("linux/arm64"))
    assert r.manifest.digest == arm.digest and r.config.architecture == "arm64"
    assert r.pinned.digest == idx.digest and r.index.media_type == M_OCI_INDEX
    assert [str(p) for p in r.platforms] == ["linux/amd64", "linux/arm64/v8"]
    host = await client.resolve(ref)
    assert host.config.architecture == Platform.host().architecture == "amd64"
    assert host.manifest.digest == amd.digest
    with pytest.raises(NoMatchingPlatform) as e:
        await client.resolve(ref, Platform.parse("linux/s390x"))
    assert str(e.value) == ("no matching manifest for linux/s390x in the manifest list entries "
                            "(available: linux/amd64, linux/arm64/v8)")


async def test_single_manifest_of_another_platform_is_refused(client, registry, pushed):
    with pytest.raises(NoMatchingPlatform, match="linux/amd64, not the requested linux/arm64/v8"):
        await client.resolve(ref_to(registry.host, pushed.repository), Platform.parse("linux/arm64"))


async def test_not_found_names_the_reference(client, registry, pushed):
    with pytest.raises(NotFound) as e:
        await client.resolve(ref_to(registry.host, pushed.repository, "nope"))
    assert str(e.value) == f"manifest unknown: {registry.host}/{pushed.repository}:nope"
    with pytest.raises(NotFound, match=f"{registry.host}/no/such:v1"):
        await client.get_manifest(ref_to(registry.host, "no/such"))
    missing = sha256(b"missing")
    with pytest.raises(NotFound, match=f"blob unknown: {registry.host}/{pushed.repository}@{missing}"):
        await client.read_blob(ref_to(registry.host, pushed.repository), Descriptor("x", missing, 7))


async def test_schema1_from_a_registry_is_refused_clearly(client):
    body = json.dumps({"schemaVersion": 1, "name": "r/x", "tag": "old", "fsLayers": []}).encode()

    async def handler(req: Request) -> Response:
        return Response(200, {"content-type": "application/vnd.docker.distribution.manifest.v1+prettyjws",
                              "docker-content-digest": sha256(body)}, body)

    async with serve(with_ping(handler)) as srv:
        with pytest.raises(UnsupportedMediaType, match="schema1 manifests are not supported"):
            await client.resolve(ref_to(srv.host, "r/x", "old"))
        accept = srv.seen("/v2/r/")[0].headers["accept"]
    assert {M_OCI_INDEX, OCI_MANIFEST, M_DOCKER_MANIFEST, DOCKER_LIST} <= set(accept.split(", "))


async def test_head_manifest_falls_back_to_get_without_digest_header(client, registry, pushed):
    def strip(req: Request, resp: Response) -> Response:
        resp.headers.pop("docker-content-digest", None)
        return resp

    async with serve(forward(registry.host, strip)) as proxy:
        desc = await client.head_manifest(ref_to(proxy.host, pushed.repository))
        assert desc == Descriptor(OCI_MANIFEST, pushed.digest, len(pushed.manifest))
        assert [r.method for r in proxy.seen("/v2/reg")] == ["HEAD", "GET"]


# --- digests --------------------------------------------------------------------


async def test_tampered_manifest_is_a_digest_mismatch(client, registry, pushed):
    def tamper(req: Request, resp: Response) -> Response:
        if "/manifests/" in req.path and resp.status == 200:
            resp.body = resp.body.replace(b'"schemaVersion": 2', b'"schemaVersion":2')
        return resp

    async with serve(forward(registry.host, tamper)) as proxy:
        with pytest.raises(DigestMismatch, match=f"registry says {pushed.digest}, content hashes to"):
            await client.get_manifest(ref_to(proxy.host, pushed.repository))

    def tamper_silently(req: Request, resp: Response) -> Response:
        resp = tamper(req, resp)
        resp.headers.pop("docker-content-digest", None)
        return resp

    async with serve(forward(registry.host, tamper_silently)) as proxy:
        raw, _, digest = await client.get_manifest(ref_to(proxy.host, pushed.repository))
        assert digest == sha256(raw) != pushed.digest
        with pytest.raises(DigestMismatch, match="content hashes to"):
            await client.get_manifest(ref_to(proxy.host, pushed.repository, pushed.digest))


async def test_fetch_blob_verifies(client, registry, pushed, tmp_path):
    ref = ref_to(registry.host, pushed.repository)
    r = await client.resolve(ref)
    desc = r.manifest.layers[1]
    path = await fetch_blob(client, ref, desc, Store(tmp_path / "good"))
    assert path.read_bytes() == pushed.layers[1]

    def flip(req: Request, resp: Response) -> Response:
        if "/blobs/" in req.path and resp.status == 200:
            resp.body = bytes([resp.body[0] ^ 1]) + resp.body[1:]
        return resp

    async with serve(forward(registry.host, flip)) as proxy:
        bad = Store(tmp_path / "flipped")
        with pytest.raises(DigestMismatch, match=f"blob {desc.digest}: content hashes to"):
            await fetch_blob(client, ref_to(proxy.host, pushed.repository), desc, bad)
        assert bad.blob_path(desc.digest) is None

    def cut(after: int):
        def cutting(req: Request, resp: Response) -> Response:
            resp.cut_after = after if "/blobs/" in req.path else None
            return resp
        return cutting

    async with serve(forward(registry.host, cut(100))) as proxy:
        resumed = Store(tmp_path / "resumed")
        path = await fetch_blob(client, ref_to(proxy.host, pushed.repository), desc, resumed)
        assert path.read_bytes() == pushed.layers[1]

    impatient = RegistryOptions(**FAST, retry_deadline=0.5)
    async with serve(forward(registry.host, cut(0))) as proxy, RegistryClient(impatient) as c:
        short = Store(tmp_path / "cut")
        with pytest.raises(RegistryError, match=r"cut short \(peer closed connection"):
            await fetch_blob(c, ref_to(proxy.host, pushed.repository), desc, short)
        assert short.blob_path(desc.digest) is None


# --- ranges ----------------------------------------------------------------------


async def test_get_range_from_real_registry(client, registry, pushed):
    ref = ref_to(registry.host, pushed.repository)
    blob = pushed.layers[0]
    digest = sha256(blob)
    assert await client.get_range(ref, digest, 0, 10) == blob[:10]
    assert await client.get_range(ref, digest, 17, len(blob)) == blob[17:]
    assert await client.get_range(ref, digest, 5, 6) == blob[5:6]


def blob_server(blob: bytes, answer):
    async def handle(req: Request) -> Response:
        if req.path.endswith("/blobs/" + sha256(blob)):
            return answer(req)
        return Response(404)
    return with_ping(handle)


async def test_range_answered_with_200_is_not_a_partial_answer(client):
    blob = os.urandom(1000)
    async with serve(blob_server(blob, lambda req: Response(200, {}, blob))) as srv:
        with pytest.raises(RangeNotSupported, match="HTTP 200, not 206"):
            await client.get_range(ref_to(srv.host, "r/x"), sha256(blob), 10, 20)
        assert srv.seen("/v2/r/")[0].headers["range"] == "bytes=10-19"


@pytest.mark.parametrize("content_range, body, message", [
    ("bytes 0-9/1000", bytes(10), "registry sent Content-Range 'bytes 0-9/1000'"),
    (None, bytes(10), "registry sent Content-Range None"),
    ("bytes 10-19/15", bytes(10), "impossible length"),
    ("bytes 10-19/1000", bytes(9), "returned 9 of 10 bytes"),
    ("bytes 10-19/1000", bytes(11), "sent more than 10 bytes"),
])
async def test_bad_partial_answers_are_errors(client, content_range, body, message):
    blob = os.urandom(1000)
    headers = {"content-range": content_range} if content_range else {}
    async with serve(blob_server(blob, lambda req: Response(206, headers, body))) as srv:
        with pytest.raises(RegistryError, match=message) as e:
            await client.get_range(ref_to(srv.host, "r/x"), sha256(blob), 10, 20)
        assert not isinstance(e.value, RangeNotSupported)


# --- tags -----------------------------------------------------------------------------


async def test_list_tags(client, registry, pushed):
    tags = ["a", "b", "c", "d", "e"]
    with registry.client() as c:
        for t in tags:
            push_manifest(c, pushed.repository, t, pushed.manifest, OCI_MANIFEST)
    async with serve(forward(registry.host)) as proxy:
        ref = ref_to(proxy.host, pushed.repository)
        assert sorted(await client.list_tags(ref)) == sorted(tags + ["v1"])
        assert sorted(await client.list_tags(ref, page_size=2)) == sorted(tags + ["v1"])
        assert proxy.seen(f"/v2/{pushed.repository}/tags/list")[1].query == {"n": "2"}
        assert len(proxy.seen("/v2/")) - len(proxy.seen("/v2/reg")) == 1, "one ping per host"


async def test_list_tags_follows_link_pages(client):
    """distribution 2.8 ignores ``n``; later registries and Docker Hub page with Link headers."""
    all_tags = [f"t{i}" for i in range(7)]

    async def handler(req: Request) -> Response:
        n = int(req.query.get("n", "3"))
        last = req.query.get("last")
        start = all_tags.index(last) + 1 if last else 0
        page = all_tags[start:start + n]
        headers = {}
        if start + n < len(all_tags):
            nxt = f"/v2/r/x/tags/list?n={n}&last={page[-1]}"
            headers["link"] = f'<{nxt if start else srv.url + nxt}>; rel="next"'
        return Response(200, headers, json.dumps({"name": "r/x", "tags": page}).encode())

    async with serve(with_ping(handler)) as srv:
        assert await client.list_tags(ref_to(srv.host, "r/x"), page_size=3) == all_tags
        assert [r.query.get("last") for r in srv.seen("/v2/r/x/tags/list")] == [None, "t2", "t5"]


# --- redirects --------------------------------------------------------------------------


async def test_blob_redirect_keeps_credentials_home_and_refreshes_expired_urls(docker_config):
    blob = os.urandom(5000)
    digest = sha256(blob)
    issued = []
    basic = "Basic " + base64.b64encode(b"u:p").decode()

    async def cdn(req: Request) -> Response:
        if req.query.get("token") == "1":
            return Response(403, {}, b"expired")
        if req.headers.get("range") == "bytes=0-0":
            return Response(206, {"content-range": f"bytes 0-0/{len(blob)}"}, blob[:1])
        return Response(200, {}, blob)

    async with serve(cdn) as cdn_srv:
        async def registry_handler(req: Request) -> Response:
            if req.headers.get("authorization") != basic:
                return Response(401, {"www-authenticate": 'Basic realm="test"'})
            issued.append(len(issued) + 1)
            return Response(307, {"location": f"{cdn_srv.url}/cdn/{digest}?token={issued[-1]}"})

        async with serve(with_ping(registry_handler)) as reg:
            opts = RegistryOptions(auth=lambda host, scope: httpx.BasicAuth("u", "p"), **FAST)
            async with RegistryClient(opts) as c:
                data = await c.read_blob(ref_to(reg.host, "r/x"), Descriptor("x", digest, len(blob)))
            assert data == blob
            assert issued == [1, 2]
            assert [r.query["token"] for r in cdn_srv.requests] == ["1", "2"]
            assert all("authorization" not in r.headers for r in cdn_srv.requests)
            assert all(r.headers.get("authorization") == basic for r in reg.seen("/v2/r/"))
            async with RegistryClient(opts) as c:
                assert await c.get_range(ref_to(reg.host, "r/x"), digest, 0, 1) == blob[:1]
            assert cdn_srv.requests[-1].headers["range"] == "bytes=0-0"
            assert "authorization" not in cdn_srv.requests[-1].headers


async def test_redirect_target_that_keeps_refusing_is_an_error(client):
    async with serve(lambda req: _const(Response(403))) as cdn_srv:
        async def handler(req: Request) -> Response:
            return Response(302, {"location": f"{cdn_srv.url}/b"})

        async with serve(with_ping(handler)) as reg:
            with pytest.raises(RegistryError, match="even after a fresh redirect"):
                await client.get_range(ref_to(reg.host, "r/x"), sha256(b"x"), 0, 1)
        assert len(cdn_srv.requests) == 2


async def _const(response: Response) -> Response:
    return response


# --- retries and reachability -----------------------------------------------------------------


async def test_busy_registry_is_retried_with_retry_after(client, registry, pushed):
    busy = {"left": 2}

    async def handler(req: Request) -> Response:
        if "/manifests/" in req.path and busy["left"]:
            busy["left"] -= 1
            return Response(503, {"retry-after": "1" if busy["left"] else "0"}, b"busy")
        return await forward(registry.host)(req)

    async with serve(handler) as srv:
        start = trio.current_time()
        r = await client.resolve(ref_to(srv.host, pushed.repository))
        assert r.manifest.digest == pushed.digest
        assert trio.current_time() - start >= 0.9, "Retry-After: 1 was honoured"
        assert len(srv.seen(f"/v2/{pushed.repository}/manifests/")) == 3


async def test_dropped_connection_is_retried(client, registry, pushed):
    dropped = []

    async def handler(req: Request) -> Response:
        if "/manifests/" in req.path and not dropped:
            dropped.append(req)
            return Response(drop=True)
        return await forward(registry.host)(req)

    async with serve(handler) as srv:
        raw, _, digest = await client.get_manifest(ref_to(srv.host, pushed.repository))
    assert digest == pushed.digest and len(dropped) == 1


async def test_retries_are_bounded(docker_config):
    async def handler(req: Request) -> Response:
        return Response(500, {}, json.dumps({"errors": [{"code": "UNKNOWN", "message": "boom"}]}).encode())

    async with serve(with_ping(handler)) as srv:
        async with RegistryClient(RegistryOptions(max_retries=2, **FAST)) as c:
            with pytest.raises(RegistryError, match="HTTP 500 UNKNOWN: boom"):
                await c.get_manifest(ref_to(srv.host, "r/x"))
        assert len(srv.seen("/v2/r/")) == 3


async def test_long_retry_after_is_reported_not_waited(client):
    async def handler(req: Request) -> Response:
        return Response(429, {"retry-after": "3600"}, b"")

    async with serve(with_ping(handler)) as srv:
        with trio.fail_after(5):
            with pytest.raises(RegistryError, match="HTTP 429"):
                await client.get_manifest(ref_to(srv.host, "r/x"))
        assert len(srv.seen("/v2/r/")) == 1


async def test_connection_refused_is_unreachable_quickly(client):
    port = free_port()
    with trio.fail_after(3):
        with pytest.raises(RegistryUnreachable) as e:
            await client.resolve(ref_to(f"127.0.0.1:{port}", "r/x"))
    assert str(e.value) == f"cannot reach registry 127.0.0.1:{port}: connection refused"


async def test_https_only_for_hosts_not_insecure():
    port = free_port()
    async with RegistryClient(RegistryOptions(**FAST)) as c:
        with pytest.raises(RegistryUnreachable):
            await c.get_manifest(ref_to(f"127.0.0.1:{port}", "r/x"))
    assert is_insecure("localhost:5000") and is_insecure("[::1]:5000") and is_insecure("127.1.2.3")
    assert not is_insecure("example.com:5000")
    assert is_insecure("example.com:5000", ("example.com:5000",))
    assert is_insecure("10.1.2.3:443", ("10.0.0.0/8",)) and not is_insecure("10.1.2.3", ("11.0.0.0/8",))


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"),
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    return d / "cert.pem", ctx


async def _empty_manifest(req: Request) -> Response:
    return Response(404, {}, json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN"}]}).encode())


async def test_untrusted_certificate_is_reported_as_tls(client, tls_cert):
    async with serve(with_ping(_empty_manifest), tls_cert[1]) as srv:
        with pytest.raises(RegistryUnreachable) as e:
            await client.get_manifest(ref_to(srv.host, "r/x"))
    assert str(e.value).startswith(f"cannot reach registry {srv.host}: TLS certificate not trusted (")


async def test_https_is_tried_first_and_uses_the_system_trust_settings(docker_config, tls_cert,
                                                                        monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_cert[0]))
    async with serve(with_ping(_empty_manifest), tls_cert[1]) as srv:
        async with RegistryClient(RegistryOptions(**FAST)) as c:
            with pytest.raises(NotFound, match=f"manifest unknown: {srv.host}/r/x:v1"):
                await c.get_manifest(ref_to(srv.host, "r/x"))
        assert [r.path for r in srv.requests] == ["/v2/", "/v2/r/x/manifests/v1"]


# --- mirrors ------------------------------------------------------------------------------------


async def test_docker_hub_mirrors_are_tried_in_order(docker_config, registry):
    with registry.client() as c:
        p = push_image(c, "library/" + uuid.uuid4().hex[:10], "m", [layer()])
    dead = f"http://127.0.0.1:{free_port()}"
    opts = RegistryOptions(mirrors=(dead, f"http://{registry.host}"), **FAST)
    async with RegistryClient(opts) as c:
        r = await c.resolve(parse_reference(p.repository.removeprefix("library/") + ":m"))
        assert r.manifest.digest == p.digest and r.ref.registry == "docker.io"


def test_most_useful_error_prefers_answers_over_silence():
    mirror = Endpoint("m", "m", ("https",), mirror=True)
    up = Endpoint("docker.io", "registry-1.docker.io", ("https",))
    down, missing, denied = RegistryUnreachable("a"), NotFound("b"), Unauthorized("c")
    assert most_useful_error([(mirror, down), (up, denied)]) is denied
    assert most_useful_error([(mirror, missing), (up, down)]) is missing
    assert most_useful_error([(mirror, down), (up, down)]) is down
    assert most_useful_error([(mirror, missing), (up, denied)]) is denied


# --- auth ---------------------------------------------------------------------------------------


async def test_auth_registry_needs_credentials(docker_config, auth_registry):
    with auth_registry.client() as c:
        p = push_image(c, new_repo(), "v1", [layer()])
    ref = ref_to(auth_registry.host, p.repository)
    async with RegistryClient(RegistryOptions(**FAST)) as c:
        with pytest.raises(Unauthorized) as e:
            await c.get_manifest(ref)
    assert auth_registry.host in str(e.value) and "s3cret" not in str(e.value)
    token = base64.b64encode(b"alice:s3cret").decode()
    (docker_config / "config.json").write_text(json.dumps({"auths": {auth_registry.host: {"auth": token}}}))
    async with RegistryClient(RegistryOptions(**FAST)) as c:
        r = await c.resolve(ref)
        assert r.manifest.digest == p.digest
        assert await c.get_range(ref, r.manifest.layers[0].digest, 0, 4) == p.layers[0][:4]


# --- pushes and referrers --------------------------------------------------------------------


async def test_push_and_referrers_fallback(client, registry, pushed):
    ref = ref_to(registry.host, pushed.repository)
    assert await client.get_referrers(ref, pushed.digest) == []
    config = b"{}"
    payload = b"an index of the image"
    assert await client.push_blob(ref, config) == sha256(config)
    assert await client.push_blob(ref, config) == sha256(config)
    await client.push_blob(ref, payload)
    artifact_type = "application/vnd.example.lazyfs-index"
    artifact = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(config), "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": sha256(payload),
                    "size": len(payload)}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": pushed.digest, "size": len(pushed.manifest)},
    }).encode()
    artifact_digest = await client.push_manifest(ref_to(registry.host, pushed.repository, sha256(artifact)),
                                                 artifact, OCI_MANIFEST)
    assert artifact_digest == sha256(artifact)
    fallback = json.dumps({"schemaVersion": 2, "mediaType": M_OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": artifact_digest, "size": len(artifact),
         "artifactType": artifact_type}]}).encode()
    await client.push_manifest(ref_to(registry.host, pushed.repository, pushed.digest.replace(":", "-")),
                               fallback, M_OCI_INDEX)
    found = await client.get_referrers(ref, pushed.digest)
    assert [(d.digest, d.artifact_type) for d in found] == [(artifact_digest, artifact_type)]
    assert await client.get_referrers(ref, pushed.digest, artifact_type) == found
    assert await client.get_referrers(ref, pushed.digest, "application/other") == []
    raw, _, _ = await client.get_manifest(ref_to(registry.host, pushed.repository, artifact_digest))
    assert raw == artifact


@pytest.mark.parametrize("values, expected", [
    (['</v2/r/tags/list?n=2&last=b>; rel="next"'], "/v2/r/tags/list?n=2&last=b"),
    (['<https://h/a>; rel=next'], "https://h/a"),
    (['<https://h/p>; rel="prev", <https://h/n>; rel="next"'], "https://h/n"),
    (['<https://h/p>; rel="prev"'], None),
    ([], None),
])
def test_next_link(values, expected):
    assert _next_link(values) == expected


@pytest.mark.parametrize("value, low, high", [
    ("5", 5, 5), ("0", 0, 0), (None, None, None), ("soon", None, None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0, 0),
])
def test_retry_after(value, low, high):
    got = _retry_after(value)
    assert got == low if low is None else low <= got <= high


async def test_a_host_that_answered_plain_http_is_asked_over_it_first_next_time(
        docker_config, registry, tmp_path):
    """The first run asks over HTTPS and HTTP at once on a loopback registry;
    the port answers a TLS ClientHello in plain HTTP, so the trust store is
    never loaded, and the next run goes straight to HTTP."""
    from lazyfs.store.schemes import SchemeFile
    with registry.client() as c:
        p = push_image(c, "schemes/app", "v1", [layer()])
    ref = parse_reference(f"{registry.host}/schemes/app:v1")
    memory = SchemeFile(tmp_path)
    for first in (True, False):
        async with RegistryClient(RegistryOptions(schemes=SchemeFile(tmp_path), **FAST)) as c:
            assert (await c.resolve(ref)).manifest.digest == p.digest
            assert c._transport.tls.trusted is False
        assert memory.get(registry.host) == "http"
    assert memory.get(registry.host) == "http"
    memory.put(registry.host, "https")
    async with RegistryClient(RegistryOptions(schemes=memory, **FAST)) as c:
        assert (await c.resolve(ref)).manifest.digest == p.digest
    assert SchemeFile(tmp_path).get(registry.host) == "http", "a stale scheme is replaced"

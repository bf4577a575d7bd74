"""The memory registry of ``lazyfs.testing`` beside a real distribution
registry: the same requests must get the same answers wherever a client can
tell them apart (status, error code, the headers lazyfs reads, the bytes), so
the unit tests built on it learn what the real one would teach."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass

import httpx
import pytest

from lazyfs.registry.ranges import boundary_of, parse_multipart
from lazyfs.testing import MemoryRegistry, build_layer, image
from lazyfs.testing.manifests import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST

_COMPARED = ("docker-content-digest", "content-range", "range", "link")


@dataclass
class Twins:
    real: str
    """Base URL of the real registry."""
    fake: MemoryRegistry
    repo: str
    built: object

    def clients(self):
        return (httpx.AsyncClient(base_url=self.real),
                httpx.AsyncClient(transport=self.fake, base_url="http://registry.test"))


@pytest.fixture(scope="module")
def twins(registry) -> Twins:
    repo = f"parity/{uuid.uuid4().hex[:8]}"
    built = image([build_layer("gzip", {"etc/motd": "parity " * 300})])
    with registry.client() as c:
        for data in (built.config, built.layers[0].blob):
            start = c.post(f"/v2/{repo}/blobs/uploads/")
            url = httpx.URL(start.headers["location"])
            c.put(url.copy_merge_params({"digest": _digest(data)}), content=data) \
                .raise_for_status()
        for tag in ("v1", "v2"):
            c.put(f"/v2/{repo}/manifests/{tag}", content=built.manifest,
                  headers={"content-type": OCI_MANIFEST}).raise_for_status()
    fake = MemoryRegistry(referrers=False, paginate=False)
    built.push(fake, repo, "v1")
    built.push(fake, repo, "v2")
    return Twins(registry.url, fake, repo, built)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def answer(client: httpx.AsyncClient, method: str, url, headers=None,
                 content: bytes | None = None) -> dict:
    """What a client can tell of one answer."""
    async with client.stream(method, url, headers=headers or {}, content=content) as r:
        out = {"status": r.status_code, "type": r.headers.get("content-type", "").split(";")[0],
               **{k: r.headers[k] for k in _COMPARED if k in r.headers}}
        try:
            body = await r.aread()
        except httpx.RemoteProtocolError:
            out["body"] = "cut short"
            out["length"] = r.headers.get("content-length")
            return out
    if out["type"] == "application/json" and r.status_code >= 400:
        out["errors"] = [e["code"] for e in r.json()["errors"]]
    elif out["type"] == "application/json":
        out["json"] = r.json()
    elif out["type"] == "multipart/byteranges":
        out["parts"] = [(p.start, p.end, p.data) for p in
                        parse_multipart(body, boundary_of(r.headers["content-type"]))]
    elif r.status_code < 400:
        out["body"] = body
        out["length"] = r.headers.get("content-length")
    else:
        out["body"] = body
    return out


def cases(t: Twins) -> list[tuple[str, str, dict]]:
    repo, layer = t.repo, t.built.layers[0]
    blob = f"/v2/{repo}/blobs/{layer.digest}"
    size = layer.size
    oci = {"accept": OCI_MANIFEST}
    return [
        ("GET", "/v2/", {}),
        ("GET", f"/v2/{repo}/manifests/v1", oci),
        ("HEAD", f"/v2/{repo}/manifests/v1", oci),
        ("GET", f"/v2/{repo}/manifests/{t.built.digest}",
         {"accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}),
        ("GET", f"/v2/{repo}/manifests/v1", {"accept": DOCKER_MANIFEST}),
        ("GET", f"/v2/{repo}/manifests/v1", {}),
        ("GET", f"/v2/{repo}/manifests/v9", oci),
        ("GET", f"/v2/{repo}-none/manifests/v1", oci),
        ("GET", blob, {}),
        ("HEAD", blob, {}),
        ("GET", blob, {"range": "bytes=0-9"}),
        ("GET", blob, {"range": "bytes=-5"}),
        ("GET", blob, {"range": "bytes=10-"}),
        ("GET", blob, {"range": f"bytes=100-{size * 2}"}),
        ("GET", blob, {"range": "bytes=0-1,4-5,-3"}),
        ("GET", blob, {"range": "bytes=0-,1-"}),
        ("GET", blob, {"range": f"bytes={size}-"}),
        ("GET", blob, {"range": "items=0-1"}),
        ("GET", f"/v2/{repo}/blobs/sha256:{'0' * 64}", {}),
        ("GET", f"/v2/{repo}-none/blobs/{layer.digest}", {}),
        ("GET", f"/v2/{repo}/referrers/{t.built.digest}", {}),
        ("GET", f"/v2/{repo}/tags/list", {}),
        ("GET", f"/v2/{repo}/tags/list?n=1", {}),
        ("GET", f"/v2/{repo}/tags/list?n=1&last=v1", {}),
        ("GET", f"/v2/{repo}-none/tags/list", {}),
    ]


async def test_reads_are_answered_alike(twins):
    real, fake = twins.clients()
    async with real, fake:
        for method, path, headers in cases(twins):
            got = await answer(fake, method, path, headers)
            want = await answer(real, method, path, headers)
            assert got == want, f"{method} {path} {headers}"


async def test_manifest_puts_are_refused_alike(twins):
    layer = build_layer("tar", {"never": "pushed"})
    missing = image([layer])
    real, fake = twins.clients()
    puts = [(f"sha256:{'1' * 64}", twins.built.manifest, OCI_MANIFEST),
            ("v3", twins.built.manifest, DOCKER_MANIFEST),
            ("v3", twins.built.manifest, "application/json"),
            ("v3", missing.manifest, OCI_MANIFEST)]
    async with real, fake:
        for ref, body, media_type in puts:
            path = f"/v2/{twins.repo}/manifests/{ref}"
            headers = {"content-type": media_type}
            want = await answer(real, "PUT", path, headers, body)
            assert await answer(fake, "PUT", path, headers, body) == want, (ref, media_type)


async def upload_story(client: httpx.AsyncClient, repo: str, data: bytes,
                       other: str) -> list[dict]:
    """Everything the upload endpoints are asked in a push and its mistakes."""
    digest = _digest(data)
    seen = []

    async def ask(method, url, **kw) -> httpx.Response:
        r = await client.request(method, url, **kw)
        code = r.json()["errors"][0]["code"] if r.status_code >= 400 and r.content else ""
        seen.append({"status": r.status_code, "code": code, "range": r.headers.get("range"),
                     "digest": r.headers.get("docker-content-digest")})
        return r

    start = await ask("POST", f"/v2/{repo}/blobs/uploads/")
    first = await ask("PATCH", start.headers["location"], content=data[:3])
    await ask("PATCH", start.headers["location"], content=data[3:])
    second = await ask("PATCH", first.headers["location"], content=data[3:],
                       headers={"content-range": "99-100"})
    where = httpx.URL(second.headers["location"])
    await ask("PUT", where.copy_with(query=None).copy_merge_params({"digest": digest}))
    await ask("GET", where)
    await ask("PUT", where.copy_merge_params({"digest": digest}))
    again = await ask("POST", f"/v2/{repo}/blobs/uploads/", params={"digest": digest},
                      content=data)
    wrong = httpx.URL(again.headers["location"]).copy_merge_params({"digest": _digest(b"x")})
    await ask("PUT", wrong, content=data)
    await ask("PUT", wrong, content=data)
    await ask("POST", f"/v2/{repo}-mounted/blobs/uploads/",
              params={"mount": digest, "from": other})
    await ask("POST", f"/v2/{repo}-mounted/blobs/uploads/",
              params={"mount": f"sha256:{'3' * 64}", "from": other})
    await ask("HEAD", f"/v2/{repo}/blobs/{digest}")
    await ask("GET", f"/v2/{repo}/blobs/{digest}")
    return seen


async def test_uploads_behave_alike(twins):
    data = uuid.uuid4().bytes * 10
    real, fake = twins.clients()
    async with real, fake:
        want = await upload_story(real, f"{twins.repo}/up", data, twins.repo)
        got = await upload_story(fake, f"{twins.repo}/up", data, twins.repo)
    assert got == want


async def test_basic_auth_refuses_alike(auth_registry):
    fake = MemoryRegistry(auth="basic")
    paths = ["/v2/", "/v2/parity/none/manifests/v1", "/v2/parity/none/tags/list"]
    for creds in (None, ("alice", "wrong"), ("alice", "s3cret")):
        async with httpx.AsyncClient(base_url=auth_registry.url, auth=creds) as real, \
                httpx.AsyncClient(transport=fake, base_url="http://registry.test",
                                  auth=creds) as mem:
            for path in paths:
                want, got = await real.get(path), await mem.get(path)
                assert (got.status_code, _scheme(got)) == (want.status_code, _scheme(want)), \
                    (creds, path)
                if want.status_code == 401:
                    assert _codes(got) == _codes(want) == ["UNAUTHORIZED"]


def _scheme(r: httpx.Response) -> str:
    return r.headers.get("www-authenticate", "").partition(" ")[0]


def _codes(r: httpx.Response) -> list[str]:
    return [e["code"] for e in r.json()["errors"]]

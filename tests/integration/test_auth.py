"""RegistryAuth against a real registry: htpasswd Basic, and Bearer tokens
from a token server in front of it."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
import trio

from lazyfs.registry.auth import RegistryAuth, TokenCache
from lazyfs.registry.credentials import Credential, find_credential
from lazyfs.errors import Unauthorized
from lazyfs.testing.push import OCI_MANIFEST, push_image
from tests.support.images import gzip_bytes, make_tar
from tests.support.token_server import SERVICE, start_bearer_registry

REPO = "auth/foo"
OTHER_REPO = "auth/bar"
ALICE = Credential("alice", "s3cret", source="the test")
WRONG = Credential("alice", "not-THE-password", source="the test")


def push_small_image(client: httpx.Client, repo: str):
    layer = gzip_bytes(make_tar({"etc/": None, "etc/hello": "hello from " + repo}))
    return push_image(client, repo, "v1", [layer])


@pytest.fixture(scope="module")
def basic_image(auth_registry):
    with auth_registry.client() as c:
        return push_small_image(c, REPO)


@pytest.fixture(scope="module")
def plain_images(registry):
    with registry.client() as c:
        return push_small_image(c, REPO), push_small_image(c, OTHER_REPO)


@pytest.fixture
def bearer(registry, plain_images):
    tokens, proxy = start_bearer_registry(registry.url)
    yield tokens, proxy
    proxy.stop()
    tokens.stop()


def client_for(registry_host: str, credential: Credential | None, scope: str,
               cache: TokenCache) -> httpx.AsyncClient:
    auth = RegistryAuth(registry_host, credential, scope, cache=cache)
    return httpx.AsyncClient(base_url=f"http://{registry_host}", auth=auth, timeout=30)


async def get_manifest(client: httpx.AsyncClient, repo: str = REPO) -> httpx.Response:
    return await client.get(f"/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST})


def statuses(response: httpx.Response) -> list[int]:
    return [r.status_code for r in response.history] + [response.status_code]


# --- Basic -----------------------------------------------------------------

async def test_basic_anonymous_is_refused(auth_registry, basic_image, docker_config):
    async with client_for(auth_registry.host, None, f"repository:{REPO}:pull",
                          TokenCache()) as client:
        r = await get_manifest(client)
    assert statuses(r) == [401]
    err = client.auth.unauthorized()
    assert isinstance(err, Unauthorized)
    assert str(err).startswith(f"unauthorized: authentication required for {auth_registry.host}"
                               " (no credentials found; looked in ")
    assert str(docker_config / "config.json") in str(err)


async def test_basic_with_credential(auth_registry, basic_image):
    async with client_for(auth_registry.host, ALICE, f"repository:{REPO}:pull",
                          TokenCache()) as client:
        r = await get_manifest(client)
        assert statuses(r) == [401, 200]
        assert r.content == basic_image.manifest
        again = await client.get(f"/v2/{REPO}/blobs/{json.loads(r.content)['config']['digest']}")
    assert statuses(again) == [200], "the known Basic challenge is answered up front"


async def test_basic_wrong_password_is_refused_once(auth_registry, basic_image):
    async with client_for(auth_registry.host, WRONG, f"repository:{REPO}:pull",
                          TokenCache()) as client:
        r = await get_manifest(client)
        assert statuses(r) == [401, 401]
        r = await get_manifest(client)
        assert statuses(r) == [401], "a refused pre-emptive Basic is not retried"
    msg = str(client.auth.unauthorized())
    assert "tried credentials from the test" in msg and "THE-password" not in msg


async def test_basic_credential_from_docker_config(auth_registry, basic_image, docker_config):
    path = docker_config / "config.json"
    path.write_text(json.dumps({"auths": {f"http://{auth_registry.host}/v1/": {
        "auth": base64.b64encode(b"alice:s3cret").decode()}}}))
    credential = find_credential(auth_registry.host)
    async with client_for(auth_registry.host, credential, "", TokenCache()) as client:
        r = await get_manifest(client)
    assert r.status_code == 200
    assert client.auth.tried_source == f"tried credentials from {path}"


def test_sync_client_works_too(auth_registry, basic_image):
    auth = RegistryAuth(auth_registry.host, ALICE, "", cache=TokenCache())
    with httpx.Client(base_url=auth_registry.url, auth=auth) as client:
        assert client.get(f"/v2/{REPO}/tags/list").json()["tags"] == ["v1"]


# --- Bearer ----------------------------------------------------------------

async def test_bearer_anonymous(bearer, plain_images):
    tokens, proxy = bearer
    async with client_for(proxy.host, None, f"repository:{REPO}:pull", TokenCache()) as client:
        r = await get_manifest(client)
    assert statuses(r) == [401, 200, 200]  # challenge, token, manifest
    assert r.content == plain_images[0].manifest
    [req] = tokens.requests
    assert (req.method, req.service, req.scopes, req.user, req.authorization) == (
        "GET", SERVICE, [f"repository:{REPO}:pull"], "", "")
    assert proxy.requests[-1].authorization.startswith("Bearer tok.")


async def test_bearer_with_credential(bearer, plain_images):
    tokens, proxy = bearer
    async with client_for(proxy.host, ALICE, f"repository:{REPO}:pull", TokenCache()) as client:
        r = await get_manifest(client)
    assert r.status_code == 200
    [req] = tokens.requests
    assert (req.user, req.account) == ("alice", "alice")
    assert all(not p.authorization.startswith("Basic") for p in proxy.requests), \
        "the password goes to the token realm only"


async def test_bearer_identity_token_uses_oauth_post(bearer, plain_images):
    tokens, proxy = bearer
    tokens.refresh_tokens["refresh-123"] = "alice"
    credential = Credential(username="alice", identity_token="refresh-123", source="the test")
    async with client_for(proxy.host, credential, f"repository:{REPO}:pull",
                          TokenCache()) as client:
        r = await get_manifest(client)
    assert r.status_code == 200
    [req] = tokens.requests
    assert (req.method, req.grant_type, req.user, req.scopes, req.service) == (
        "POST", "refresh_token", "alice", [f"repository:{REPO}:pull"], SERVICE)


async def test_bearer_access_token_field(bearer, plain_images):
    tokens, proxy = bearer
    tokens.token_field, tokens.expires_in = "access_token", None
    async with client_for(proxy.host, ALICE, f"repository:{REPO}:pull", TokenCache()) as client:
        assert (await get_manifest(client)).status_code == 200


async def test_bearer_token_cached_per_scope(bearer, plain_images):
    tokens, proxy = bearer
    cache = TokenCache()
    pushed = plain_images[0]
    async with client_for(proxy.host, ALICE, f"repository:{REPO}:pull", cache) as client:
        r = await get_manifest(client)
        for digest in [json.loads(r.content)["config"]["digest"]] + \
                [layer["digest"] for layer in json.loads(r.content)["layers"]]:
            blob = await client.get(f"/v2/{REPO}/blobs/{digest}")
            assert statuses(blob) == [200]
        assert (await client.get(f"/v2/{REPO}/tags/list")).json()["tags"] == ["v1"]
    assert r.content == pushed.manifest
    assert len(tokens.requests) == 1
    assert [p.status for p in proxy.requests].count(401) == 1

    async with client_for(proxy.host, ALICE, f"repository:{REPO}:pull", cache) as client:
        assert statuses(await get_manifest(client)) == [200]
    assert len(tokens.requests) == 1, "a second client shares the cached token"

    async with client_for(proxy.host, ALICE, f"repository:{OTHER_REPO}:pull", cache) as client:
        r = await get_manifest(client, OTHER_REPO)
    assert statuses(r) == [200, 200], "known challenge: token fetched before the request"
    assert [q.scopes for q in tokens.requests] == [[f"repository:{REPO}:pull"],
                                                   [f"repository:{OTHER_REPO}:pull"]]

    async with client_for(proxy.host, None, f"repository:{REPO}:pull", cache) as client:
        assert (await get_manifest(client)).status_code == 200
    assert tokens.requests[-1].user == "", "tokens are not shared across credentials"


async def test_bearer_token_refreshed_on_expiry(bearer, plain_images):
    tokens, proxy = bearer
    tokens.expires_in = 1
    async with client_for(proxy.host, ALICE, f"repository:{REPO}:pull", TokenCache()) as client:
        assert statuses(await get_manifest(client)) == [401, 200, 200]
        await trio.sleep(1.1)
        r = await get_manifest(client)
    assert statuses(r) == [200, 200], "the expired token is replaced before the request"
    assert len(tokens.requests) == 2


async def test_bearer_token_refreshed_once_on_401(bearer, plain_images):
    tokens, proxy = bearer
    async with client_for(proxy.host, ALICE, f"repository:{REPO}:pull", TokenCache()) as client:
        await get_manifest(client)
        tokens.revoke_all()
        r = await get_manifest(client)
        assert statuses(r) == [401, 200, 200]
        assert len(tokens.requests) == 2
        tokens.allow_anonymous = False
        tokens.users.clear()
        tokens.revoke_all()
        with pytest.raises(Unauthorized):
            await get_manifest(client)
    assert len(tokens.requests) == 3


async def test_bearer_wrong_password(bearer, plain_images):
    tokens, proxy = bearer
    async with client_for(proxy.host, WRONG, f"repository:{REPO}:pull", TokenCache()) as client:
        with pytest.raises(Unauthorized) as e:
            await get_manifest(client)
    msg = str(e.value)
    assert tokens.realm in msg and f"repository:{REPO}:pull" in msg
    assert "tried credentials from the test" in msg
    assert "THE-password" not in msg and "not-THE" not in repr(e.value)


async def test_bearer_anonymous_refused(bearer, plain_images, docker_config):
    tokens, proxy = bearer
    tokens.allow_anonymous = False
    async with client_for(proxy.host, None, f"repository:{REPO}:pull", TokenCache()) as client:
        with pytest.raises(Unauthorized, match="no credentials found; looked in"):
            await get_manifest(client)


async def test_bearer_bad_identity_token(bearer, plain_images):
    tokens, proxy = bearer
    credential = Credential(identity_token="stale-SECRET-token", source="credential helper x")
    async with client_for(proxy.host, credential, f"repository:{REPO}:pull",
                          TokenCache()) as client:
        with pytest.raises(Unauthorized, match="credential helper x") as e:
            await get_manifest(client)
    assert "SECRET" not in str(e.value)


async def test_registry_token_sent_as_is(bearer, plain_images):
    tokens, proxy = bearer
    async with client_for(proxy.host, None, f"repository:{REPO}:pull", TokenCache()) as client:
        await get_manifest(client)
    [issued] = tokens.issued
    credential = Credential(registry_token=issued, source="the test")
    async with client_for(proxy.host, credential, f"repository:{REPO}:pull",
                          TokenCache()) as client:
        assert statuses(await get_manifest(client)) == [200]
    assert len(tokens.requests) == 1


async def test_no_header_for_other_hosts(bearer, plain_images):
    tokens, proxy = bearer
    async with client_for(proxy.host, ALICE, f"repository:{REPO}:pull", TokenCache()) as client:
        assert (await get_manifest(client)).status_code == 200
        r = await client.get(tokens.realm, params={"service": SERVICE})
    assert r.status_code == 200
    assert tokens.requests[-1].authorization == "", "the realm host is not the registry"
    assert tokens.requests[0].authorization.startswith("Basic ")

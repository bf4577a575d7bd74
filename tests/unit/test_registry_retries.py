"""How often the client sends a request the registry keeps failing: a range
read once (a reader's attempts are its retry budget), a manifest or a whole
blob with the client's own retries. The registry here is an
``httpx.MockTransport`` plugged in through ``RegistryOptions.transport``."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from lazyfs.errors import RegistryError, RegistryUnreachable
from lazyfs.manifest import Descriptor
from lazyfs.reference import parse_reference
from lazyfs.registry import RegistryClient, RegistryOptions

BLOB = bytes(range(256)) * 64
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
REF = parse_reference("registry.test/retry/app:v1")
RETRIES = 2


class Failing:
    """Answers the ping, then fails every request with ``status`` (or drops it)."""

    def __init__(self, status: int | None):
        self.status = status
        self.sent: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(200)
        self.sent.append(request)
        if self.status is None:
            raise httpx.ReadError("connection dropped", request=request)
        return httpx.Response(self.status)


def client_for(registry: Failing) -> RegistryClient:
    return RegistryClient(RegistryOptions(max_retries=RETRIES, backoff=0.0,
                                          auth=lambda host, scope: None,
                                          transport=httpx.MockTransport(registry)))


@pytest.mark.parametrize("status", [503, 500, None])
async def test_range_reads_are_sent_once(status):
    registry = Failing(status)
    error = RegistryUnreachable if status is None else RegistryError
    async with client_for(registry) as client:
        with pytest.raises(error):
            await client.get_range(REF, DIGEST, 0, 10)
        assert len(registry.sent) == 1
        with pytest.raises(error):
            await client.get_ranges(REF, DIGEST, [(0, 10), (20, 30), (25, 40)])
        assert len(registry.sent) == 2


@pytest.mark.parametrize("status", [503, None])
async def test_manifests_and_whole_blobs_keep_their_retries(status):
    registry = Failing(status)
    error = RegistryUnreachable if status is None else RegistryError
    async with client_for(registry) as client:
        with pytest.raises(error):
            await client.get_manifest(REF)
        assert len(registry.sent) == RETRIES + 1
        with pytest.raises(error):
            await client.read_blob(REF, Descriptor("x", DIGEST, len(BLOB)))
        assert len(registry.sent) == 2 * (RETRIES + 1)
        with pytest.raises(error):
            await client.get_range(REF, DIGEST, 0, 10, retry=True)
        assert len(registry.sent) == 3 * (RETRIES + 1)


async def test_spans_are_sent_as_given_not_merged():
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(200)
        seen.append(request.headers["range"])
        return httpx.Response(200, content=BLOB)

    options = RegistryOptions(backoff=0.0, auth=lambda host, scope: None,
                              transport=httpx.MockTransport(handler))
    spans = [(0, 10), (10, 20), (15, 18), (30, 40)]
    async with RegistryClient(options) as client:
        with pytest.raises(RegistryError):
            await client.get_ranges(REF, DIGEST, spans)
    assert seen[0] == "bytes=0-9,10-19,15-17,30-39"
    assert seen[1:] == ["bytes=0-9"], "a 200 marks the host single-range; then one by one"

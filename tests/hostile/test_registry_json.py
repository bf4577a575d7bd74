"""A registry's own JSON is untrusted too: error bodies and tag lists nested
thousands of levels deep must be one error line, not a RecursionError.
(Faults in transit are tests/integration/test_reader_faults.py.)"""

from __future__ import annotations

import os
import sys

import pytest
import trio

from tests.support.servers import Response, serve, with_ping

DEEP = b"[" * 100_000 + b"]" * 100_000


async def run_cli(tmp_path, *args: str):
    env = dict(os.environ, LAZYFS_CACHE_DIR=str(tmp_path / "cache"),
               DOCKER_CONFIG=str(tmp_path / "docker"), XDG_RUNTIME_DIR=str(tmp_path / "run"))
    with trio.fail_after(60):
        return await trio.run_process([sys.executable, "-m", "lazyfs", *args], env=env,
                                      capture_stdout=True, capture_stderr=True, check=False)


@pytest.mark.parametrize("status", [404, 500])
async def test_deeply_nested_error_body_is_one_line(tmp_path, status):
    async def handler(request):
        return Response(status, {"content-type": "application/json"}, DEEP)
    async with serve(with_ping(handler)) as server:
        p = await run_cli(tmp_path, "inspect", f"{server.host}/deep/json:v1")
    assert b"Traceback" not in p.stderr, p.stderr[-2000:]
    assert p.stderr.startswith(b"lazyfs: ") and p.stderr.count(b"\n") == 1


async def test_deeply_nested_manifest_is_one_line(tmp_path):
    async def handler(request):
        return Response(200, {"content-type": "application/vnd.oci.image.manifest.v1+json",
                              "docker-content-digest": "sha256:" + "0" * 64}, DEEP)
    async with serve(with_ping(handler)) as server:
        p = await run_cli(tmp_path, "inspect", f"{server.host}/deep/json:v1")
    assert b"Traceback" not in p.stderr, p.stderr[-2000:]
    assert p.stderr.startswith(b"lazyfs: ") and p.stderr.count(b"\n") == 1

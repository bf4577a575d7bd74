"""eStargz and zstd:chunked lies end to end, on the golden layers made by
ctr-remote and skopeo (tests/data), doctored and pushed to the registry.

The parser-level twins are unit tests in
tests/unit/test_formats_estargz_zstdchunked.py (TOC digest mismatch, TOC
without digest, inconsistent TOCs with overlapping or outside chunks, a
position outside the blob, a flipped byte failing only its chunk, chunk
digests checked after decoding); here each class is shown to come out of
the CLI as one line and a digest (6) or format (9) exit code, and a damaged
chunk never yields wrong bytes: what ``cat`` prints before it stops is a
prefix of the true content.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lazyfs.formats import estargz
from lazyfs.testing.push import OCI_MANIFEST, push_blob
from tests.hostile import corpus as C
from tests.hostile.conftest import one_error_line, repo_name

DATA = Path(__file__).resolve().parents[1] / "data"
FILES = ["/etc/hostname", "/usr/bin/big", "/usr/share/words.txt", "/data/sparse",
         "/data/xattr-file", "/data/ünïcödé.txt"]


def golden(name: str) -> tuple[bytes, bytes, dict]:
    """(config, layer blob, layer descriptor) of a golden layout."""
    root = DATA / name
    index = json.loads((root / "index.json").read_text())

    def blob(digest: str) -> bytes:
        return (root / "blobs/sha256" / digest.split(":")[1]).read_bytes()
    manifest = json.loads(blob(index["manifests"][0]["digest"]))
    desc = manifest["layers"][0]
    return blob(manifest["config"]["digest"]), blob(desc["digest"]), desc


def push(registry, name: str, config: bytes, layer: bytes, desc: dict) -> str:
    repo = repo_name(name)
    desc = {**desc, "digest": C.sha256(layer), "size": len(layer)}
    with registry.client() as c:
        push_blob(c, repo, config)
        push_blob(c, repo, layer)
        body = json.dumps(C.manifest_doc(config, [desc])).encode()
        c.put(f"/v2/{repo}/manifests/v1", content=body,
              headers={"content-type": OCI_MANIFEST}).raise_for_status()
    return f"{registry.host}/{repo}:v1"


def flip(blob: bytes, at: int) -> bytes:
    return blob[:at] + bytes([blob[at] ^ 0x55]) + blob[at + 1:]


def with_annotation(desc: dict, key: str, value: str) -> dict:
    return {**desc, "annotations": {**desc["annotations"], key: value}}


ESTARGZ_TOC = "containerd.io/snapshot/stargz/toc.digest"
ZSTD_SUM = "io.containers.zstd-chunked.manifest-checksum"
ZSTD_POS = "io.containers.zstd-chunked.manifest-position"


def cases() -> dict[str, tuple[str, bytes, dict]]:
    out = {}
    cfg, blob, desc = golden("estargz-ctr-remote")
    out["estargz-honest"] = (cfg, blob, desc)
    out["estargz-toc-digest-lie"] = (cfg, blob, with_annotation(desc, ESTARGZ_TOC, C.sha256(b"x")))
    out["estargz-footer-past-blob"] = (
        cfg, blob[:-estargz.FOOTER_SIZE] + estargz.footer_bytes(10**12), desc)
    out["estargz-footer-inside-data"] = (
        cfg, blob[:-estargz.FOOTER_SIZE] + estargz.footer_bytes(100), desc)
    out["estargz-flipped-chunk"] = (cfg, flip(blob, len(blob) // 3), desc)
    cfg, blob, desc = golden("zstdchunked-skopeo")
    out["zstd-chunked-honest"] = (cfg, blob, desc)
    out["zstd-chunked-checksum-lie"] = (cfg, blob, with_annotation(desc, ZSTD_SUM, C.sha256(b"x")))
    off, length, ulength, kind = desc["annotations"][ZSTD_POS].split(":")
    out["zstd-chunked-position-past-blob"] = (
        cfg, blob, with_annotation(desc, ZSTD_POS, f"{len(blob) + 10}:{length}:{ulength}:{kind}"))
    out["zstd-chunked-position-length-lie"] = (
        cfg, blob, with_annotation(desc, ZSTD_POS, f"{off}:{int(length) - 100}:{ulength}:{kind}"))
    out["zstd-chunked-flipped-chunk"] = (cfg, flip(blob, len(blob) // 3), desc)
    return out


@pytest.fixture(scope="module")
def refs(registry):
    return {name: push(registry, name, *case) for name, case in cases().items()}


REFUSED = {
    "estargz-toc-digest-lie": C.EXIT_DIGEST,
    "estargz-footer-past-blob": C.EXIT_FORMAT,
    "estargz-footer-inside-data": C.EXIT_FORMAT,
    "zstd-chunked-checksum-lie": C.EXIT_DIGEST,
    "zstd-chunked-position-past-blob": C.EXIT_FORMAT,
    "zstd-chunked-position-length-lie": C.EXIT_DIGEST,
}


@pytest.mark.parametrize("name", REFUSED)
def test_toc_lies_are_refused(name, refs, cli):
    p = cli("ls", "-R", refs[name], "/")
    assert p.returncode == REFUSED[name], p.stderr
    assert "layer sha256:" in one_error_line(p)


@pytest.mark.parametrize("kind", ["estargz", "zstd-chunked"])
def test_a_damaged_chunk_never_yields_wrong_bytes(kind, refs, cli):
    truth = cli("cat", refs[f"{kind}-honest"], *FILES)
    assert truth.returncode == 0 and len(truth.stdout) > 3 << 20
    p = cli("cat", refs[f"{kind}-flipped-chunk"], *FILES, check_stderr=False)
    assert p.returncode in (C.EXIT_DIGEST, C.EXIT_FORMAT)
    assert p.stderr.decode().splitlines()[-1].startswith("lazyfs: layer sha256:")
    assert truth.stdout.startswith(p.stdout)


def test_a_damaged_chunk_is_one_error_line(refs, cli):
    p = cli("cat", refs["estargz-flipped-chunk"], *FILES, check_stderr=False)
    one_error_line(p)

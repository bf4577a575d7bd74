"""Real Debian bookworm images, built once by real tools and cached.

Tests and benchmarks need images whose layers were made by real producers, not
by our own tar writer: ``debootstrap`` makes the root filesystem, ``umoci``
makes the layers (and computes the whiteouts), and ``skopeo`` / ``ctr-remote``
convert them to every layer format lazyfs reads. Building takes minutes, so
every result is kept under ``$LAZYFS_TEST_IMAGES`` (default
``/var/tmp/lazyfs-test-images``) and reused; a layout directory only appears
there once complete (built aside, then renamed).

Variants (each an OCI layout whose only tag is the variant's name):

* ``bookworm``: layer 1 ``debootstrap --variant=minbase``; layer 2 a change
  made in a ``umoci`` bundle (files edited, added, hard- and symlinked,
  deleted -> whiteouts); layer 3 an opaque directory (``.wh..wh..opq``),
  added with ``umoci raw add-layer`` because ``umoci repack`` never emits
  opaque markers and ``umoci insert --opaque`` writes a truncated tar.
* ``bookworm-python``: the above plus ``apt-get install python3`` in a chroot.

Formats: ``gzip`` (umoci's own output), ``tar`` (the gzip blobs decompressed,
whose digests must then equal the config's diff_ids), ``zstd`` and
``zstd-chunked`` (skopeo into a fresh layout, so no cached gzip blob is
silently reused; containers/storage's TOC), ``estargz``
(``ctr-remote i convert --estargz --oci`` in a private containerd) and
``zstd-chunked-stargz`` (``ctr-remote i convert --zstdchunked --oci``: zstd
frames with an eStargz-style TOC and both tools' annotations). Both zstd:chunked
producers here write the annotation keys' older spelling
``io.containers.zstd-chunked.*``, not ``io.github.containers.zstd-chunked.*``.

Only the standard library is used here and by what it imports from lazyfs, so
``scripts/build-debian-image`` (``lazyfs.testing.debiancli``) runs before any
virtualenv exists.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..manifest import OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD, OCI_MANIFEST

from .containerd import start_containerd

VARIANTS = ("bookworm", "bookworm-python")
FORMATS = ("gzip", "tar", "zstd", "zstd-chunked", "estargz", "zstd-chunked-stargz")
SUITE = "bookworm"

REF_NAME = "org.opencontainers.image.ref.name"
ESTARGZ_TOC = "containerd.io/snapshot/stargz/toc.digest"
ZSTD_CHUNKED_CHECKSUM = "io.github.containers.zstd-chunked.manifest-checksum"
ZSTD_CHUNKED_POSITION = "io.github.containers.zstd-chunked.manifest-position"
# skopeo 1.9 and ctr-remote 0.13 still write the keys' older spelling.
ZSTD_CHUNKED_CHECKSUM_OLD = "io.containers.zstd-chunked.manifest-checksum"
ZSTD_CHUNKED_POSITION_OLD = "io.containers.zstd-chunked.manifest-position"

FIXED_TIME = 1_700_000_000
HISTORY_TIME = "2024-01-01T00:00:00Z"


class ImageBuildError(RuntimeError):
    """A test image could not be built; raised, never skipped, so CI sees it."""


def cache_root() -> Path:
    return Path(os.environ.get("LAZYFS_TEST_IMAGES", "/var/tmp/lazyfs-test-images"))


def log(msg: str) -> None:
    print(f"build-debian-image: {msg}", file=sys.stderr, flush=True)


def run(*cmd: str | Path, timeout: float = 1800, text: bool = True):
    """Run a tool; its stdout, or ImageBuildError with the tail of its stderr."""
    args = [str(c) for c in cmd]
    r = subprocess.run(args, capture_output=True, text=text, timeout=timeout)
    if r.returncode != 0:
        err = r.stderr if text else r.stderr.decode(errors="replace")
        tail = "\n".join(err.strip().splitlines()[-15:])
        raise ImageBuildError(f"{' '.join(args)} exited {r.returncode}:\n{tail}")
    return r.stdout


# -- the mirror ---------------------------------------------------------------

def debian_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The first mirror this machine's apt uses for the bookworm suite."""
    for uri, suites in _apt_sources(sources):
        if SUITE in suites:
            return uri
    raise ImageBuildError(f"no apt source for suite {SUITE} in {sources}/sources.list(.d)")


def _apt_sources(sources: Path):
    files = [sources / "sources.list"]
    d = sources / "sources.list.d"
    if d.is_dir():
        files += sorted(p for p in d.iterdir() if p.suffix in (".list", ".sources"))
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text(errors="replace")
        yield from (_deb822_sources(text) if f.suffix == ".sources" else _one_line_sources(text))


def _one_line_sources(text: str):
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb":
            yield words[1], {words[2]}


def _deb822_sources(text: str):
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
            for uri in fields.get("uris", "").split():
                yield uri, set(fields.get("suites", "").split())


# -- layouts ------------------------------------------------------------------

def layout_dir(variant: str, fmt: str) -> Path:
    return cache_root() / "layouts" / variant / fmt


def read_json(path: Path) -> dict:
    return json.loads(path.read_bytes())


def blob_path(layout: Path, digest: str) -> Path:
    algo, hexd = digest.split(":", 1)
    return layout / "blobs" / algo / hexd


def manifest_descriptor(layout: Path, tag: str) -> dict:
    for d in read_json(layout / "index.json")["manifests"]:
        if d.get("annotations", {}).get(REF_NAME) == tag:
            return d
    raise ImageBuildError(f"{layout} has no tag {tag}")


def image_manifest(layout: Path, tag: str) -> dict:
    """The image manifest for ``tag`` (an index is resolved to its first manifest)."""
    desc = manifest_descriptor(layout, tag)
    m = read_json(blob_path(layout, desc["digest"]))
    while "manifests" in m:
        m = read_json(blob_path(layout, m["manifests"][0]["digest"]))
    return m


def layers(layout: Path, tag: str) -> list[dict]:
    return image_manifest(layout, tag)["layers"]


@dataclass(frozen=True)
class LayerInfo:
    media_type: str
    digest: str
    size: int
    annotations: dict


def layer_infos(layout: Path, tag: str) -> list[LayerInfo]:
    return [LayerInfo(d["mediaType"], d["digest"], d["size"], d.get("annotations", {}))
            for d in layers(layout, tag)]


# -- cache discipline -----------------------------------------------------------

@contextlib.contextmanager
def cache_lock():
    """One builder at a time across processes (a test session and the demo)."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        shutil.rmtree(root / "tmp", ignore_errors=True)  # left by a killed build
        yield


@contextlib.contextmanager
def building(final: Path):
    """A scratch directory that becomes ``final`` only if the block succeeds."""
    tmp_root = cache_root() / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{final.parent.name}-{final.name}.", dir=tmp_root))
    try:
        yield work
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(work / "out", final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- layer 1: debootstrap ---------------------------------------------------------

def minbase_rootfs() -> Path:
    """``debootstrap --variant=minbase bookworm`` from this machine's mirror, once."""
    root = cache_root() / "stage"
    rootfs, stamp = root / "rootfs-minbase", root / "rootfs-minbase.ok"
    if stamp.exists():
        return rootfs
    shutil.rmtree(rootfs, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    mirror = debian_mirror()
    log(f"debootstrap --variant=minbase {SUITE} from {mirror} (a few minutes)")
    run("debootstrap", "--variant=minbase", SUITE, rootfs, mirror)
    stamp.write_text(mirror + "\n")
    return rootfs


# -- the gzip images, made by umoci --------------------------------------------------

def _repack(layout: Path, tag: str, bundle: Path, created_by: str) -> None:
    run("umoci", "repack", "--refresh-bundle", "--image", f"{layout}:{tag}",
        "--history.created", HISTORY_TIME, "--history.created_by", created_by, bundle)


def build_bookworm(out: Path, work: Path) -> None:
    tag, bundle = "bookworm", work / "bundle"
    rootfs = minbase_rootfs()
    run("umoci", "init", "--layout", out)
    run("umoci", "new", "--image", f"{out}:{tag}")
    run("umoci", "config", "--image", f"{out}:{tag}", "--no-history",
        "--created", HISTORY_TIME, "--os", "linux", "--architecture", "amd64",
        "--config.env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--config.cmd", "bash")
    run("umoci", "unpack", "--image", f"{out}:{tag}", bundle)
    run("cp", "-a", f"{rootfs}/.", bundle / "rootfs")
    _clean_apt(bundle / "rootfs")
    _repack(out, tag, bundle, f"debootstrap --variant=minbase {SUITE}")
    _change_layer(bundle / "rootfs")
    _repack(out, tag, bundle, "edit /etc/issue, add /etc/lazyfs-release and links, "
            "delete /etc/issue.net and /usr/share/doc/debconf")
    opaque = work / "opaque.tar"
    opaque.write_bytes(_opaque_layer())
    run("umoci", "raw", "add-layer", "--image", f"{out}:{tag}",
        "--history.created", HISTORY_TIME,
        "--history.created_by", "replace /etc/cron.daily (opaque directory)", opaque)
    run("umoci", "gc", "--layout", out)


def _clean_apt(rootfs: Path) -> None:
    """What Debian's official images drop: downloaded .debs and package lists."""
    for d in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for p in (rootfs / d).glob("*"):
            if p.is_file():
                p.unlink()


def _change_layer(rootfs: Path) -> None:
    issue = rootfs / "etc/issue"
    issue.write_text(issue.read_text() + "lazyfs test image\n")
    (rootfs / "etc/lazyfs-release").write_text("lazyfs test image: debian bookworm\n")
    os.symlink("lazyfs-release", rootfs / "etc/lazyfs-release.link")
    bin_dir = rootfs / "usr/local/bin"
    hello = bin_dir / "lazyfs-hello"
    hello.write_text("#!/bin/sh\necho hello from a lazy layer\n")
    hello.chmod(0o755)
    os.link(hello, bin_dir / "lazyfs-hello.hardlink")
    (rootfs / "etc/issue.net").unlink()
    shutil.rmtree(rootfs / "usr/share/doc/debconf")


def _opaque_layer() -> bytes:
    """/etc/cron.daily replaced wholesale: its lower files (apt-compat, dpkg) vanish."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        def add(name: str, kind: bytes, data: bytes = b"", mode: int = 0o644) -> None:
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.mtime, ti.size = kind, mode, FIXED_TIME, len(data)
            tf.addfile(ti, io.BytesIO(data) if data else None)
        add("etc/", tarfile.DIRTYPE, mode=0o755)
        add("etc/cron.daily/", tarfile.DIRTYPE, mode=0o755)
        add("etc/cron.daily/.wh..wh..opq", tarfile.REGTYPE, mode=0o644)
        add("etc/cron.daily/lazyfs", tarfile.REGTYPE, b"#!/bin/sh\nexit 0\n", 0o755)
    return buf.getvalue()


def build_bookworm_python(out: Path, work: Path) -> None:
    base = ensure_layout("bookworm", "gzip")
    tag, bundle = "bookworm-python", work / "bundle"
    _copy_layout(base, out)
    run("umoci", "tag", "--image", f"{out}:bookworm", tag)
    run("umoci", "rm", "--image", f"{out}:bookworm")
    run("umoci", "unpack", "--image", f"{out}:{tag}", bundle)
    rootfs = bundle / "rootfs"
    log("apt-get install python3 in a chroot")
    chroot = ["chroot", str(rootfs), "env", "DEBIAN_FRONTEND=noninteractive",
              "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
    run(*chroot, "apt-get", "update", "-qq")
    run(*chroot, "apt-get", "install", "-y", "-qq", "--no-install-recommends", "python3")
    run(*chroot, "apt-get", "clean")
    _clean_apt(rootfs)
    _repack(out, tag, bundle, "apt-get install -y --no-install-recommends python3")
    run("umoci", "gc", "--layout", out)


def _copy_layout(src: Path, dst: Path) -> None:
    """Blobs are immutable, so hard links are a safe copy; the index is not."""
    shutil.copytree(src, dst, copy_function=os.link)
    for name in ("index.json", "oci-layout"):
        (dst / name).unlink()
        shutil.copy2(src / name, dst / name)


# -- conversions ---------------------------------------------------------------

def convert_tar(src: Path, out: Path, tag: str) -> None:
    """Decompress each layer; the blob digest must then be the config's diff_id."""
    _copy_layout(src, out)
    manifest = image_manifest(src, tag)
    diff_ids = read_json(blob_path(src, manifest["config"]["digest"]))["rootfs"]["diff_ids"]
    new_layers = []
    for desc, diff_id in zip(manifest["layers"], diff_ids, strict=True):
        digest, size = _gunzip_blob(blob_path(src, desc["digest"]), out)
        if digest != diff_id:
            raise ImageBuildError(f"layer {desc['digest']} decompresses to {digest}, "
                                  f"config says {diff_id}")
        new_layers.append({"mediaType": OCI_LAYER_TAR, "digest": digest, "size": size})
        blob_path(out, desc["digest"]).unlink()
    manifest = dict(manifest, layers=new_layers)
    _write_single_tag_index(out, tag, manifest)


def _gunzip_blob(path: Path, layout: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    tmp = layout / "blobs" / "sha256" / ".tmp-layer"
    with gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
        while chunk := src.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
            dst.write(chunk)
    digest = "sha256:" + h.hexdigest()
    os.replace(tmp, blob_path(layout, digest))
    return digest, size


def _write_blob(layout: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blob_path(layout, digest).write_bytes(data)
    return digest


def _write_single_tag_index(layout: Path, tag: str, manifest: dict) -> None:
    body = json.dumps(manifest, separators=(",", ":")).encode()
    old = manifest_descriptor(layout, tag)
    blob_path(layout, old["digest"]).unlink(missing_ok=True)
    digest = _write_blob(layout, body)
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": OCI_MANIFEST, "digest": digest, "size": len(body),
        "annotations": {REF_NAME: tag}}]}
    (layout / "index.json").write_text(json.dumps(index, separators=(",", ":")))


def convert_skopeo(src: Path, out: Path, tag: str, compression: str) -> None:
    """Recompress into a fresh layout: with no blobs there, none can be reused."""
    run("skopeo", "copy", "-q", "--dest-compress-format", compression,
        f"oci:{src}:{tag}", f"oci:{out}:{tag}")


def convert_ctr(src: Path, out: Path, tag: str, work: Path, *flags: str) -> None:
    """``ctr-remote i convert FLAGS`` in a containerd of our own."""
    archive = work / "src.tar"
    with tarfile.open(archive, "w") as tf:
        for name in ("oci-layout", "index.json", "blobs"):
            tf.add(src / name, arcname=name)
    ctd_dir = Path(tempfile.mkdtemp(prefix="lazyfs-ctd-", dir="/tmp"))
    try:
        with start_containerd(ctd_dir) as ctd:
            ctd.ctr("images", "import", "--no-unpack", "--base-name", "local/debian",
                    str(archive), timeout=600)
            ctd.ctr("images", "convert", *flags,
                    f"local/debian:{tag}", f"local/debian:{tag}-converted", timeout=1800)
            exported = work / "out.tar"
            ctd.ctr("images", "export", str(exported), f"local/debian:{tag}-converted",
                    timeout=600)
    finally:
        shutil.rmtree(ctd_dir, ignore_errors=True)
    out.mkdir()
    with tarfile.open(exported) as tf:
        tf.extractall(out, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    desc = read_json(out / "index.json")["manifests"][0]
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": desc["mediaType"], "digest": desc["digest"], "size": desc["size"],
        "annotations": {REF_NAME: tag}}]}
    (out / "index.json").write_text(json.dumps(index, separators=(",", ":")))


def check_layout(layout: Path, tag: str, fmt: str) -> None:
    """Refuse a conversion whose layers are not in the format asked for."""
    infos = layer_infos(layout, tag)
    want = {"gzip": OCI_LAYER_GZIP, "tar": OCI_LAYER_TAR, "zstd": OCI_LAYER_ZSTD,
            "zstd-chunked": OCI_LAYER_ZSTD, "estargz": OCI_LAYER_GZIP,
            "zstd-chunked-stargz": OCI_LAYER_ZSTD}[fmt]
    for info in infos:
        if info.media_type != want:
            raise ImageBuildError(f"{fmt} layout has a {info.media_type} layer {info.digest}")
        if fmt in ("estargz", "zstd-chunked-stargz") and ESTARGZ_TOC not in info.annotations:
            raise ImageBuildError(f"estargz layer {info.digest} has no {ESTARGZ_TOC}")
        if fmt.startswith("zstd-chunked") and not {
                ZSTD_CHUNKED_CHECKSUM, ZSTD_CHUNKED_CHECKSUM_OLD} & info.annotations.keys():
            raise ImageBuildError(f"zstd:chunked layer {info.digest} has no "
                                  f"{ZSTD_CHUNKED_CHECKSUM} (nor its older spelling)")
        if not blob_path(layout, info.digest).is_file():
            raise ImageBuildError(f"{fmt} layout lacks blob {info.digest}")


def ensure_layout(variant: str, fmt: str) -> Path:
    if variant not in VARIANTS:
        raise ImageBuildError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    if fmt not in FORMATS:
        raise ImageBuildError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    final = layout_dir(variant, fmt)
    if (final / "index.json").exists():
        return final
    src = None if fmt == "gzip" else ensure_layout(variant, "gzip")
    log(f"building {variant} as {fmt}")
    started = time.monotonic()
    with building(final) as work:
        out = work / "out"
        if fmt == "gzip":
            (build_bookworm if variant == "bookworm" else build_bookworm_python)(out, work)
        elif fmt == "tar":
            convert_tar(src, out, variant)
        elif fmt == "zstd":
            convert_skopeo(src, out, variant, "zstd")
        elif fmt == "zstd-chunked":
            convert_skopeo(src, out, variant, "zstd:chunked")
        elif fmt == "estargz":
            convert_ctr(src, out, variant, work, "--estargz", "--oci")
        else:
            convert_ctr(src, out, variant, work, "--zstdchunked", "--oci")
        check_layout(out, variant, fmt)
    log(f"built {variant} as {fmt} in {time.monotonic() - started:.1f}s")
    return final


def debian_layout(variant: str = "bookworm", fmt: str = "gzip") -> Path:
    """An OCI layout holding ``variant`` (also its only tag) in layer format ``fmt``;
    built on first use, then served from the cache."""
    final = layout_dir(variant, fmt)
    if (final / "index.json").exists():
        return final
    with cache_lock():
        return ensure_layout(variant, fmt)


# -- pushing ------------------------------------------------------------------------

def push_layout(layout: Path, registry_host: str, repo: str, tag: str, *,
                src_tag: str | None = None) -> str:
    """Push the layout's ``tag`` byte for byte to a plain-HTTP registry; returns the
    manifest digest, checked to be the layout's own. ``--preserve-digests`` is what
    stops skopeo from recompressing (uncompressed layers included) or swapping in
    a blob it already knows the registry has."""
    src_tag = src_tag or default_tag(layout, tag)
    want = manifest_descriptor(layout, src_tag)["digest"]
    run("skopeo", "copy", "-q", "--dest-tls-verify=false", "--preserve-digests",
        f"oci:{layout}:{src_tag}", f"docker://{registry_host}/{repo}:{tag}")
    raw = run("skopeo", "inspect", "--raw", "--tls-verify=false",
              f"docker://{registry_host}/{repo}:{tag}", text=False)
    got = "sha256:" + hashlib.sha256(raw).hexdigest()
    if got != want:
        raise ImageBuildError(f"{registry_host}/{repo}:{tag} has manifest {got}, "
                              f"layout has {want}")
    return want


@dataclass(frozen=True)
class PushedImage:
    host: str
    repo: str
    tag: str
    digest: str
    layout: Path

    @property
    def ref(self) -> str:
        return f"{self.host}/{self.repo}:{self.tag}"


def debian_image(registry_host: str, variant: str = "bookworm", fmt: str = "gzip",
                 repo: str = "debian") -> PushedImage:
    """Build (cached) and push one variant in one format; for session fixtures::

        @pytest.fixture(scope="session")
        def debian_estargz(registry):
            return debian.debian_image(registry.host, fmt="estargz")
    """
    layout = debian_layout(variant, fmt)
    tag = push_tag(variant, fmt)
    return PushedImage(registry_host, repo, tag,
                       push_layout(layout, registry_host, repo, tag), layout)


def push_tag(variant: str, fmt: str) -> str:
    return variant if fmt == "gzip" else f"{variant}-{fmt}"


def default_tag(layout: Path, tag: str) -> str:
    """``tag`` itself, or the layout's only tag (cached layouts hold one)."""
    tags = tags_of(layout)
    return tags[0] if tag not in tags and len(tags) == 1 else tag


def tags_of(layout: Path) -> list[str]:
    return [d["annotations"][REF_NAME] for d in read_json(layout / "index.json")["manifests"]
            if REF_NAME in d.get("annotations", {})]

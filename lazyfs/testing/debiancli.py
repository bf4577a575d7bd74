"""``build-debian-image``: build the Debian test images ahead of time, list
them, export them as one layout or push them to a registry.

``python -m lazyfs.testing.debiancli --help``; ``scripts/build-debian-image``
runs it, with the virtualenv's Python once there is one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from .debian import (FORMATS, REF_NAME, ImageBuildError, cache_lock, ensure_layout,
                     layer_infos, layout_dir, log, manifest_descriptor, push_layout, push_tag,
                     read_json)


def export_layout(out: Path, variants: list[str], fmt: str) -> None:
    """One layout at ``out`` holding every variant as its own tag (blobs hard-linked
    where the file system allows)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index_path = out / "index.json"
    index = read_json(index_path) if index_path.exists() else {"schemaVersion": 2,
                                                                 "manifests": []}
    for variant in variants:
        src = layout_dir(variant, fmt)
        for blob in (src / "blobs").rglob("*"):
            dst = out / blob.relative_to(src)
            if blob.is_dir():
                dst.mkdir(parents=True, exist_ok=True)
            elif not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(blob, dst)
        desc = manifest_descriptor(src, variant)
        index["manifests"] = [d for d in index["manifests"]
                              if d.get("annotations", {}).get(REF_NAME) != variant] + [desc]
    index_path.write_text(json.dumps(index, separators=(",", ":")))


def _push_one(target: str, variant: str, fmt: str) -> str:
    host, _, repo = target.partition("/")
    if not repo:
        raise ImageBuildError(f"--push wants HOST/REPO, got {target!r}")
    tag = push_tag(variant, fmt)
    digest = push_layout(layout_dir(variant, fmt), host, repo, tag)
    return f"pushed {host}/{repo}:{tag}@{digest}"


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copy2(src, dst)


def describe(variant: str, fmt: str) -> str:
    layout = layout_dir(variant, fmt)
    sizes = [i.size for i in layer_infos(layout, variant)]
    each = " + ".join(_human(s) for s in sizes)
    return f"{variant:16} {fmt:20} {_human(sum(sizes)):>10}  ({each})  {layout}"


def _human(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="build-debian-image", description=(
        "Build a real multi-layer Debian bookworm OCI image (cached under "
        "$LAZYFS_TEST_IMAGES, default /var/tmp/lazyfs-test-images)."))
    p.add_argument("--python", action="store_true", help="also build bookworm-python")
    p.add_argument("--format", action="append", choices=(*FORMATS, "all"),
                   help="layer format(s) to build (default gzip; repeatable)")
    p.add_argument("--out", type=Path, help="also write an OCI layout here with the "
                   "variants as tags (the first --format)")
    p.add_argument("--push", metavar="HOST/REPO", help="also push to this plain-HTTP "
                   "registry repository, as tag VARIANT (gzip) or VARIANT-FORMAT")
    args = p.parse_args(argv)
    fmts = list(FORMATS) if "all" in (args.format or []) else (args.format or ["gzip"])
    variants = ["bookworm", "bookworm-python"] if args.python else ["bookworm"]
    started = time.monotonic()
    try:
        with cache_lock():
            for variant in variants:
                for fmt in fmts:
                    ensure_layout(variant, fmt)
            if args.out:
                export_layout(args.out.resolve(), variants, fmts[0])
            pushed = [_push_one(args.push, v, f) for v in variants for f in fmts
                      if args.push]
    except ImageBuildError as e:
        print(f"build-debian-image: {e}", file=sys.stderr)
        return 1
    for variant in variants:
        for fmt in fmts:
            print(describe(variant, fmt))
    if args.out:
        print(f"layout {args.out} tags: {', '.join(variants)}")
    for line in pushed:
        print(line)
    log(f"done in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run a probe in a fresh process and push the Debian images it reads."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from lazyfs.testing import debian

from .common import PYTHON, REPO, log

FORMATS = ("gzip", "tar", "zstd", "zstd-chunked", "estargz", "zstd-chunked-stargz")
TOC_FORMATS = {"zstd-chunked", "estargz", "zstd-chunked-stargz"}
"""Formats whose table comes from a TOC fetched by range; the others need one
pass over every layer (tar's headers are spread over the whole blob)."""


def run_probe(spec: dict, env: dict | None = None, timeout: float = 900) -> dict:
    """The probe's JSON answer; ``{"error": ...}`` if it crashed."""
    env = env or {}
    full_env = dict(os.environ, PYTHONPATH=f"{REPO / 'scripts'}:{REPO}", **env)
    t = time.perf_counter()
    r = subprocess.run([PYTHON, "-m", "benchlib.probe", json.dumps(spec)], cwd=REPO,
                       env=full_env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t
    try:
        out = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = r.stderr.strip().splitlines()[-1:] or [f"exit {r.returncode}"]
        out = {"error": f"probe crashed: {tail[0][:300]}"}
    out["wall_s"] = wall
    return out


def push_debian(host: str, variant: str, fmt: str):
    """The pushed image, or the error text if this format cannot be built or pushed."""
    t = time.perf_counter()
    try:
        img = debian.debian_image(host, variant, fmt)
    except debian.ImageBuildError as e:
        return str(e).splitlines()[0]
    log(f"pushed {variant} {fmt} in {time.perf_counter() - t:.1f}s")
    return img


def image_bytes(layout: Path, variant: str) -> int:
    return sum(size for size in layer_sizes(layout, variant).values())


def layer_sizes(layout: Path, variant: str) -> dict[str, int]:
    tag = debian.default_tag(layout, variant)
    return {i.digest: i.size for i in debian.layer_infos(layout, tag)}


def fetched(stats: dict | None) -> int | None:
    if not stats:
        return None
    return sum(layer["bytes_fetched"] for layer in stats.get("layers", []))


def requests(stats: dict | None) -> int | None:
    if not stats:
        return None
    return sum(layer["requests"] for layer in stats.get("layers", []))

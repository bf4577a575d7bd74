"""First-read traces end to end, on a real registry and real mounts: the
first mount records, ``trace push`` publishes, a mount on a fresh cache pulls
the trace and has fetched every recorded range before it is read; a hostile
trace changes no byte a mount serves; ``lazyfs serve`` records the reads made
through its per-layer directories (a snapshotter's containers) and a service
on a fresh cache replays them."""

from __future__ import annotations

import json
import os
import time

import pytest

from lazyfs.fs.daemon import read_events, read_stats
from lazyfs.fs.operations import EVENTS_XATTR
from lazyfs.read.stats import unpack_events
from lazyfs.read.trace import Trace, TraceEntry, load_trace, save_trace
from lazyfs.store.blobs import Store
from tests.support.climount import cli_mount, lazyfs, lazyfs_env
from tests.support.serving import serving

pytestmark = pytest.mark.slow

START = ["usr/lib/python3.11/json/__init__.py", "usr/lib/python3.11/json/decoder.py",
         "usr/lib/python3.11/email/parser.py", "usr/lib/python3.11/sqlite3/__init__.py",
         "usr/lib/os-release"]


@pytest.fixture(scope="module")
def image(registry):
    from lazyfs.testing.debian import debian_image
    return debian_image(registry.host, "bookworm-python", "estargz")


def read_start(mnt) -> dict[str, bytes]:
    return {p: (mnt / p).read_bytes() for p in START}


def replayed(mnt, timeout: float = 60, stats_of=read_stats) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        stats = stats_of(mnt)
        replay = stats["trace"]["replay"]
        if replay["state"] not in ("looking", "running") or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


def requests(stats: dict) -> int:
    return sum(layer["requests"] for layer in stats["layers"])


def test_record_push_and_replay_on_a_fresh_cache(image, tmp_path):
    first = lazyfs_env(tmp_path / "a")
    with cli_mount(image.ref, tmp_path / "mnt", first) as mnt:
        expected = read_start(mnt)
        lazyfs("umount", str(mnt), env=first)  # waits for the daemon, which keeps the trace
    shown = json.loads(lazyfs("trace", "show", "--json", image.ref, env=first).stdout)
    assert shown["manifest"] == image.digest
    assert [e["path"] for e in shown["entries"]] == ["/" + p for p in START]
    text = lazyfs("trace", "show", image.ref, env=first).stdout
    assert f"{len(START)} ranges" in text and f"/{START[2]}" in text
    assert lazyfs("trace", "push", image.ref, env=first).stdout.startswith("sha256:")

    fresh = lazyfs_env(tmp_path / "b")
    with cli_mount(image.ref, tmp_path / "mnt", fresh) as mnt:
        stats = replayed(mnt)
        assert stats["trace"]["replay"] == {"source": "registry", "state": "done",
                                            "planned": len(START), "dropped": 0,
                                            "done": len(START), "failed": 0}
        assert read_start(mnt) == expected
        assert requests(read_stats(mnt)) == requests(stats), "no read had to fetch"
        kinds = {e[3] for e in unpack_events(read_events(mnt))["events"]}
        assert "prefetch" in kinds and "read" not in kinds
        picture = tmp_path / "timeline.svg"
        lazyfs("stats", "--timeline", str(picture), str(mnt), env=fresh)
        assert b"<svg" in picture.read_bytes()[:400]


def test_a_hostile_trace_serves_the_right_bytes(image, tmp_path):
    env = lazyfs_env(tmp_path / "a")
    with cli_mount(image.ref, tmp_path / "mnt", env) as mnt:
        expected = read_start(mnt)
        lazyfs("umount", str(mnt), env=env)
    recorded = Trace.from_json(next((tmp_path / "a" / "cache" / "indexes" / "traces")
                                    .iterdir()).read_bytes())
    good = recorded.entries[0]
    hostile = Trace(recorded.manifest, entries=[
        TraceEntry(0, "sha256:" + "e" * 64, good.data, 0, 1 << 30),
        TraceEntry(0, good.layer, b"\x01\x02not a locator", 0, 4096),
        TraceEntry(0, good.layer, good.data, 1 << 40, 4096),
        TraceEntry(0, good.layer, good.data, 0, 1 << 40),
    ])
    env = lazyfs_env(tmp_path / "b")
    save_trace(Store(tmp_path / "b" / "cache"), hostile)
    with cli_mount(image.ref, tmp_path / "mnt", env) as mnt:
        replay = replayed(mnt)["trace"]["replay"]
        assert (replay["planned"], replay["dropped"]) == (1, 3)
        assert read_start(mnt) == expected
        log = (tmp_path / "b" / "run" / "lazyfs").glob("*.log")
        text = "".join(p.read_text() for p in log)
    assert "1 layer(s) not in this image" in text and "2 entries dropped and 1 clamped" in text


def layer_dirs(service, image_dir) -> list[Path]:
    """The image's per-layer directories under ``.layers``, topmost first."""
    layers = reversed(service.stats(image_dir)["layers"])  # opens the image
    views = service.stats()["layer_views"]
    return [service.root / ".layers" / views[layer["digest"]] for layer in layers]


def views_stats(service) -> dict:
    """The stats of the image opened for its per-layer views (a slot of its own)."""
    return next(s["image"] for s in service.stats()["images"] if s["layer_views"])


def read_layers(service, image_dir) -> dict[str, bytes]:
    """``START`` read as a snapshotter's overlayfs reads it: from the topmost
    per-layer directory under ``.layers`` that has the file."""
    dirs = layer_dirs(service, image_dir)
    return {p: next(d / p for d in dirs if os.path.lexists(d / p)).read_bytes() for p in START}


def test_the_service_records_and_a_fresh_service_replays(image, tmp_path):
    with serving(tmp_path / "a") as service:
        image_dir = service.root / image.host / f"{image.repo}:{image.tag}"
        expected = read_layers(service, image_dir)
        assert views_stats(service)["trace"]["recorded"] == len(START)
        assert read_start(image_dir) == expected
    recorded = load_trace(Store(tmp_path / "a" / "cache"), image.digest)
    assert recorded is not None and len(recorded.entries) == len(START)
    save_trace(Store(tmp_path / "b" / "cache"), recorded)  # a fresh cache, the trace only

    with serving(tmp_path / "b") as service:
        image_dir = service.root / image.host / f"{image.repo}:{image.tag}"
        stats = replayed(image_dir, stats_of=service.stats)
        assert stats["trace"]["replay"] == {"source": "local", "state": "done",
                                            "planned": len(START), "dropped": 0,
                                            "done": len(START), "failed": 0}
        assert read_layers(service, image_dir) == expected
        assert requests(views_stats(service)) == 0, "the replay fetched what the views read"
        kinds = {e[3] for e in unpack_events(os.getxattr(image_dir, EVENTS_XATTR))["events"]}
        assert "prefetch" in kinds and "read" not in kinds

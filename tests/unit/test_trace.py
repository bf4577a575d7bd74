"""First-read traces on the memory registry: recorded per image, replayed on
a cold store ahead of the reads, shared as a referrer, and never trusted."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import random
import sys

import pytest
import trio

from lazyfs.cli.timeline import draw_timeline
from lazyfs.image import OpenOptions, open_image_async
from lazyfs.read import replay as replay_module
from lazyfs.read.replay import Replay, ReplayOptions, batches
from lazyfs.read.stats import EventLog, unpack_events
from lazyfs.index.shared import push_referrer
from lazyfs.read.trace import ARTIFACT_TYPE as TRACE_ARTIFACT
from lazyfs.read.trace import MEDIA_TYPE as TRACE_MEDIA
from lazyfs.read.trace import (MAX_ENTRIES, MAX_TRACE_BYTES, Trace, TraceEntry, load_trace,
                               pull_trace, push_trace, save_trace)
from lazyfs.errors import LayerFormatError, UsageError
from lazyfs.manifest import Descriptor
from lazyfs.reference import parse_reference
from lazyfs.registry import RegistryClient
from lazyfs.store.blobs import Store
from lazyfs.testing import MemoryRegistry, build_layer

RNG = random.Random(16)
FILES = {f"usr/lib/m{i}.py": RNG.randbytes(20_000 + 3000 * i) for i in range(12)}
OTHER = {f"opt/x{i}": RNG.randbytes(30_000) for i in range(4)}
START = ["/usr/lib/m3.py", "/usr/lib/m0.py", "/usr/lib/m7.py", "/usr/lib/m11.py"]


def push(registry: MemoryRegistry, tag: str = "v1", fmt: str = "estargz", extra=None):
    layers = [build_layer(fmt, FILES, chunk_size=16 << 10),
              build_layer(fmt, extra or {"etc/hostname": "box\n"})]
    return registry.push_image("py/app", tag, layers)


def opened(registry, ref, store: Store, **kw):
    return open_image_async(ref, OpenOptions(registry=registry.options(), **kw), store=store)


async def start(image, paths=START) -> dict[str, bytes]:
    out = {}
    for path in paths:
        node = image.index.resolve(path)
        out[path] = await image.read(node, 0, node.size)
    return out


async def settled(image) -> None:
    with trio.fail_after(10):
        while image.replay.state in ("looking", "running"):
            await trio.sleep(0.01)


def fetches(registry) -> int:
    return registry.count("range") + registry.count("multirange")


async def record(registry, pushed, store: Store) -> Trace:
    async with opened(registry, pushed.ref, store, record_trace=True) as image:
        await start(image)
    trace = load_trace(store, pushed.digest)
    assert trace is not None
    return trace


async def test_a_mount_records_its_reads_in_order(tmp_path):
    registry = MemoryRegistry()
    pushed = push(registry)
    store = Store(tmp_path / "a")
    async with opened(registry, pushed.ref, store, record_trace=True) as image:
        node = image.index.resolve("/usr/lib/m3.py")
        await image.read(node, 0, 4096)
        await image.read(node, 4096, 4096)  # continues: the same entry grows
        await image.read(node, 0, 100)  # already noted
        await start(image)
    trace = load_trace(store, pushed.digest)
    sizes = {p: len(FILES[p.lstrip("/")]) for p in START}
    assert [(e.offset, e.size) for e in trace.entries] == \
        [(0, 8192)] + [(0, sizes[p]) for p in START]
    assert {e.layer for e in trace.entries} == {pushed.layers[0].digest}
    assert trace.entries == sorted(trace.entries, key=lambda e: e.at)
    assert Trace.from_json(trace.to_json()) == trace


async def test_replay_on_a_cold_store_fetches_before_the_reads(tmp_path):
    registry = MemoryRegistry()
    pushed = push(registry)
    trace = await record(registry, pushed, Store(tmp_path / "a"))
    cold = Store(tmp_path / "b")
    save_trace(cold, trace)
    async with opened(registry, pushed.ref, cold, replay=ReplayOptions()) as image:
        await settled(image)
        assert image.replay.stats()["done"] == len(START)
        before = fetches(registry)
        got = await start(image)
        assert fetches(registry) == before, "every read was fetched ahead"
        kinds = {e.kind for e in image.reader.events.events()}
        assert "prefetch" in kinds and "read" not in kinds
        assert image.stats()["trace"]["replay"]["source"] == "local"
    assert got == {p: FILES[p.lstrip("/")] for p in START}


async def test_no_prefetch_and_no_trace_fetch_nothing_in_the_background(tmp_path):
    registry = MemoryRegistry()
    pushed = push(registry)
    trace = await record(registry, pushed, Store(tmp_path / "a"))
    for name, options, keep in [("off", ReplayOptions(enabled=False), True),
                                ("none", ReplayOptions(), False)]:
        store = Store(tmp_path / name)
        if keep:
            save_trace(store, trace)
        async with opened(registry, pushed.ref, store, replay=options) as image:
            opening = fetches(registry)  # the layers' TOCs
            await settled(image)
            await trio.sleep(0.05)
            assert fetches(registry) == opening, name
            assert image.replay.state == ("off" if keep else "no trace")


async def test_an_image_sharing_a_layer_uses_its_trace(tmp_path):
    registry = MemoryRegistry()
    first = push(registry)
    second = push(registry, "v2", extra=OTHER)
    assert first.layers[0].digest == second.layers[0].digest
    store = Store(tmp_path / "a")
    await record(registry, first, store)
    async with opened(registry, second.ref, store, replay=ReplayOptions()) as image:
        await settled(image)
        assert image.replay.source == f"image {first.digest}"
        assert image.replay.done == len(START)


@pytest.mark.parametrize("referrers", [True, False])
async def test_push_then_pull_from_the_registry(tmp_path, referrers):
    registry = MemoryRegistry(referrers=referrers)
    pushed = push(registry)
    trace = await record(registry, pushed, Store(tmp_path / "a"))
    ref = parse_reference(pushed.ref)
    subject = Descriptor(pushed.media_type, pushed.digest, len(pushed.manifest))
    async with RegistryClient(registry.options()) as client:
        await push_trace(client, ref, subject, trace)
        assert await pull_trace(client, ref, pushed.digest) == trace
    fresh = Store(tmp_path / "b")
    async with opened(registry, pushed.ref, fresh, replay=ReplayOptions()) as image:
        await settled(image)
        assert image.replay.source == "registry"
        assert image.replay.done == len(START)
        before = fetches(registry)
        await start(image)
        assert fetches(registry) == before
    assert load_trace(fresh, pushed.digest) == trace


async def test_a_hostile_trace_is_clamped_and_serves_right_bytes(tmp_path, caplog):
    registry = MemoryRegistry()
    pushed = push(registry)
    good = (await record(registry, pushed, Store(tmp_path / "a"))).entries[0]
    layer = pushed.layers[0].digest
    size = len(FILES["usr/lib/m3.py"])
    hostile = Trace(pushed.digest, entries=[
        TraceEntry(0, "sha256:" + "0" * 64, good.data, 0, 100),  # a layer it lacks
        TraceEntry(0, layer, b"\x00garbage", 0, 100),  # no such file
        TraceEntry(0, layer, good.data, size + 10, 100),  # past the file
        TraceEntry(0, layer, good.data, 100, 1 << 40),  # clamped to the file
    ])
    store = Store(tmp_path / "b")
    save_trace(store, hostile)
    caplog.set_level(logging.WARNING, "lazyfs")
    async with opened(registry, pushed.ref, store, replay=ReplayOptions()) as image:
        await settled(image)
        assert (image.replay.planned, image.replay.dropped) == (1, 3)
        assert await start(image) == {p: FILES[p.lstrip("/")] for p in START}
    assert "1 layer(s) not in this image" in caplog.text
    assert "2 entries dropped and 1 clamped" in caplog.text


async def test_a_trace_cannot_make_wrong_bytes_be_served(tmp_path):
    """The registry corrupts what replay fetches: the corrupt pieces never
    reach a read, which fetches them again and gets the right bytes."""
    registry = MemoryRegistry()
    pushed = push(registry)
    trace = await record(registry, pushed, Store(tmp_path / "a"))
    store = Store(tmp_path / "b")
    async with opened(registry, pushed.ref, store):
        pass  # the layers' TOCs, unbroken
    save_trace(store, trace)
    registry.fault("flip", kind="multirange", times=None)
    registry.fault("flip", kind="range", times=None)
    async with opened(registry, pushed.ref, store, replay=ReplayOptions()) as image:
        await settled(image)
        assert image.replay.failed > 0
        registry.clear_faults()
        assert await start(image) == {p: FILES[p.lstrip("/")] for p in START}


def test_malformed_or_huge_traces_are_refused_or_cut(caplog):
    with pytest.raises(LayerFormatError, match="more than a trace may have"):
        Trace.from_json(b" " * (MAX_TRACE_BYTES + 1))
    for bad in (b"[]", b"{}", b'{"mediaType": "x"}', b"\xff"):
        with pytest.raises(LayerFormatError, match="not a valid trace"):
            Trace.from_json(bad)
    data = base64.b64encode(b"x").decode()
    doc = {"mediaType": "application/vnd.lazyfs.trace.v1+json", "manifest": "sha256:" + "1" * 64,
           "layers": [{"digest": "sha256:" + "2" * 64}],
           "entries": [[i, 0, data, i, 1] for i in range(MAX_ENTRIES + 5)]}
    assert len(Trace.from_json(json.dumps(doc).encode()).entries) == MAX_ENTRIES
    assert f"using the first {MAX_ENTRIES}" in caplog.text
    doc["entries"] = [[0, 7, data, 0, 1]]
    with pytest.raises(LayerFormatError):
        Trace.from_json(json.dumps(doc).encode())


def test_batches_grow_and_keep_order():
    reads = [(0, b"%d" % i, 0, 100 << 10) for i in range(100)]
    out = batches(reads)
    assert [r for b in out for r in b] == reads
    assert len(out[0]) == 3 and len(out[1]) == 6 and len(out[-2]) == 41


def test_event_log_is_bounded_and_fits_its_xattr():
    log = EventLog(kept=100)
    for i in range(1000):
        log.add(0, "read", i * 4096, 4096)
    events = log.events()
    assert len(events) == 100 and log.dropped == 900
    assert events[0].offset == 0 and events[-1].offset == 999 * 4096
    packed = log.packed(limit=300)
    assert len(packed) <= 300
    doc = unpack_events(packed)
    assert doc["dropped"] > 900 and doc["events"][0][4] == 0


async def test_replay_keeps_to_its_rate(tmp_path, monkeypatch):
    monkeypatch.setattr(replay_module, "FIRST_BATCH", 16 << 10)
    registry = MemoryRegistry()
    pushed = push(registry)
    trace = await record(registry, pushed, Store(tmp_path / "a"))
    store = Store(tmp_path / "b")
    save_trace(store, trace)
    rate = 300_000
    reads = [(0, e.data, e.offset, e.size) for e in trace.entries]
    planned = batches(reads)
    assert len(planned) == 3
    later = sum(r[3] for b in planned[:-1] for r in b)  # asked for before the last batch
    async with opened(registry, pushed.ref, store, replay=ReplayOptions(rate=rate)) as image:
        began = trio.current_time()
        await settled(image)
        assert image.replay.done == len(START)
        assert trio.current_time() - began >= later / rate


async def test_replay_leaves_half_its_slots_to_waiting_reads(tmp_path, autojump_clock):
    registry = MemoryRegistry()
    pushed = push(registry)
    async with opened(registry, pushed.ref, Store(tmp_path)) as image:
        replay = Replay(image.reader, ReplayOptions(concurrency=4))
        image.reader.reading = 1  # as while a read waits for its bytes
        for _ in range(2):
            await replay._slot(0)
            replay._inflight += 1
        with trio.move_on_after(1) as waited:
            await replay._slot(0)
        assert waited.cancelled_caught
        image.reader.reading = 0
        with trio.fail_after(1):
            await replay._slot(0)


def test_the_timeline_is_drawn(tmp_path, monkeypatch):
    log = EventLog()
    for i, kind in enumerate(["read", "prefetch", "readahead", "index", "hit"]):
        log.add(i % 2, kind, i * 4096, 4096, start=i * 0.01)
    doc = log.document()
    doc["layers"] = [{"digest": "sha256:" + "a" * 64, "size": 1 << 20},
                     {"digest": "sha256:" + "b" * 64, "size": 1 << 20}]
    draw_timeline(doc, tmp_path / "t.svg")
    draw_timeline(doc, tmp_path / "t.png")
    assert b"<svg" in (tmp_path / "t.svg").read_bytes()[:400]
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(UsageError, match="svg or .png"):
        draw_timeline(doc, tmp_path / "t.jpg")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UsageError, match=r"pip install 'lazyfs\[plot\]'"):
        draw_timeline(doc, tmp_path / "u.svg")


async def test_a_published_trace_too_big_or_for_another_image_is_refused(tmp_path, caplog):
    registry = MemoryRegistry()
    pushed = push(registry)
    ref = parse_reference(pushed.ref)
    subject = Descriptor(pushed.media_type, pushed.digest, len(pushed.manifest))
    huge = b'{"mediaType": "application/vnd.lazyfs.trace.v1+json", "pad": "' + \
        b"x" * MAX_TRACE_BYTES + b'"}'
    other = Trace("sha256:" + "9" * 64, entries=[TraceEntry(0, "sha256:" + "8" * 64, b"x", 0, 1)])
    async with RegistryClient(registry.options()) as client:
        await push_referrer(client, ref, subject, TRACE_ARTIFACT, [(TRACE_MEDIA, huge, {})])
        await push_trace(client, ref, subject, other)
        assert await pull_trace(client, ref, pushed.digest) is None
    assert "too large" in caplog.text and f"records image {other.manifest}" in caplog.text
    assert not registry.seen("blob", method="GET",
                             digest="sha256:" + hashlib.sha256(huge).hexdigest())


async def test_a_mount_reading_less_keeps_the_start_it_replayed(tmp_path):
    registry = MemoryRegistry()
    pushed = push(registry)
    store = Store(tmp_path / "a")
    full = await record(registry, pushed, store)
    async with opened(registry, pushed.ref, store, record_trace=True) as image:
        node = image.index.resolve("/usr/lib/m3.py")
        await image.read(node, 0, 100)
    kept = load_trace(store, pushed.digest)
    assert kept.entries[0].size == 100 and kept.entries[0].data == node.data
    assert kept.entries[1:] == [e for e in full.entries
                                if not (e.data == node.data and e.offset == 0 and e.size <= 100)]
    assert set(kept.entries) >= set(full.entries) - {kept.entries[0]}
    async with opened(registry, pushed.ref, store, record_trace=True) as image:
        await start(image)
    again = load_trace(store, pushed.digest)
    assert len(again.entries) == len(kept.entries) - 1, "the same start adds nothing"

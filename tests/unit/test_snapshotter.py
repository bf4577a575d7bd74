"""The snapshots gRPC API as containerd's proxy client calls it: over a unix
socket, with containerd's semantics (storage rules, mounts, status codes).
The layer source is a folder per layer here; containerd itself drives the
snapshotter in tests/integration/test_snapshotter.py."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import grpc
import pytest
import trio
from google.protobuf import field_mask_pb2

from lazyfs.errors import RegistryUnreachable, UsageError
from lazyfs.snapshotter import SnapshotterService
from lazyfs.snapshotter.api import snapshots_pb2 as pb
from lazyfs.snapshotter.api import snapshots_pb2_grpc
from lazyfs.snapshotter.filters import parse_filter

STARGZ = "containerd.io/snapshot/remote/stargz."
REF = "127.0.0.1:5000/app:v1"


class FolderLayers:
    """Each layer a folder; ``down`` makes every call fail as an unreachable
    registry would; ``generation`` changes the folders, as a new mount would."""

    def __init__(self, root: Path):
        self.root = root
        self.down = False
        self.generation = 0
        self.calls: list[tuple[str, str]] = []

    async def layer_dir(self, ref: str, digest: str) -> str:
        self.calls.append((ref, digest))
        if self.down:
            raise RegistryUnreachable(f"cannot connect to {ref.split('/')[0]}")
        d = self.root / str(self.generation) / digest.replace(":", "-")
        d.mkdir(parents=True, exist_ok=True)
        return str(d)


class Client:
    def __init__(self, socket: str):
        self.channel = grpc.insecure_channel("unix:" + socket)
        self.stub = snapshots_pb2_grpc.SnapshotsStub(self.channel)

    async def __call__(self, method: str, **fields):
        request = getattr(pb, _REQUESTS[method])(snapshotter="lazyfs", **fields)
        call = getattr(self.stub, method)
        if method == "List":
            return await trio.to_thread.run_sync(lambda: [i for r in call(request) for i in r.info])
        return await trio.to_thread.run_sync(call, request)


_REQUESTS = {"Prepare": "PrepareSnapshotRequest", "View": "ViewSnapshotRequest",
             "Mounts": "MountsRequest", "Commit": "CommitSnapshotRequest",
             "Remove": "RemoveSnapshotRequest", "Stat": "StatSnapshotRequest",
             "Update": "UpdateSnapshotRequest", "List": "ListSnapshotsRequest",
             "Usage": "UsageRequest", "Cleanup": "CleanupRequest"}


@contextlib.asynccontextmanager
async def serving(state: Path, layers: FolderLayers):
    sockdir = tempfile.mkdtemp(prefix="lazyfs-sn-")
    service = SnapshotterService(os.path.join(sockdir, "s.sock"), str(state), layers)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            client = Client(service.socket_path)
            try:
                yield client, service
            finally:
                client.channel.close()
                nursery.cancel_scope.cancel()
    finally:
        os.rmdir(sockdir)


@pytest.fixture
def layers(tmp_path):
    return FolderLayers(tmp_path / "layers")


async def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        await call
    return e.value.code()


def opts(mounts) -> list[tuple[str, str, list[str]]]:
    return [(m.type, m.source, list(m.options)) for m in mounts]


async def test_overlay_chain_mounts_like_containerds_overlayfs(tmp_path, layers):
    state = tmp_path / "state"
    async with serving(state, layers) as (c, _):
        base = (await c("Prepare", key="k1")).mounts
        [(kind, src, options)] = opts(base)
        assert (kind, options) == ("bind", ["rw", "rbind"])
        Path(src, "hello").write_text("hi\n")
        await c("Commit", name="l1", key="k1", labels={"a": "1"})

        child = opts((await c("Prepare", key="k2", parent="l1")).mounts)
        [(kind, _, options)] = child
        assert kind == "overlay"
        upper = next(o for o in options if o.startswith("upperdir="))[len("upperdir="):]
        assert next(o for o in options if o.startswith("lowerdir=")) == "lowerdir=" + src
        assert any(o.startswith("workdir=") for o in options)
        assert opts((await c("Mounts", key="k2")).mounts) == child
        Path(upper, "more").write_bytes(b"x" * 10000)
        size = await c("Usage", key="k2")
        assert size.size >= 10000 and size.inodes == 2
        await c("Commit", name="l2", key="k2")

        assert opts((await c("View", key="v1", parent="l1")).mounts) == [
            ("bind", src, ["ro", "rbind"])]
        [(kind, _, view)] = opts((await c("View", key="v2", parent="l2")).mounts)
        assert kind == "overlay" and view[-1] == f"lowerdir={upper}:{src}" and not any("upperdir" in o for o in view)

        info = (await c("Stat", key="l2")).info
        assert (info.name, info.parent, info.kind) == ("l2", "l1", pb.COMMITTED)
        assert (await c("Stat", key="v2")).info.kind == pb.VIEW
        assert (await c("Usage", key="l2")).size >= 10000


async def test_storage_rules_and_status_codes(tmp_path, layers):
    async with serving(tmp_path / "state", layers) as (c, _):
        await c("Prepare", key="k1")
        assert await code_of(c("Prepare", key="k1")) == grpc.StatusCode.ALREADY_EXISTS
        assert await code_of(c("Prepare", key="k2", parent="nope")) == grpc.StatusCode.NOT_FOUND
        assert await code_of(c("Prepare", key="k2", parent="k1")) == \
            grpc.StatusCode.INVALID_ARGUMENT
        assert await code_of(c("Stat", key="nope")) == grpc.StatusCode.NOT_FOUND
        await c("Commit", name="l1", key="k1")
        assert await code_of(c("Stat", key="k1")) == grpc.StatusCode.NOT_FOUND
        assert await code_of(c("Commit", name="l2", key="l1")) == \
            grpc.StatusCode.FAILED_PRECONDITION
        assert await code_of(c("Mounts", key="l1")) == grpc.StatusCode.FAILED_PRECONDITION
        await c("Prepare", key="k2", parent="l1")
        assert await code_of(c("Commit", name="l1", key="k2")) == grpc.StatusCode.ALREADY_EXISTS
        assert await code_of(c("Remove", key="l1")) == grpc.StatusCode.FAILED_PRECONDITION
        await c("Remove", key="k2")
        await c("Remove", key="l1")
        assert await c("List") == []
        assert os.listdir(tmp_path / "state" / "snapshots") == []
        os.mkdir(tmp_path / "state" / "snapshots" / "99")
        await c("Cleanup")
        assert os.listdir(tmp_path / "state" / "snapshots") == []


async def test_update_labels_and_list_filters(tmp_path, layers):
    async with serving(tmp_path / "state", layers) as (c, _):
        await c("Prepare", key="k1", labels={"keep": "1", "drop": "2"})
        await c("Commit", name="l1", key="k1", labels={"keep": "1", "drop": "2"})
        await c("Prepare", key="k2", parent="l1")
        info = pb.Info(name="l1", labels={"new": "3", "keep": "changed"})
        mask = field_mask_pb2.FieldMask(paths=["labels.new", "labels.drop"])
        got = (await c("Update", info=info, update_mask=mask)).info
        assert dict(got.labels) == {"keep": "1", "new": "3"}
        assert dict((await c("Stat", key="l1")).info.labels) == {"keep": "1", "new": "3"}
        got = (await c("Update", info=pb.Info(name="l1", labels={"only": "this"}))).info
        assert dict(got.labels) == {"only": "this"}
        assert await code_of(c("Update", info=info, update_mask=field_mask_pb2.FieldMask(
            paths=["parent"]))) == grpc.StatusCode.INVALID_ARGUMENT

        async def names(*filters):
            return sorted(i.name for i in await c("List", filters=list(filters)))

        assert await names() == ["k2", "l1"]
        assert await names('labels."only"==this') == ["l1"]
        assert await names("labels.only") == ["l1"]
        assert await names("kind==active") == ["k2"]
        assert await names('parent=="l1",kind==active') == ["k2"]
        assert await names("name==l1", "name==k2") == ["k2", "l1"]
        assert await names("name~=^k") == ["k2"]
        assert await names("name!=k2") == ["l1"]
        assert await code_of(c("List", filters=["name=="])) == grpc.StatusCode.INVALID_ARGUMENT


def test_filter_grammar():
    [s] = parse_filter('labels."containerd.io/snapshot.ref"==sha256:ab12')
    assert (s.path, s.op, s.value) == (("labels", "containerd.io/snapshot.ref"), "==", "sha256:ab12")
    a, b = parse_filter('name ~= /a,b/ , parent=="x\\"y"')
    assert (a.op, a.value, b.value) == ("~=", "a,b", 'x"y')
    for bad in ("", "==x", "name=x", "name==", 'name=="open', "a b"):
        with pytest.raises(UsageError):
            parse_filter(bad)


def remote_labels(target: str, digest: str) -> dict[str, str]:
    return {"containerd.io/snapshot.ref": target, STARGZ + "reference": REF,
            STARGZ + "digest": digest, STARGZ + "layers": f"{digest},sha256:other"}


async def test_remote_layer_is_committed_and_answers_already_exists(tmp_path, layers):
    async with serving(tmp_path / "state", layers) as (c, service):
        labels = remote_labels("chain1", "sha256:aaa")
        assert await code_of(c("Prepare", key="ns/1/extract-1", labels=labels)) == \
            grpc.StatusCode.ALREADY_EXISTS
        assert await code_of(c("Stat", key="ns/1/extract-1")) == grpc.StatusCode.NOT_FOUND
        # what containerd's metadata store asks next, word for word
        [found] = await c("List", filters=[
            'labels."containerd.io/snapshot.ref"==chain1,parent==""'])
        assert (found.name, found.kind) == ("chain1", pb.COMMITTED)
        assert found.labels["containerd.io/snapshot/remote"] == "remote snapshot"

        labels2 = {**remote_labels("chain2", "sha256:bbb"), "containerd.io/snapshot/cri.x": "y"}
        assert await code_of(c("Prepare", key="ns/1/extract-2", parent="chain1",
                                labels=labels2)) == grpc.StatusCode.ALREADY_EXISTS
        [(kind, _, options)] = opts((await c("Prepare", key="ctr", parent="chain2")).mounts)
        assert kind == "overlay" and options[-1] == "lowerdir={}:{}".format(layers.root / "0" / "sha256-bbb",
                                                      layers.root / "0" / "sha256-aaa")
        assert (await c("Usage", key="chain2")).size == 0
        # the same layer again (another namespace): already there
        assert await code_of(c("Prepare", key="ns2/1/extract-1", labels=labels)) == \
            grpc.StatusCode.ALREADY_EXISTS
        stats = service.stats()
        assert (stats["lazy"], stats["unpacked"]) == (2, 0)
        assert stats["layers"]["chain2"] == {"mode": "lazy", "ref": REF,
                                             "digest": "sha256:bbb", "reason": ""}


async def test_unreachable_image_falls_back_to_unpacking(tmp_path, layers, caplog):
    layers.down = True
    async with serving(tmp_path / "state", layers) as (c, service):
        [(kind, src, _)] = opts((await c("Prepare", key="ns/1/extract-1",
                                          labels=remote_labels("chain1", "sha256:aaa"))).mounts)
        assert kind == "bind" and layers.calls == [(REF, "sha256:aaa")]
        Path(src, "unpacked").write_text("by containerd\n")
        await c("Commit", name="ns/2/chain1", key="ns/1/extract-1",
                labels={"containerd.io/snapshot.ref": "chain1"})
        await c("Prepare", key="ns/1/extract-2", labels={"containerd.io/snapshot.ref": "plain"})
        await c("Commit", name="ns/3/plain", key="ns/1/extract-2",
                labels={"containerd.io/snapshot.ref": "plain"})
        stats = service.stats()
    assert stats["unpacked"] == 2 and stats["lazy"] == 0
    assert "cannot connect to 127.0.0.1:5000" in stats["layers"]["chain1"]["reason"]
    assert "plain pull" in stats["layers"]["plain"]["reason"]
    assert "unpacking instead" in caplog.text and "cannot connect" in caplog.text


async def test_state_and_remote_layers_survive_a_restart(tmp_path, layers):
    state = tmp_path / "state"
    async with serving(state, layers) as (c, _):
        await code_of(c("Prepare", key="x", labels=remote_labels("chain1", "sha256:aaa")))
        await c("Prepare", key="k1", labels={"l": "v"})
        await c("Commit", name="l1", key="k1", labels={"l": "v"})
        await c("Prepare", key="ctr", parent="chain1")
    layers.generation = 1
    layers.calls.clear()
    async with serving(state, layers) as (c, service):
        assert dict((await c("Stat", key="l1")).info.labels) == {"l": "v"}
        assert (await c("Stat", key="ctr")).info.parent == "chain1"
        [(_, _, options)] = opts((await c("Mounts", key="ctr")).mounts)
        assert options[-1] == "lowerdir={}".format(layers.root / "1" / "sha256-aaa")
        assert layers.calls and set(layers.calls) == {(REF, "sha256:aaa")}
        assert service.stats()["layers"]["chain1"]["mode"] == "lazy"


async def test_cri_labels_name_the_layer_too(tmp_path, layers):
    async with serving(tmp_path / "state", layers) as (c, _):
        labels = {"containerd.io/snapshot.ref": "chain1",
                  "containerd.io/snapshot/cri.image-ref": REF,
                  "containerd.io/snapshot/cri.layer-digest": "sha256:ccc",
                  "containerd.io/snapshot/cri.image-layers": "sha256:ccc"}
        assert await code_of(c("Prepare", key="k", labels=labels)) == \
            grpc.StatusCode.ALREADY_EXISTS
    assert layers.calls == [(REF, "sha256:ccc")]


def test_generated_modules_match_the_proto_files():
    """The wire contract is the .proto text: every message's fields (name,
    number) and the service's methods, as the committed modules describe them."""
    import re

    from lazyfs.snapshotter.api import mount_pb2
    api = Path(pb.__file__).parent
    for module in (pb, mount_pb2):
        text = (api / Path(module.DESCRIPTOR.name).name).read_text()
        text = re.sub(r"//[^\n]*", "", text)
        assert module.DESCRIPTOR.package == re.search(r"package ([\w.]+);", text).group(1)
        messages = dict(re.findall(r"message (\w+) \{([^}]*)\}", text))
        assert set(messages) == set(module.DESCRIPTOR.message_types_by_name)
        for name, body in messages.items():
            fields = {(f, int(n)) for f, n in re.findall(r"(\w+) = (\d+);", body)}
            desc = module.DESCRIPTOR.message_types_by_name[name]
            assert fields == {(f.name, f.number) for f in desc.fields}, name
    service = pb.DESCRIPTOR.services_by_name["Snapshots"]
    assert service.full_name == "containerd.services.snapshots.v1.Snapshots"
    methods = re.findall(r"rpc (\w+)\((\w+)\) returns \((?:stream )?([\w.]+)\)",
                         (api / "snapshots.proto").read_text())
    assert [(m.name, m.input_type.name, m.output_type.full_name.rpartition(".")[2])
            for m in service.methods] == [(n, i, o.rpartition(".")[2]) for n, i, o in methods]

"""containerd's snapshots gRPC API on a unix socket, for
``[proxy_plugins.NAME] type = "snapshot"``.

grpcio serves in its own worker threads (its asyncio server would need a
second event loop beside trio); the workers call the blocking
``Snapshotter``, which asks the trio side for a layer directory through
``trio.from_thread``. The generated modules in ``api/`` come from the
``.proto`` files next to them (``scripts/gen-snapshotter-api``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from concurrent import futures
from pathlib import Path

import grpc
import trio
from google.protobuf import empty_pb2

from ..errors import LazyfsError, NotFound, UsageError
from ..serve.sockets import make_way
from .api import mount_pb2, snapshots_pb2, snapshots_pb2_grpc
from .remote import LayerSource
from .snapshots import Mount, Snapshotter
from .state import AlreadyExists, FailedPrecondition, RemoteLayer, Snapshot, Unavailable

log = logging.getLogger(__name__)

LIST_BATCH = 100
"""Infos per ListSnapshotsResponse message (containerd's own server sends 100)."""

_CODES = ((AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
          (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
          (Unavailable, grpc.StatusCode.UNAVAILABLE),
          (NotFound, grpc.StatusCode.NOT_FOUND),
          (UsageError, grpc.StatusCode.INVALID_ARGUMENT))


class SnapshotterService:
    """The snapshotter, served on ``socket_path`` until cancelled."""

    def __init__(self, socket_path: str, state_dir: str, layers: LayerSource, *,
                 workers: int = 8):
        self.socket_path = socket_path
        self.state_dir = state_dir
        self.layers = layers
        self.workers = workers
        self._snapshotter: Snapshotter | None = None
        self._token: trio.lowlevel.TrioToken | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._token = trio.lowlevel.current_trio_token()
        try:
            self._snapshotter = Snapshotter(Path(self.state_dir), self._resolve)
        except (OSError, sqlite3.Error) as e:
            raise UsageError(f"cannot keep snapshotter state in {self.state_dir}: "
                             f"{getattr(e, 'strerror', None) or e} (give --containerd-state DIR)"
                             ) from None
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.workers,
                                                        thread_name_prefix="snapshots"))
        snapshots_pb2_grpc.add_SnapshotsServicer_to_server(_Servicer(self._snapshotter), server)
        try:
            make_way(self.socket_path)
            if not server.add_insecure_port("unix:" + os.path.abspath(self.socket_path)):
                raise OSError("the gRPC server could not bind it")
        except (OSError, RuntimeError) as e:
            self._snapshotter.close()
            raise UsageError(f"cannot listen on {self.socket_path}: "
                             f"{getattr(e, 'strerror', None) or e} "
                             "(give --containerd-socket PATH)") from None
        server.start()
        log.info("snapshots API on %s, state in %s", self.socket_path, self.state_dir)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._restore)
                task_status.started()
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(lambda: server.stop(grace=2).wait())
                self._snapshotter.close()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.socket_path)

    def stats(self) -> dict:
        if self._snapshotter is None:
            return {"socket": self.socket_path, "running": False}
        return {"socket": self.socket_path, "running": True, **self._snapshotter.stats()}

    async def _restore(self) -> None:
        """Serve again the layers committed snapshots stand on, so that new
        containers (and ``Mounts`` calls) find them without waiting."""
        sn = self._snapshotter
        for s in [s for s in sn.state.walk([]) if s.remote is not None]:
            try:
                await trio.to_thread.run_sync(sn.restore, s)
            except LazyfsError as e:
                log.warning("remote snapshot %s not restored: %s", s.name, e)

    def _resolve(self, layer: RemoteLayer) -> str:
        try:
            return trio.from_thread.run(self.layers.layer_dir, layer.ref, layer.digest,
                                        trio_token=self._token)
        except trio.RunFinishedError:
            raise Unavailable("the service is stopping") from None


def _answer(fn):
    """LazyfsErrors become gRPC status codes (containerd's errdefs reads
    them back as ErrNotFound, ErrAlreadyExists, ...)."""

    def handler(self, request, context):
        try:
            return fn(self, request, context)
        except LazyfsError as e:
            code = next((c for cls, c in _CODES if isinstance(e, cls)), grpc.StatusCode.UNKNOWN)
            if code not in (grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.NOT_FOUND):
                log.warning("%s: %s", fn.__name__, e)
            context.abort(code, str(e))
        except OSError as e:
            log.exception("%s failed", fn.__name__)
            context.abort(grpc.StatusCode.INTERNAL, str(e))

    handler.__name__ = fn.__name__
    return handler


class _Servicer(snapshots_pb2_grpc.SnapshotsServicer):
    def __init__(self, sn: Snapshotter):
        self.sn = sn

    @_answer
    def Prepare(self, request, context):
        mounts = self.sn.prepare(request.key, request.parent, dict(request.labels))
        return snapshots_pb2.PrepareSnapshotResponse(mounts=_mounts(mounts))

    @_answer
    def View(self, request, context):
        mounts = self.sn.view(request.key, request.parent, dict(request.labels))
        return snapshots_pb2.ViewSnapshotResponse(mounts=_mounts(mounts))

    @_answer
    def Mounts(self, request, context):
        return snapshots_pb2.MountsResponse(mounts=_mounts(self.sn.mounts(request.key)))

    @_answer
    def Commit(self, request, context):
        self.sn.commit(request.name, request.key, dict(request.labels))
        return empty_pb2.Empty()

    @_answer
    def Remove(self, request, context):
        self.sn.remove(request.key)
        return empty_pb2.Empty()

    @_answer
    def Stat(self, request, context):
        return snapshots_pb2.StatSnapshotResponse(info=_info(self.sn.stat(request.key)))

    @_answer
    def Update(self, request, context):
        paths = list(request.update_mask.paths) if request.HasField("update_mask") else []
        s = self.sn.update(request.info.name, dict(request.info.labels), paths)
        return snapshots_pb2.UpdateSnapshotResponse(info=_info(s))

    @_answer
    def List(self, request, context):
        # walked before the first message, so a bad filter is an error status
        infos = [_info(s) for s in self.sn.walk(list(request.filters))]
        return iter([snapshots_pb2.ListSnapshotsResponse(info=infos[i:i + LIST_BATCH])
                     for i in range(0, len(infos), LIST_BATCH)])

    @_answer
    def Usage(self, request, context):
        size, inodes = self.sn.usage(request.key)
        return snapshots_pb2.UsageResponse(size=size, inodes=inodes)

    @_answer
    def Cleanup(self, request, context):
        self.sn.cleanup()
        return empty_pb2.Empty()


def _mounts(mounts: list[Mount]) -> list:
    return [mount_pb2.Mount(type=m.type, source=m.source, options=m.options) for m in mounts]


def _info(s: Snapshot):
    info = snapshots_pb2.Info(name=s.name, parent=s.parent, kind=int(s.kind), labels=s.labels)
    info.created_at.FromNanoseconds(s.created_ns)
    info.updated_at.FromNanoseconds(s.updated_ns)
    return info

"""``lazyfs serve``: one process, one FUSE mount, every image.

The service mounts ``ROOT`` in store mode, listens on the control socket for
CLI commands, closes idle images and, when asked, serves containerd's
snapshots API with the mount's per-layer directories, all in one trio loop
until SIGTERM or SIGINT (then it unmounts and returns, or, while containers
or open files use the mount, leaves it to the next start: ``handover``).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import trio

from ..errors import UsageError
from ..fs.daemon import MountOptions, serve
from ..image import OpenOptions
from ..store.blobs import Store
from .binds import Binds
from .control import Commands, Control
from .fs import StoreOperations
from .handover import inodes_path, prepare
from .inodes import InodeBook
from .images import IDLE_SECONDS, TAG_TTL_SECONDS, ImageSet
from .layers import StoreLayers
from .paths import FSNAME

log = logging.getLogger(__name__)

@dataclass
class ServeSettings:
    root: str
    control_socket: str | None = None
    containerd_socket: str | None = None
    containerd_state: str = "/var/lib/lazyfs/snapshotter"
    idle: float = IDLE_SECONDS
    tag_ttl: float = TAG_TTL_SECONDS
    mount: MountOptions = dataclasses.field(default_factory=lambda: MountOptions(foreground=True))
    open_options: OpenOptions = dataclasses.field(default_factory=OpenOptions)
    store: Store | None = None


async def run_service(settings: ServeSettings, commands: Commands | None = None, *,
                      ready=None) -> None:
    """Serve until signalled; ``ready(state)`` once the mount answers."""
    from ..registry.client import RegistryClient
    options = dataclasses.replace(settings.open_options, layer_views=False,
                                  background_index=False)
    store = settings.store or Store()
    async with RegistryClient(options.registry) as client, trio.open_nursery() as nursery:
        images = ImageSet(nursery, store, options, idle=settings.idle,
                          tag_ttl=settings.tag_ttl, client=client)
        ops = StoreOperations(images)
        handover = prepare(settings.root)
        handover.open_files = ops.open_files
        ops.book = InodeBook(inodes_path(settings.root))
        if handover.resumed:
            ops.restore(ops.book.load())
        else:
            ops.book.forget()
        layers = StoreLayers(settings.root, images, ops)
        nursery.start_soon(images.reap)
        binds = Binds(settings.root, images)
        if settings.control_socket and commands is not None:
            control = Control(images, commands, binds)
            await nursery.start(control.serve, settings.control_socket)
            ops.extra_stats["control"] = control.stats
        if settings.containerd_socket:
            await nursery.start(_snapshotter, settings, layers, ops)
        try:
            await serve(ops, settings.root, fsname=FSNAME, options=settings.mount, ready=ready,
                        handover=handover)
        finally:
            binds.unmount_all()
        if not handover.left:
            ops.book.forget()
        nursery.cancel_scope.cancel()


async def _snapshotter(settings: ServeSettings, layers: StoreLayers, ops: StoreOperations, *,
                       task_status=trio.TASK_STATUS_IGNORED) -> None:
    try:
        from ..snapshotter import SnapshotterService
    except ImportError as e:
        raise UsageError(f"--containerd-socket: no snapshotter in this build ({e})") from None
    service = SnapshotterService(settings.containerd_socket, settings.containerd_state, layers)
    ops.extra_stats["snapshotter"] = service.stats
    await service.run(task_status=task_status)

"""A containerd remote snapshotter: containerd's snapshots gRPC API, with the
layers of remotely pulled images served lazily by lazyfs (``docs/snapshotter.md``)."""

from .remote import LayerSource
from .service import SnapshotterService

__all__ = ["LayerSource", "SnapshotterService"]

"""Which Prepare calls ask for a remote (lazily served) layer, and who serves it.

containerd's unpacker asks the snapshotter to Prepare each layer with the
label ``containerd.io/snapshot.ref`` naming the chain ID it would commit
the unpacked layer as, plus the layer descriptor's annotations that start
with ``containerd.io/snapshot/``. Two producers put the image and layer
there: ``ctr-remote image rpull`` (stargz-snapshotter's labels) and the CRI
plugin (with ``snapshot_annotations``). A snapshotter that can serve the
layer commits it under the chain ID itself and answers AlreadyExists;
containerd then never downloads it.
"""

from __future__ import annotations

from typing import Protocol

from .state import RemoteLayer

TARGET = "containerd.io/snapshot.ref"
"""The chain ID the unpacker would commit the layer as."""

REMOTE = "containerd.io/snapshot/remote"
"""Set on the snapshots served lazily (as stargz-snapshotter marks its own)."""
REMOTE_VALUE = "remote snapshot"

_LABEL_SETS = (
    # (reference, layer digest, all layers of the image)
    ("containerd.io/snapshot/remote/stargz.reference", "containerd.io/snapshot/remote/stargz.digest",
     "containerd.io/snapshot/remote/stargz.layers"),
    ("containerd.io/snapshot/cri.image-ref", "containerd.io/snapshot/cri.layer-digest",
     "containerd.io/snapshot/cri.image-layers"),
)


class LayerSource(Protocol):
    async def layer_dir(self, ref: str, digest: str) -> str:
        """Absolute path of the overlayfs-lowerdir-form directory of layer
        ``digest`` of image ``ref``, served lazily; raises ``LazyfsError``
        when it cannot (the snapshotter then lets containerd unpack)."""
        ...


def remote_layer(labels: dict[str, str]) -> RemoteLayer | None:
    """The image and layer a Prepare's labels name, if any."""
    for ref_key, digest_key, _ in _LABEL_SETS:
        ref, digest = labels.get(ref_key), labels.get(digest_key)
        if ref and digest:
            return RemoteLayer(ref, digest)
    return None

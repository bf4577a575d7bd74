"""Per-layer directories for a containerd snapshotter: the ``LayerSource``.

A layer is asked for by the image it came in (a reference, which may need
opening) and its digest; the answer is its directory under the mount's
``.layers``, named by digest, in overlayfs lowerdir form. Layers are content
addressed, so a base layer shared by many images is one directory, whichever
image opened it first.
"""

from __future__ import annotations

import os

from ..errors import LazyfsError, NotFound
from .fs import StoreOperations, layer_dir_name
from .images import ImageSet
from .paths import LAYERS_DIR


class StoreLayers:
    """``LayerSource`` over a store-mode mount at ``root``."""

    def __init__(self, root: str, images: ImageSet, ops: StoreOperations):
        self.root = os.path.abspath(root)
        self._images = images
        self._ops = ops

    async def layer_dir(self, ref: str, digest: str) -> str:
        """The absolute lowerdir-form directory of layer ``digest`` of image
        ``ref``; ``LazyfsError`` when it cannot be served lazily."""
        slot = await self._images.by_reference(ref, views=True)
        if digest not in slot.layers:
            raise NotFound(f"{ref} has no layer {digest}")
        if await self._ops.layer_view(digest) is None:
            raise LazyfsError(f"{ref}: layer {digest} has no per-layer view")
        return os.path.join(self.root, LAYERS_DIR, layer_dir_name(digest))

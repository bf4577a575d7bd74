"""Publishing an opened image's tables to its registry (``--push-index``).

Only tables that cost a full pass are worth it, and only once they are all
built. A failed push is the registry's refusal, not the image's: it is
logged and the image serves on.
"""

from __future__ import annotations

import logging
from typing import Sequence

from ..errors import LazyfsError
from ..formats import LayerTable, format_named
from .shared import publish_index

log = logging.getLogger(__name__)


def built_here(tables: Sequence[LayerTable], digests: Sequence[str],
               shared: Sequence[str]) -> bool:
    """Whether some layer's table cost a full pass and is not yet in the
    registry (``shared``: the layer digests whose table came from there)."""
    return any(format_named(t.format).costly and digest not in shared
               for t, digest in zip(tables, digests))


async def publish_quietly(client, image) -> None:
    """Publish and record the artifact's digest in ``image.published``."""
    try:
        image.published = await publish_index(client, image)
        log.info("published the index of %s as %s", image.ref, image.published)
    except LazyfsError as e:
        log.warning("cannot publish the index of %s: %s", image.ref, e)

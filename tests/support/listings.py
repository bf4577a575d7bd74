"""A directory listed through the filesystem's ``readdir``, without a mount."""

from __future__ import annotations

import pyfuse3


async def listed(ops, ino: int, monkeypatch) -> list[tuple[bytes, pyfuse3.EntryAttributes]]:
    """Every ``(name, attributes)`` ``readdir`` hands the kernel for ``ino``,
    by way of ``readdir_reply`` (whose buffer never fills here)."""
    got: list = []
    monkeypatch.setattr(pyfuse3, "readdir_reply",
                        lambda token, name, attrs, next_id: got.append((name, attrs)) or True)
    fh = await ops.opendir(ino, None)
    await ops.readdir(fh, 0, None)
    await ops.releasedir(fh)
    return got

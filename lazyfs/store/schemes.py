"""Which scheme each registry host answered on, remembered between runs.

A loopback or insecure registry may speak HTTPS or plain HTTP, and the
transport would otherwise try HTTPS first on every run: a handshake that
fails and a trust store parsed for nothing, before the first real request.
The file only orders the attempts: a host is still never spoken to over a
scheme its options do not allow, and a remembered scheme that stops working
is followed by the others.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path

MAX_HOSTS = 256
"""Hosts kept; the ones learnt longest ago are forgotten first."""


class SchemeFile:
    """``host → scheme`` in ``schemes.json`` under the store's root."""

    def __init__(self, root: Path):
        self.path = Path(root) / "schemes.json"
        self._known: dict[str, str] | None = None

    def get(self, host: str) -> str | None:
        return self._load().get(host)

    def put(self, host: str, scheme: str) -> None:
        known = self._load()
        if known.get(host) == scheme:
            return
        known.pop(host, None)
        known[host] = scheme
        while len(known) > MAX_HOSTS:
            known.pop(next(iter(known)))
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            tmp.write_text(json.dumps(known))
            os.replace(tmp, self.path)
        except OSError:
            # Only an optimisation: the next run asks in the default order.
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _load(self) -> dict[str, str]:
        if self._known is None:
            try:
                doc = json.loads(self.path.read_text())
            except (OSError, ValueError):
                doc = {}
            self._known = {h: s for h, s in doc.items() if s in ("http", "https")} \
                if isinstance(doc, dict) else {}
        return self._known

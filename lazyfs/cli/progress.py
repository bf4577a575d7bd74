"""``lazyfs pull``'s progress on a terminal, docker style."""

from __future__ import annotations

import threading
import time

from .render import human_size


class TtyProgress:
    """One line per layer, redrawn in place at most ten times a second."""

    def __init__(self, stream):
        self._out = stream
        self._layers: dict[str, list] = {}
        self._drawn = 0
        self._last = 0.0
        self._lock = threading.Lock()

    def layer(self, digest: str, total: int, present: bool) -> None:
        self._layers[digest] = [0, total, "Already exists" if present else "Waiting", time.monotonic()]
        self._draw(force=True)

    def advance(self, digest: str, done: int) -> None:
        st = self._layers[digest]
        st[0], st[2] = done, "Downloading"
        self._draw()

    def layer_done(self, digest: str) -> None:
        st = self._layers[digest]
        st[0], st[2] = st[1], "Pull complete"
        self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        with self._lock:
            self._redraw(force)

    def _redraw(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        out = [f"\x1b[{self._drawn}A"] if self._drawn else []
        for digest, (done, total, state, start) in self._layers.items():
            line = f"{digest.split(':')[-1][:12]}: {state}"
            if state == "Downloading":
                rate = done / max(now - start, 1e-3)
                line += f"  {human_size(done)}/{human_size(total)}  {human_size(rate)}/s"
            out.append(f"\x1b[2K{line}\n")
        self._drawn = len(self._layers)
        self._out.write("".join(out))
        self._out.flush()

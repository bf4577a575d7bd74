"""What a long command shows while it works: downloads, layers being
indexed, files being written, drawn with ``rich`` on stderr.

Only on a terminal (``shown``): a pipe, a log or a test gets the command's
ordinary output and nothing else, and ``-q`` silences it. ``rich`` is
imported only when something is drawn, so commands answered at once do not
pay for it.

The work itself does not know it is watched: downloads are seen through
``download.watch`` (every ``stream_blob`` under it), bulk writes count into
a ``Tally`` that the display polls, and a pull tells its layers through
``pull.Progress``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass
from typing import Callable, Iterator


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="draw no progress on the terminal")


def shown(args: argparse.Namespace) -> bool:
    """Whether to draw progress: on a terminal, unless ``-q``."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


@dataclass
class Tally:
    """How far a bulk write got, counted by the worker thread doing it: read
    by the display, and by the message a Ctrl-C leaves."""

    total: int = 0
    """Entries to write."""
    done: int = 0
    total_bytes: int = 0
    done_bytes: int = 0

    def summary(self, where: str) -> str:
        return f"{self.done} of {self.total} files written to {where}"


def interruption(e: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C that ``e`` is, or that is among the leaves of a failed task
    group (the other tasks were cancelled because of it, or failed on their
    way out); None if it is no interruption."""
    if isinstance(e, KeyboardInterrupt):
        return e
    if not isinstance(e, BaseExceptionGroup):
        return None
    match, _ = e.split(KeyboardInterrupt)
    while isinstance(match, BaseExceptionGroup):
        match = match.exceptions[0]
    return match


def checkpoint() -> None:
    """Between two entries of a write in a trio worker thread: stop here if
    Ctrl-C (or a cancellation) reached the task waiting for the thread,
    rather than when the whole write is done."""
    import trio
    with contextlib.suppress(RuntimeError):  # not a trio worker thread
        trio.from_thread.check_cancelled()


class Display:
    """A rich progress display on stderr: a row per download, per pull layer,
    per tally, per step. Rows that poll (downloads, tallies) are brought up
    to date each time the display redraws."""

    def __init__(self, console=None, *, transient: bool = True):
        from rich.console import Console
        from rich.progress import Progress
        polls = self._polls = []

        class _Polling(Progress):
            def get_renderables(self):
                for poll in list(polls):
                    poll()
                yield from super().get_renderables()

        self._rich = _Polling(*_columns(), console=console or Console(stderr=True),
                              transient=transient, redirect_stdout=False, redirect_stderr=False)
        self._layers: dict[str, tuple[int, int]] = {}

    def __enter__(self) -> Display:
        self._rich.start()
        return self

    def __exit__(self, *exc) -> None:
        self._rich.stop()

    def _poll(self, task: int, read: Callable[[], dict]) -> None:
        self._polls.append(lambda: self._rich.update(task, **read()))

    def download(self, desc, state) -> None:
        """``download.watch``'s watcher: a row per blob, by ``state.consumed``
        (bytes downloaded and, when indexed on the way, indexed)."""
        task = self._rich.add_task(f"layer {_short(desc.digest)}", total=desc.size)
        self._poll(task, lambda: dict(completed=state.consumed))

    def tally(self, label: str, tally: Tally) -> None:
        """A row for a bulk write: files and bytes written of those to write."""
        task = self._rich.add_task(label, total=None, visible=False)
        self._poll(task, lambda: dict(completed=tally.done_bytes, total=tally.total_bytes or None,
                                      description=f"{label} {tally.done}/{tally.total} files",
                                      visible=tally.done > 0 or tally.done_bytes > 0))

    def step(self, label: str) -> None:
        """A step whose size is unknown: a spinner and the time it has taken."""
        self._rich.add_task(label, total=None, step=True)

    # pull.Progress, in docker's words
    def layer(self, digest: str, total: int, present: bool) -> None:
        state = "Already exists" if present else "Waiting"
        self._layers[digest] = (self._rich.add_task(f"{_short(digest)}: {state}", total=total,
                                                    completed=total if present else 0), total)

    def advance(self, digest: str, done: int) -> None:
        self._rich.update(self._layers[digest][0], completed=done,
                          description=f"{_short(digest)}: Downloading")

    def layer_done(self, digest: str) -> None:
        task, total = self._layers[digest]
        self._rich.update(task, description=f"{_short(digest)}: Pull complete", completed=total)


def _columns() -> list:
    """A spinner, the row's name, then (not for a step, which has no size) a
    bar, bytes, speed; and the time taken."""
    from rich.progress import (BarColumn, DownloadColumn, ProgressColumn, SpinnerColumn,
                               TextColumn, TimeElapsedColumn, TransferSpeedColumn)

    class _Sized(ProgressColumn):
        def __init__(self, column: ProgressColumn):
            super().__init__()
            self._column = column

        def render(self, task):
            return "" if task.fields.get("step") else self._column.render(task)

    return [SpinnerColumn(), TextColumn("{task.description}"),
            *(_Sized(c) for c in (BarColumn(), DownloadColumn(), TransferSpeedColumn())),
            TimeElapsedColumn()]


def _short(digest: str) -> str:
    return digest.partition(":")[2][:12]


@contextlib.contextmanager
def drawn(args: argparse.Namespace, label: str = "") -> Iterator[Display | None]:
    """When ``shown``: within it, ``label`` is drawn as a first row (a
    spinner and the time taken, for steps that cannot be measured, like a
    prune or an upload), then every blob download; else nothing is."""
    if not shown(args):
        yield None
        return
    from ..registry.download import watch
    with Display() as display, watch(display.download):
        if label:
            display.step(label)
        yield display

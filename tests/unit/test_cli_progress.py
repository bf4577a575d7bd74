"""The progress display and Ctrl-C handling of the CLI, without a terminal
or a registry process: rich drawn into a forced-terminal console, downloads
watched on the memory registry, interruptions raised by hand."""

from __future__ import annotations

import argparse
import io

import pytest
import trio

from lazyfs.cli import files, main
from lazyfs.cli.progress import Display, Tally, interruption, shown
from lazyfs.manifest import Descriptor
from lazyfs.reference import parse_reference
from lazyfs.registry import RegistryClient
from lazyfs.registry.download import discard_partials, stream_blob, watch
from lazyfs.store.blobs import Store
from lazyfs.testing import MemoryRegistry, build_layer


def _console(out: io.StringIO):
    from rich.console import Console
    return Console(file=out, force_terminal=True, width=100)


def test_display_draws_downloads_tallies_and_steps_on_a_terminal():
    out = io.StringIO()

    class State:
        consumed, done = 0, False
    state, tally = State(), Tally(total=10, total_bytes=2000)
    with Display(_console(out), transient=False) as display:
        display.step("exporting")
        display.download(Descriptor("application/x", "sha256:" + "ab" * 32, 1_000_000), state)
        display.tally("writing", tally)
        state.consumed, tally.done, tally.done_bytes = 1_000_000, 10, 2000
    drawn = out.getvalue()
    assert "\x1b[" in drawn
    assert "exporting" in drawn and "layer abababababab" in drawn and "1.0/1.0 MB" in drawn
    assert "writing 10/10 files" in drawn and "2.0/2.0 kB" in drawn


def test_progress_is_shown_only_on_a_terminal_and_not_with_quiet(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True
    monkeypatch.setattr("sys.stderr", Tty())
    assert shown(argparse.Namespace(quiet=False)) and shown(argparse.Namespace())
    assert not shown(argparse.Namespace(quiet=True))
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not shown(argparse.Namespace(quiet=False))


async def test_every_download_under_watch_is_seen(tmp_path):
    registry = MemoryRegistry()
    layer = build_layer("gzip", {"big": b"x" * 200_000})
    pushed = registry.push_image("dl/app", "v1", [layer])
    seen = []
    with watch(lambda desc, state: seen.append((desc.digest, state))):
        async with RegistryClient(registry.options()) as client:
            await stream_blob(client, parse_reference(pushed.ref),
                              Descriptor(layer.media_type, layer.digest, layer.size),
                              Store(tmp_path / "store"), chunk=64 << 10)
    [(digest, state)] = seen
    assert digest == layer.digest and state.done and state.consumed == layer.size


def test_interruption_is_found_among_cancelled_siblings():
    class Cancelled(BaseException):
        pass
    ki = KeyboardInterrupt()
    nested = BaseExceptionGroup("outer", [Cancelled(), BaseExceptionGroup("inner", [ki, Cancelled()])])
    assert interruption(nested) is ki
    assert interruption(ki) is ki
    assert interruption(BaseExceptionGroup("x", [Cancelled(), ValueError()])) is None
    assert interruption(ValueError()) is None


@pytest.mark.parametrize("raised", [
    KeyboardInterrupt(),
    BaseExceptionGroup("tasks", [BaseExceptionGroup("layers", [KeyboardInterrupt()])]),
    BaseExceptionGroup("tasks", [trio.Cancelled._create(), KeyboardInterrupt()]),
], ids=["bare", "nested", "with-cancelled"])
def test_ctrl_c_anywhere_exits_130_with_one_line(monkeypatch, capsys, raised):
    def interrupted(args):
        raise raised
    monkeypatch.setattr(files, "cmd_ls", interrupted)
    assert main.main(["ls", "example.com/app"]) == 130
    assert capsys.readouterr().err == "lazyfs: interrupted\n"


async def test_an_interrupted_download_leaves_no_partial_file(tmp_path):
    registry = MemoryRegistry()
    layer = build_layer("tar", {"big": b"y" * 600_000})
    pushed = registry.push_image("dl/app", "v1", [layer])
    store = Store(tmp_path / "store")

    def stop(data: bytes) -> None:
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        async with RegistryClient(registry.options()) as client:
            await stream_blob(client, parse_reference(pushed.ref),
                              Descriptor(layer.media_type, layer.digest, layer.size), store,
                              stop, chunk=64 << 10, parallel=2)
    assert list((store.root / "tmp").glob("*.part"))  # kept for resume, until...
    assert discard_partials() > 0
    assert not list((store.root / "tmp").glob("*.part"))


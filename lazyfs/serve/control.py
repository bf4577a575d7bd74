"""The control socket: CLI commands answered by the service's open images.

A client (``cli/client.py``) sends its command line and its stdout and
stderr file descriptors. The service parses the line with the CLI's own
parser and runs the command's own function, in a worker thread with a trio
loop of its own, exactly as ``lazyfs`` alone would: only the image comes
from the service (``args._served``), and writes go to the client's
descriptors. Output is therefore the same byte for byte, and a reader that
stops reading stalls that one command, never the service.

The image is used from the command's thread through ``_Borrowed``, whose
reads hop to the service's loop, where the image lives.
"""

from __future__ import annotations

import array
import contextlib
import contextvars
import functools
import io
import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Callable

import trio

from ..errors import LazyfsError, UsageError
from ..reference import parse_reference
from .binds import Binds
from .images import ImageSet
from .sockets import make_way

log = logging.getLogger(__name__)

ALONE_OPTIONS = ("cache_dir", "cache_size", "creds", "insecure_registry", "registry_mirror",
                 "no_shared_index", "platform", "debug")
"""Options that would make the answer differ from the service's: run alone."""
SERVED_COMMANDS = ("ls", "cat", "stat", "find", "inspect", "diff", "export")
COMMAND_THREADS = 16
"""Commands run at once; more wait. Their threads are apart from the ones
the images use, so clients that stop reading cannot starve the service."""
MAX_REQUEST = 1 << 20


@dataclass
class Commands:
    """The CLI as the service needs it, handed over by ``lazyfs serve``."""

    parse: Callable
    """argv -> ``argparse.Namespace`` (raises ``SystemExit`` on a bad line)."""
    run: Callable
    """Namespace -> exit code, as ``main`` runs it."""


_SINK: contextvars.ContextVar = contextvars.ContextVar("lazyfs_sink", default=None)


class _Routed:
    """Stands in for ``sys.stdout``/``sys.stderr``: a command's writes go to
    its client's stream, everything else to the service's own."""

    def __init__(self, own, which: int):
        self._own = own
        self._which = which

    def _target(self):
        sink = _SINK.get()
        return self._own if sink is None else sink[self._which]

    def __getattr__(self, name):
        return getattr(self._target(), name)

    def write(self, text):
        return self._target().write(text)

    def flush(self):
        return self._target().flush()


def route_std_streams() -> None:
    """Once, in the service: commands' output goes where their client says."""
    if not isinstance(sys.stdout, _Routed):
        sys.stdout = _Routed(sys.stdout, 0)
        sys.stderr = _Routed(sys.stderr, 1)


def servable(args, parse: Callable | None = None) -> str:
    """Why the service should not answer ``args`` (empty if it should)."""
    if getattr(args, "command", None) == "mount" and parse is not None:
        return _bindable(args, parse)
    if getattr(args, "command", None) not in SERVED_COMMANDS:
        return "not a command the service answers"
    given = [name for name in ALONE_OPTIONS if getattr(args, name, None)]
    if given:
        return "--" + given[0].replace("_", "-") + " given"
    if args.command == "export" and (args.dir not in (None, "-") or args.tar not in (None, "-")):
        return "export writes files: run alone, as the caller"
    return ""


def _bindable(args, parse: Callable) -> str:
    """A mount is bound to the service's image only as a plain ``lazyfs mount
    REF MNT`` of a registry image would mount it: any option, and it runs alone."""
    try:
        if parse_reference(args.ref).transport != "docker":
            return "not a registry image"
    except LazyfsError:
        return "the reference does not parse"
    plain = parse(["mount", args.ref, args.mountpoint])
    given = [k for k, v in vars(args).items()
             if not k.startswith("_") and getattr(plain, k, None) != v]
    return f"mount with --{given[0].replace('_', '-')}: runs alone" if given else ""


class _NoProgress(io.TextIOWrapper):
    """A client's stderr, never taken for a terminal: progress is drawn by a
    thread of its own, which would draw into the service's log instead."""

    def isatty(self) -> bool:
        return False


class Control:
    def __init__(self, images: ImageSet, commands: Commands, binds: Binds | None = None):
        self.images = images
        self.commands = commands
        self.binds = binds
        self.answered = 0
        self.declined = 0
        self._token: trio.lowlevel.TrioToken | None = None
        self._threads = trio.CapacityLimiter(COMMAND_THREADS)

    def stats(self) -> dict:
        return {"answered": self.answered, "declined": self.declined}

    async def serve(self, path: str, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._token = trio.lowlevel.current_trio_token()
        route_std_streams()
        listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with listener:
            try:
                make_way(path)
                await listener.bind(path)
                os.chmod(path, 0o660)
            except OSError as e:
                raise UsageError(f"cannot listen on {path}: {e.strerror} (give --control-socket "
                                 "PATH or --no-control-socket)") from None
            listener.listen(64)
            log.info("control socket %s", path)
            task_status.started()
            try:
                async with trio.open_nursery() as nursery:
                    while True:
                        conn, _ = await listener.accept()
                        nursery.start_soon(self._answer, conn)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(path)

    async def _answer(self, conn) -> None:
        fds: list[int] = []
        with conn:
            try:
                request, fds = await _receive(conn)
                await self._run(conn, request, fds)
            except Exception as e:  # one bad client must not stop the others
                log.warning("control request failed: %s", e, exc_info=not isinstance(e, OSError))
            finally:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)

    async def _run(self, conn, request: dict, fds: list[int]) -> None:
        argv = request.get("argv")
        why = "bad request" if not isinstance(argv, list) or len(fds) != 2 else ""
        args = None
        if not why:
            try:
                args = self.commands.parse([str(a) for a in argv])
            except SystemExit:
                why = "the command line does not parse"
            else:
                why = servable(args, self.commands.parse if self.binds else None)
        if why:
            self.declined += 1
            log.debug("declined %s: %s", argv, why)
            await _send(conn, json.dumps({"alone": True, "why": why}).encode() + b"\n")
            return
        await _send(conn, b'{"accepted": true}\n')
        out = io.open(os.dup(fds[0]), "w", encoding=request.get("encoding") or "utf-8",
                      errors=request.get("errors") or "strict")
        err = _NoProgress(io.BufferedWriter(io.FileIO(os.dup(fds[1]), "w")), encoding="utf-8",
                          errors=request.get("stderr_errors") or "backslashreplace",
                          line_buffering=True)
        args._served = self._borrow
        if self.binds is not None:
            args._bind = self.binds.mount
        code = await trio.to_thread.run_sync(self._in_thread, args, out, err,
                                             limiter=self._threads)
        self.answered += 1
        await _send(conn, json.dumps({"exit": code}).encode() + b"\n")

    def _in_thread(self, args, out, err) -> int:
        _SINK.set((out, err))
        try:
            try:
                return self.commands.run(args)
            finally:
                with contextlib.suppress(OSError, ValueError):
                    out.flush()
        except Exception:
            log.exception("command %s failed unexpectedly", getattr(args, "command", "?"))
            print("lazyfs: the service failed to answer (its log says why)", file=err)
            return 1
        finally:
            for stream in (out, err):
                with contextlib.suppress(OSError, ValueError):
                    stream.close()

    # ------------------------------------------------------------ images for commands

    @contextlib.asynccontextmanager
    async def _borrow(self, ref_text: str):
        """Run in the command's own trio loop: the service's image for ``ref_text``."""
        slot, image = await self._hop(self._acquire, ref_text)
        try:
            yield _Borrowed(image, self._hop)
        finally:
            await self._hop(self._release, slot)

    async def _hop(self, afn, *args):
        call = functools.partial(trio.from_thread.run, afn, *args, trio_token=self._token)
        return await trio.to_thread.run_sync(call)

    async def _acquire(self, ref_text: str):
        slot = await self.images.by_reference(ref_text)
        slot.users += 1
        try:
            return slot, await self.images.ensure_open(slot)
        except BaseException:
            slot.users -= 1
            raise

    async def _release(self, slot) -> None:
        slot.users -= 1
        slot.last_used = time.monotonic()


class _Borrowed:
    """An image of the service, used from another thread's trio loop: what
    needs the network (or the image's own tasks) runs on the service's loop;
    the index, which is safe to share between threads, is used directly."""

    def __init__(self, image, hop):
        self._image = image
        self._hop = hop

    def __getattr__(self, name):
        return getattr(self._image, name)

    async def read(self, node, offset: int, size: int) -> bytes:
        return await self._hop(self._image.read, node, offset, size)

    async def warm(self, nodes) -> None:
        await self._hop(self._image.warm, nodes)

    async def fetch_all(self) -> None:
        await self._hop(self._image.fetch_all)


async def _send(conn, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[await conn.send(view):]


async def _receive(conn) -> tuple[dict, list[int]]:
    """The request line and the descriptors sent with it."""
    fds: list[int] = []
    buf = b""
    while b"\n" not in buf:
        data, ancdata, _, _ = await conn.recvmsg(65536, socket.CMSG_SPACE(2 * 4))
        for level, kind, raw in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                ints = array.array("i")
                ints.frombytes(raw[:len(raw) - len(raw) % ints.itemsize])
                fds.extend(ints)
        if not data:
            break
        buf += data
        if len(buf) > MAX_REQUEST:
            raise LazyfsError("control request too long")
    try:
        return json.loads(buf.partition(b"\n")[0] or b"{}"), fds
    except ValueError:
        return {}, fds

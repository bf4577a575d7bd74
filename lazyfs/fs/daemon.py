"""Daemon life of a mount: checks, FUSE init, serving, signals, unmount.

``mount()`` is what the CLI calls. Unless asked to stay in the foreground it
double-forks *before* any trio loop or HTTP client exists (neither survives a
fork), and the parent only returns once the child has proved the mount works
by ``stat``-ing it through the kernel: a command that says "mounted" and
leaves a dead mount behind is worse than one that fails.

Each daemon leaves a small JSON state file (pid, reference, manifest digest,
mountpoint, log path) under ``$XDG_RUNTIME_DIR/lazyfs`` or ``/run/lazyfs``;
``/proc/mounts`` says what is mounted, the state file says who serves it.
The log beside it is removed when the daemon unmounts cleanly having logged
no warning; a daemon that failed keeps it and says where it is (in its
error, or in ``lazyfs mounts`` once it is gone). A log the caller named, or
of a ``--debug`` mount, is always kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncContextManager, Callable

import pyfuse3
import trio

from .. import errors
from ..errors import LazyfsError, MountError
from .operations import EVENTS_XATTR, STATS_XATTR
from .tuning import more_open_files, raise_readahead, tune_heap

log = logging.getLogger(__name__)

FS_TYPE = "fuse.lazyfs"
READY_TIMEOUT = 15.0
"""Seconds the first ``stat`` of a fresh mount may take before we call it dead."""
STOP_GRACE = 2.0
"""Seconds in-flight requests get to finish after SIGTERM before they are cancelled."""

_DEAD = (errno.ENOTCONN, errno.ECONNABORTED)
"""What the kernel answers on a FUSE mount whose daemon is gone."""

OpsFactory = Callable[[], AsyncContextManager[pyfuse3.Operations]]


@dataclass(frozen=True)
class MountOptions:
    foreground: bool = False
    allow_other: bool = False
    suid: bool = False
    dev: bool = False
    debug: bool = False
    nonempty: bool = False
    """Mount over a directory that has entries (``-o nonempty``), hiding them."""
    log_path: Path | None = None
    """Where the daemon logs; by default beside its state file."""


@dataclass(frozen=True)
class Mounted:
    mountpoint: str
    pid: int
    log_path: Path | None
    """None in the foreground, where logging goes wherever the caller set it."""
    state_path: Path


@dataclass(frozen=True)
class MountInfo:
    mountpoint: str
    source: str
    options: tuple[str, ...]
    state: dict | None
    """The daemon's state file, when its daemon is still alive."""


# ---------------------------------------------------------------- state files


def state_dir() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "lazyfs" if runtime else Path("/run/lazyfs")


def state_path(mountpoint: str | os.PathLike) -> Path:
    key = hashlib.sha256(os.path.abspath(mountpoint).encode()).hexdigest()[:16]
    return state_dir() / f"mount-{key}.json"


def read_state(mountpoint: str | os.PathLike) -> dict | None:
    """The state of the daemon serving ``mountpoint``, if it is still running."""
    try:
        state = json.loads(state_path(mountpoint).read_text())
    except (OSError, ValueError):
        return None
    pid = state.get("pid")
    return state if isinstance(pid, int) and alive(pid) else None


def write_state(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


def read_stats(mountpoint: str | os.PathLike) -> dict:
    """Statistics of the daemon serving ``mountpoint``, asked through the mount."""
    return json.loads(_ask(mountpoint, STATS_XATTR, "statistics"))


def read_events(mountpoint: str | os.PathLike) -> bytes:
    """The fetch log of the daemon serving ``mountpoint`` (``read.stats.unpack_events``)."""
    return _ask(mountpoint, EVENTS_XATTR, "the fetch log")


def _ask(mountpoint: str | os.PathLike, xattr: str, what: str) -> bytes:
    mp = os.path.abspath(mountpoint)
    if _mounted_type(mp) != FS_TYPE:
        raise MountError(f"{mp} is not a lazyfs mount")
    try:
        return os.getxattr(mp, xattr)
    except OSError as e:
        raise MountError(f"cannot read {what} of {mp}: {e.strerror}") from None


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


# ---------------------------------------------------------------- /proc/mounts


def unescape(field: str) -> str:
    """Undo the octal escapes /proc/mounts uses for space, tab, newline, backslash."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def proc_mounts() -> list[tuple[str, str, str, tuple[str, ...]]]:
    rows = []
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 4:
                rows.append((unescape(parts[0]), unescape(parts[1]), parts[2],
                              tuple(parts[3].split(","))))
    return rows


def list_mounts() -> list[MountInfo]:
    """Every lazyfs mount the kernel knows of, with its daemon's state if alive."""
    return [MountInfo(mp, source, opts, read_state(mp))
            for source, mp, kind, opts in proc_mounts() if kind == FS_TYPE]


def _mounted_type(mountpoint: str) -> str | None:
    found = None
    for _, mp, kind, _ in proc_mounts():
        if mp == mountpoint:
            found = kind
    return found


# ---------------------------------------------------------------- checks


def check_mountpoint(mountpoint: str | os.PathLike, nonempty: bool = False) -> str:
    """The absolute mountpoint, or a ``MountError`` saying why it cannot be used.

    A directory with entries is refused unless ``nonempty``: the mount would
    hide them without a word, as fuse2 refused to (libfuse3 dropped the
    check, so it is made here)."""
    mp = os.path.abspath(mountpoint)
    stale = MountError(f"mountpoint {mp} is a stale mount whose daemon is gone; "
                       f"run `lazyfs umount {mp}` to clean it")
    try:
        os.stat(mp)
    except FileNotFoundError:
        raise MountError(f"mountpoint {mp} does not exist") from None
    except OSError as e:
        if e.errno in _DEAD:
            raise stale from None
        raise MountError(f"mountpoint {mp}: {e.strerror}") from None
    if _mounted_type(mp) is not None or os.path.ismount(mp):
        if is_stale(mp):
            raise stale
        raise MountError(f"mountpoint {mp} is busy: something is already mounted there")
    if not os.path.isdir(mp):
        raise MountError(f"mountpoint {mp} is not a directory")
    if not nonempty and _has_entries(mp):
        raise MountError(f"mount point {mp} is not empty (use -o nonempty to mount over it)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise MountError("/dev/fuse is missing or not usable: load the fuse module "
                         "or run the container with --device /dev/fuse")
    return mp


def _has_entries(mp: str) -> bool:
    try:
        with os.scandir(mp) as entries:
            return next(entries, None) is not None
    except OSError as e:
        raise MountError(f"mountpoint {mp}: {e.strerror}") from None


def fuse_options(fsname: str, options: MountOptions) -> set[str]:
    """Options for ``pyfuse3.init``. ``max_read`` is never passed: this
    kernel accepts the mount with it and then fails FUSE_INIT."""
    opts = {"ro", "default_permissions", "noatime", "subtype=lazyfs",
            "fsname=" + fsname.replace(",", "_").replace("\\", "_")}
    opts.add("suid" if options.suid else "nosuid")
    opts.add("dev" if options.dev else "nodev")
    if options.allow_other:
        opts.add("allow_other")
    if options.debug:
        opts.add("debug")
    return opts


# ---------------------------------------------------------------- serving


async def serve(ops: pyfuse3.Operations, mountpoint: str | os.PathLike, *, fsname: str,
                options: MountOptions = MountOptions(), digest: str = "",
                ready: Callable[[dict], None] | None = None, handover=None) -> None:
    """Mount ``ops`` at ``mountpoint`` and serve until unmounted or signalled.

    ``ready`` is called with the state (also written to the state file) once
    the mount has answered a ``stat`` through the kernel. ``handover``
    (``lazyfs.serve.handover.Handover``) makes the connection outlive this
    process: a resumed one is served through its relay instead of mounted,
    a fresh one is given to a holder, and either is left mounted at the end
    while something still uses it.
    """
    resumed = handover is not None and handover.resumed
    mp = os.path.abspath(mountpoint) if resumed else check_mountpoint(mountpoint, options.nonempty)
    tune_heap()
    more_open_files()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        before = _fuse_files()
        try:
            pyfuse3.init(ops, handover.relay.mountpoint if resumed else mp,
                         fuse_options(fsname, options))
        except RuntimeError as e:
            raise MountError(f"cannot mount {mp}: {e} (FUSE refused the mount)") from None
        if resumed:
            handover.relay.start()
        elif handover is not None and len(fresh := _fuse_files() - before) == 1:
            handover.hold(fresh.pop())
        spath = state_path(mp)
        failed: list[LazyfsError] = []
        try:
            async with trio.open_nursery() as nursery:
                main = trio.CancelScope()
                nursery.start_soon(_stop_on_signal, signals, main, handover)
                nursery.start_soon(_announce, mp, fsname, digest or getattr(ops, "digest", ""),
                                   options, spath, ready, failed)
                with main:
                    try:
                        await pyfuse3.main()
                    except OSError:
                        if not (resumed and handover.relay.ended.is_set()):
                            raise
                        log.info("the connection of %s ended", mp)
                nursery.cancel_scope.cancel()
        finally:
            with contextlib.suppress(OSError):
                spath.unlink()
            _close(mp, handover)
        if failed:
            raise failed[0]


def _fuse_files() -> set[int]:
    found = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                found.add(int(name))
    return found


def _close(mp: str, handover) -> None:
    """Unmount, unless a holder keeps the connection for a successor and
    something still uses the mount: overlay mounts on it, or files open there,
    which is the kernel's answer to a plain unmount (the service's own count
    of open files misses a file closed just before the signal, its release
    still queued, and in a resumed session files opened before it)."""
    users: list[str] = []
    if handover is not None and (handover.resumed or handover.lease is not None):
        pyfuse3.close(unmount=False)
        # overlayfs holds private clones of its lower mounts, so they never make ours busy
        users = handover.overlays()
        if not users and not handover.unmount():
            users = handover.users() or ["files open there"]
    else:
        pyfuse3.close(unmount=True)
    if users:
        handover.left = True
        log.info("left %s mounted for the next lazyfs serve: in use (%s)", mp,
                 ", ".join(users[:3]) + (", ..." if len(users) > 3 else ""))
    else:
        log.info("unmounted %s", mp)
    if handover is not None:
        handover.close()


async def _stop_on_signal(signals, main: trio.CancelScope, handover=None) -> None:
    async for signum in signals:
        log.info("%s: unmounting", signal.Signals(signum).name)
        if main.deadline == float("inf"):
            if handover is not None and handover.resumed:
                # requests not yet taken stay queued in the kernel for a successor
                await trio.to_thread.run_sync(handover.relay.pause)
            pyfuse3.terminate()
            main.deadline = trio.current_time() + STOP_GRACE
        else:
            main.cancel()


async def _announce(mp: str, fsname: str, digest: str, options: MountOptions, spath: Path,
                    ready: Callable[[dict], None] | None, failed: list) -> None:
    """Prove the mount answers, tune it, then say so (state file, ``ready``);
    on failure stop serving and leave the error in ``failed``."""
    with trio.move_on_after(READY_TIMEOUT) as waited:
        try:
            # statfs rather than stat: a mount still indexing its image can
            # answer it at once, where the root's attributes may have to wait.
            await trio.to_thread.run_sync(os.statvfs, mp, abandon_on_cancel=True)
        except OSError as e:
            failed.append(MountError(f"mount at {mp} does not answer: {e.strerror}"))
    if waited.cancelled_caught:
        failed.append(MountError(f"mount at {mp} did not answer within {READY_TIMEOUT:.0f} s"))
    if failed:
        pyfuse3.terminate()
        return
    dev = device_of(mp)
    if dev is not None:
        raise_readahead(dev)
    state = {"pid": os.getpid(), "reference": fsname, "digest": digest, "mountpoint": mp,
             "log": str(options.log_path or ""), "started": time.time()}
    write_state(spath, state)
    log.info("mounted %s at %s (pid %d)", fsname, mp, os.getpid())
    if ready is not None:
        ready(state)


def device_of(mp: str) -> str | None:
    """``major:minor`` of the mount at ``mp`` (the newest, when stacked), from
    the kernel's mount table (asking the mount itself could wait for its index)."""
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        fields = line.split()
        if len(fields) > 4 and unescape(fields[4]) == mp:
            return fields[2]
    return None


async def _serve_from(open_ops: OpsFactory, mp: str, fsname: str, options: MountOptions,
                      digest: str, ready: Callable[[dict], None] | None) -> None:
    tune_heap()  # before the image is opened, so its buffers follow the rule too
    async with open_ops() as ops:
        await serve(ops, mp, fsname=fsname, options=options, digest=digest, ready=ready)


# ---------------------------------------------------------------- mount / umount


def default_log_path(mountpoint: str | os.PathLike) -> Path:
    return state_path(mountpoint).with_suffix(".log")


def mount(open_ops: OpsFactory, mountpoint: str | os.PathLike, *, fsname: str,
          options: MountOptions = MountOptions(), digest: str = "") -> Mounted:
    """Mount and serve. ``open_ops`` makes the operations inside the daemon's
    own trio loop (so its HTTP client and index handles belong to it).

    In the foreground this returns once unmounted; otherwise once the daemon
    serves, with its pid and log path. Errors before that are raised here,
    whichever process met them.
    """
    mp = check_mountpoint(mountpoint, options.nonempty)
    if options.foreground:
        trio.run(_serve_from, open_ops, mp, fsname, options, digest, None)
        return Mounted(mp, os.getpid(), options.log_path, state_path(mp))
    options = dataclasses.replace(options, log_path=Path(options.log_path or default_log_path(mp)))
    return _daemonise(open_ops, mp, fsname, options, digest)


def _daemonise(open_ops: OpsFactory, mp: str, fsname: str, options: MountOptions,
               digest: str) -> Mounted:
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    first = os.fork()
    if first == 0:
        os.close(read_end)
        try:
            os.setsid()
            if os.fork() == 0:
                os._exit(_daemon_main(open_ops, mp, fsname, options, digest, write_end))
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(first, 0)
    answer, pid = {}, None
    with os.fdopen(read_end, "rb") as pipe:
        try:
            for line in pipe:
                with contextlib.suppress(ValueError):
                    answer = json.loads(line)
                pid = answer.get("pid", pid)
        except KeyboardInterrupt:
            if pid is not None:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
            raise
    if answer.get("ok"):
        return Mounted(mp, pid, options.log_path, state_path(mp))
    if "error" not in answer:
        raise MountError(f"the daemon for {mp} died before the mount was ready; "
                         f"see {options.log_path}")
    cls = getattr(errors, answer["error"], None)
    if not (isinstance(cls, type) and issubclass(cls, LazyfsError)):
        cls = MountError
    raise cls(answer.get("message") or f"mount at {mp} failed; see {options.log_path}")


def _daemon_main(open_ops: OpsFactory, mp: str, fsname: str, options: MountOptions,
                 digest: str, report_fd: int) -> int:
    """The daemon: log to the log file, serve, report through ``report_fd``
    its pid at once and the outcome of start-up exactly once (JSON lines)."""
    reported = False

    def report(answer: dict) -> None:
        nonlocal reported
        if not reported:
            reported = True
            with contextlib.suppress(OSError):
                os.write(report_fd, json.dumps(answer).encode() + b"\n")
                os.close(report_fd)

    with contextlib.suppress(OSError):
        os.write(report_fd, json.dumps({"pid": os.getpid()}).encode() + b"\n")

    failures = _Failures()
    try:
        os.chdir("/")
        _log_to_file(options.log_path, options.debug, failures)
        with errors.single_error():
            trio.run(_serve_from, open_ops, mp, fsname, options, digest,
                     lambda state: report({"ok": True}))
        if not (failures.seen or options.debug) and options.log_path == default_log_path(mp):
            with contextlib.suppress(OSError):
                options.log_path.unlink()
        return 0
    except LazyfsError as e:
        log.error("%s", e)
        report({"error": type(e).__name__, "message": f"{e} (see {options.log_path})"})
        return e.exit_code
    except BaseException as e:
        log.exception("daemon failed")
        report({"error": "MountError", "message": f"mount at {mp} failed: {e!r}; "
                                                  f"see {options.log_path}"})
        return MountError.exit_code
    finally:
        report({})
        logging.shutdown()


class _Failures(logging.Handler):
    """Whether anything went wrong enough to be logged (a warning or worse: a
    request answered with an error, a retry): the log of a daemon that
    unmounted cleanly is removed unless it holds one."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen = False

    def emit(self, record: logging.LogRecord) -> None:
        self.seen = True


def _log_to_file(path: Path, debug: bool, failures: logging.Handler) -> None:
    """Send logging and any stray output (fatal tracebacks, libfuse's own
    messages) to ``path``; the daemon has no terminal."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)
    logging.getLogger("lazyfs").propagate = True
    logging.basicConfig(stream=sys.stderr, force=True,
                        level=logging.DEBUG if debug else logging.INFO,
                        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    logging.getLogger().addHandler(failures)


def umount(mountpoint: str | os.PathLike, lazy: bool = False, *, wait: float = 5.0) -> None:
    """Unmount with ``fusermount3``; lazily when asked or when the daemon is
    gone (a stale mount cannot be unmounted any other way). Waits up to
    ``wait`` seconds for the daemon to exit."""
    mp = os.path.abspath(mountpoint)
    state = read_state(mp)
    kind = _mounted_type(mp)
    if kind is None:
        raise MountError(f"{mp} is not mounted")
    if kind != FS_TYPE:
        raise MountError(f"{mp} is not a lazyfs mount (it is {kind})")
    stale = is_stale(mp)
    args = ["fusermount3", "-uz" if lazy or stale else "-u", mp]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise MountError(f"cannot unmount {mp}: fusermount3 failed ({e})") from None
    if done.returncode != 0:
        why = done.stderr.strip().rpartition(": ")[2] or f"exit {done.returncode}"
        hint = "; files are open there (try --lazy)" if "busy" in why.lower() else ""
        raise MountError(f"cannot unmount {mp}: {why}{hint}")
    bound = state is not None and "bound" in state  # the service goes on
    if state is not None and not bound:
        deadline = time.monotonic() + wait
        while alive(state["pid"]) and time.monotonic() < deadline:
            time.sleep(0.02)
    if bound or read_state(mp) is None:
        with contextlib.suppress(OSError):
            state_path(mp).unlink()


def is_stale(mp: str) -> bool:
    """Whether a dead daemon left ``mp`` behind. ``statfs`` is asked because,
    unlike ``stat``, the kernel never answers it from its attribute cache."""
    try:
        os.statvfs(mp)
    except OSError as e:
        return e.errno in _DEAD
    return False

"""Commands on mounts: mount, umount, mounts, stats."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from ..errors import UsageError
from .options import REF_HELP, add_command, open_options, open_store, opt, parse_ref, print_json
from .progress import add_quiet, drawn
from .render import align
from .serve import STORE_FSNAME, image_rows, render_service
from .statstable import legend, render_stats


def _mount_options(args: argparse.Namespace):
    from ..fs.daemon import MountOptions
    flags = set()
    for group in args.o or []:
        flags.update(f for f in group.split(",") if f)
    unknown = flags - {"suid", "dev", "nosuid", "nodev", "allow_other", "ro", "nonempty"}
    if unknown:
        raise UsageError(f"unsupported mount option(s): {', '.join(sorted(unknown))} "
                         "(lazyfs takes suid, dev, allow_other, nonempty)")
    return MountOptions(foreground=args.foreground,
                        allow_other=args.allow_other or "allow_other" in flags,
                        suid="suid" in flags, dev="dev" in flags, nonempty="nonempty" in flags,
                        debug=bool(opt(args, "debug")))


def cmd_mount(args: argparse.Namespace) -> int:
    if (bind := getattr(args, "_bind", None)) is not None:
        return bind(args.ref, args.mountpoint)
    from ..fs.operations import image_operations
    from ..fs.daemon import mount
    if args.foreground:
        # serving in this terminal: its log goes here
        logging.getLogger("lazyfs").propagate = True
        logging.basicConfig(level=logging.DEBUG if opt(args, "debug") else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ..read.replay import ReplayOptions
    from ..store.chunks import parse_size
    ref = parse_ref(args.ref)
    replay = ReplayOptions(enabled=not args.no_prefetch, concurrency=args.prefetch_concurrency,
                           rate=parse_size(args.prefetch_rate) if args.prefetch_rate else 0)
    if replay.concurrency < 1:
        raise UsageError("--prefetch-concurrency must be at least 1")
    if args.prefetch and args.no_prefetch:
        raise UsageError("--prefetch and --no-prefetch contradict each other")
    options = dataclasses.replace(open_options(args), background_index=not args.wait_index,
                                  early_reads=args.early_reads, push_index=args.push_index,
                                  record_trace=True, replay=replay)
    if args.wait_index:
        # indexed here, with progress; the daemon finds the tables and pushes them
        _index_here(args, ref, dataclasses.replace(options, push_index=False))
    factory = image_operations(str(ref) if ref.transport == "docker" else args.ref,
                               args.mountpoint, layers=args.layers,
                               open_options=options, store=open_store(args))
    mounted = mount(factory, args.mountpoint, fsname=str(ref), options=_mount_options(args))
    if opt(args, "debug") and not args.foreground:
        print(f"lazyfs: daemon {mounted.pid} logs to {mounted.log_path}", file=sys.stderr)
    return 0


def _index_here(args: argparse.Namespace, ref, options) -> None:
    """``--wait-index``: download and index the layers in this process
    before the daemon starts; the daemon then finds every table in the store.
    Here (the daemon has no terminal) their progress can be drawn, and a
    Ctrl-C stops them like any command's work, partial downloads deleted."""
    import trio

    from ..image import open_image_async

    async def run():
        async with open_image_async(ref, options, open_store(args)):
            pass
    with drawn(args, "indexing"):
        trio.run(run)


def _add_mount(sub) -> None:
    p = add_command(sub, "mount", "mount an image read-only at MOUNTPOINT, fetching what is read")
    p.add_argument("-f", "--foreground", action="store_true", help="serve in this process until unmounted")
    p.add_argument("--alone", action="store_true",
                   help="mount with a daemon of its own even when `lazyfs serve` runs (without "
                        "options, a running service answers: it binds its image here)")
    p.add_argument("--allow-other", action="store_true", help="let other users see the mount")
    p.add_argument("--layers", action="store_true",
                   help="show each layer as its own directory (overlayfs lowerdir form) and .lowerdir")
    p.add_argument("--full-pull", action="store_true", help="download whole layers instead of ranges")
    p.add_argument("--prefetch", action="store_true",
                   help="download whole layers in the background; reads use ranges until they land")
    p.add_argument("--wait-index", action="store_true",
                   help="index every layer before the mount returns (default: gzip layers "
                        "without an index are downloaded and indexed in the background)")
    p.add_argument("--early-reads", action="store_true",
                   help="while a layer is indexed in the background, serve what has arrived "
                        "before the whole layer is checked against its digest")
    p.add_argument("--push-index", action="store_true",
                   help="publish the index built for gzip layers to the registry (index push)")
    p.add_argument("--no-prefetch", action="store_true",
                   help="fetch nothing in the background: no trace replay, no eStargz "
                        "prefetch landmark (the reads are still recorded as the image's trace)")
    p.add_argument("--prefetch-concurrency", metavar="N", type=int, default=4,
                   help="trace replay: batches in flight at once, half of them while reads "
                        "wait (default 4)")
    p.add_argument("--prefetch-rate", metavar="SIZE",
                   help="trace replay: at most SIZE bytes per second, e.g. 20M (default: no bound)")
    add_quiet(p)
    p.add_argument("-o", metavar="OPTS", action="append",
                   help="mount options: suid, dev, allow_other, nonempty (mount over a directory "
                        "that has entries; default nosuid,nodev)")
    p.add_argument("ref", metavar="REF", help=REF_HELP)
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="a directory")
    p.set_defaults(func=cmd_mount)


def cmd_umount(args: argparse.Namespace) -> int:
    from ..fs.daemon import umount
    umount(args.mountpoint, lazy=args.lazy)
    return 0


def _add_umount(sub) -> None:
    p = add_command(sub, "umount", "unmount a lazyfs mount (also one whose daemon died)")
    p.add_argument("-l", "--lazy", action="store_true", help="detach now, even if files are open")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="a directory")
    p.set_defaults(func=cmd_umount)


def cmd_mounts(args: argparse.Namespace) -> int:
    from ..fs.daemon import default_log_path, list_mounts
    rows = []
    for m in list_mounts():
        state = m.state or {}
        row = {"mountpoint": m.mountpoint, "reference": state.get("reference", m.source),
               "digest": state.get("digest", ""), "pid": state.get("pid"),
               "alive": m.state is not None}
        if m.state is None and (log := default_log_path(m.mountpoint)).exists():
            row["log"] = str(log)
        rows.append(row)
        if m.state is not None and m.source == STORE_FSNAME and "bound" not in m.state:
            rows.extend(dict(r, pid=row["pid"], alive=True)
                        for r in image_rows(m.mountpoint, _served_stats(m.mountpoint)))
    if args.json:
        print_json(rows)
        return 0
    lines = ["MOUNTPOINT\tREFERENCE\tDIGEST\tPID"]
    for r in rows:
        pid = str(r["pid"]) if r["alive"] else "dead (run lazyfs umount)"
        if "log" in r:
            pid = f"dead (log: {_escaped(r['log'])}; run lazyfs umount)"
        lines.append(f"{_escaped(r['mountpoint'])}\t{_escaped(r['reference'])}\t"
                     f"{r['digest'][:19]}\t{pid}")
    sys.stdout.write(align(lines))
    return 0


def _escaped(text: str) -> str:
    """Backslash, tabs, newlines and other control characters as /proc/mounts
    writes them (``\\012``): one mount stays one line of the table."""
    return "".join(f"\\{ord(c):03o}" if c == "\\" or ord(c) < 0x20 or c == "\x7f" else c
                   for c in text)


def _add_mounts(sub) -> None:
    p = add_command(sub, "mounts", "list active lazyfs mounts")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.set_defaults(func=cmd_mounts)


def _served_stats(path: str) -> dict:
    """The statistics a store-mode mount answers at ``path`` (``{}`` if none)."""
    import json
    import os

    from ..fs.operations import STATS_XATTR
    try:
        return json.loads(os.getxattr(path, STATS_XATTR))
    except (OSError, ValueError):
        return {}


def _events(path: str) -> bytes:
    """The fetch log of a mount, or of an image inside a store-mode mount."""
    import os

    from ..errors import MountError
    from ..fs.daemon import read_events
    from ..fs.operations import EVENTS_XATTR
    try:
        return read_events(path)
    except MountError:
        try:
            return os.getxattr(path, EVENTS_XATTR)
        except OSError:
            raise MountError(f"{path}: neither a lazyfs mount nor an image served by "
                             "lazyfs serve") from None


def cmd_stats(args: argparse.Namespace) -> int:
    from ..errors import MountError
    from ..fs.daemon import read_stats
    if args.timeline:
        from ..read.stats import unpack_events
        from .timeline import draw_timeline
        draw_timeline(unpack_events(_events(args.mountpoint)), args.timeline)
        return 0
    try:
        doc = read_stats(args.mountpoint)
    except MountError:
        # an image inside a store-mode mount answers for itself
        doc = _served_stats(args.mountpoint)
        if not doc:
            raise
    if args.json:
        print_json(doc)
        return 0
    sys.stdout.write(render_service(doc) if doc.get("mode") == "store" else render_stats(doc))
    return 0


def _add_stats(sub) -> None:
    p = add_command(sub, "stats", "what a mount has fetched, per layer")
    p.epilog = legend()
    p.add_argument("--json", action="store_true",
                   help="the whole stats document, with every counter, as JSON")
    p.add_argument("--timeline", metavar="FILE",
                   help="draw what was fetched over time into FILE (.svg or .png): a row per "
                        "layer, a bar per request (needs matplotlib: pip install 'lazyfs[plot]')")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="a directory")
    p.set_defaults(func=cmd_stats)


COMMANDS = [_add_mount, _add_umount, _add_mounts, _add_stats]

"""``lazyfs serve``: the long-lived service (the work is in ``lazyfs.serve``)."""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import UsageError
from ..serve.paths import FSNAME as STORE_FSNAME
from .client import DEFAULT_SOCKET, SOCKET_ENV
from .options import add_command, open_options, open_store, opt
from .render import align, human_size


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    import trio

    from ..fs.daemon import MountOptions
    from ..image import preload
    from ..serve.control import Commands
    from ..serve.service import ServeSettings, run_service
    logging.getLogger("lazyfs").propagate = True
    logging.basicConfig(level=logging.DEBUG if opt(args, "debug") else logging.INFO,
                        stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    if not opt(args, "debug"):
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    for name in ("idle_timeout", "tag_ttl"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must not be negative")
    control = None if args.no_control_socket else (
        args.control_socket or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET)
    settings = ServeSettings(
        root=args.root, control_socket=control, containerd_socket=args.containerd_socket,
        containerd_state=args.containerd_state, idle=args.idle_timeout, tag_ttl=args.tag_ttl,
        mount=MountOptions(foreground=True, allow_other=args.allow_other,
                           debug=bool(opt(args, "debug"))),
        open_options=_traced(open_options(args)), store=open_store(args))
    commands = Commands(parse=args._parser.parse_args, run=args._run)
    preload()
    trio.run(run_service, settings, commands)
    return 0


def _traced(options):
    """The service's images record their first reads and replay traces, as mounts do."""
    import dataclasses

    from ..read.replay import ReplayOptions
    return dataclasses.replace(options, record_trace=True, replay=ReplayOptions())


def _add_serve(sub) -> None:
    p = add_command(sub, "serve",
                    "serve every image under ROOT (store mode) until SIGTERM or SIGINT; "
                    "the CLI's commands ask it first")
    p.add_argument("--control-socket", metavar="PATH",
                   help=f"where the CLI asks the service (default: ${SOCKET_ENV}, "
                        f"else {DEFAULT_SOCKET})")
    p.add_argument("--no-control-socket", action="store_true",
                   help="answer only through the mount")
    p.add_argument("--containerd-socket", metavar="PATH",
                   help="also serve containerd's snapshots API there (a proxy snapshotter)")
    p.add_argument("--containerd-state", metavar="DIR", default="/var/lib/lazyfs/snapshotter",
                   help="where the snapshotter keeps its snapshots (default: %(default)s)")
    p.add_argument("--idle-timeout", metavar="SECONDS", type=float, default=600.0,
                   help="close an image nobody used for this long (default: %(default)g)")
    p.add_argument("--tag-ttl", metavar="SECONDS", type=float, default=180.0,
                   help="resolve a tag again once its answer is this old (default: %(default)g); "
                        "a digest never changes")
    p.add_argument("--allow-other", action="store_true", help="let other users see the mount")
    p.add_argument("root", metavar="ROOT", help="an empty directory to mount at")
    p.set_defaults(func=cmd_serve)


def render_service(doc: dict) -> str:
    """``lazyfs stats ROOT`` of a store-mode mount: one row per image, then
    the failures with their reasons (``lazyfs stats ROOT/REF`` for one image)."""
    fuse = doc.get("fuse", {})
    images = doc.get("images", [])
    lines = [f"service  {sum(i['state'] == 'open' for i in images)} of {len(images)} images "
             f"open, {fuse.get('reads', 0)} reads, {human_size(fuse.get('bytes_read', 0))}, "
             f"{doc.get('failure_count', 0)} failures"]
    rows = ["IMAGE\tDIGEST\tSTATE\tOPENS\tIDLE\tFETCHED"]
    for i in images:
        fetched = sum(layer.get("bytes_fetched", 0) for layer in i["image"].get("layers", []))
        views = " (layer views)" if i.get("layer_views") else ""
        rows.append(f"{', '.join(i['references'])}{views}\t{i['digest'][:19]}\t{i['state']}\t"
                    f"{i['opens']}\t{i['idle_seconds']:.0f}s\t{human_size(fetched)}")
    lines.append(align(rows).rstrip("\n"))
    for f in doc.get("failures", []):
        lines.append(f"failed  {f['what']}: {f['reason']}")
    if doc.get("snapshotter", {}).get("running"):
        lines.append(render_snapshotter(doc["snapshotter"]))
    return "\n".join(lines) + "\n"


def render_snapshotter(sn: dict) -> str:
    """The containerd snapshotter's layers: served lazily, or unpacked by
    containerd and why."""
    rows = ["CHAIN ID\tMODE\tLAYER\tIMAGE OR REASON"]
    for chain, layer in sn.get("layers", {}).items():
        rows.append(f"{chain[:19]}\t{layer['mode']}\t{layer['digest'][:19] or '-'}\t"
                    f"{layer['reason'] or layer['ref']}")
    head = (f"snapshotter  {sn.get('lazy', 0)} layers lazy, {sn.get('unpacked', 0)} unpacked, "
            f"{sn.get('failed', 0)} failed ({sn.get('socket', '')})")
    return head + "\n" + align(rows).rstrip("\n")


def image_rows(mountpoint: str, doc: dict) -> list[dict]:
    """``lazyfs mounts``: the images open in a store-mode mount, each where it
    was looked up."""
    import os
    slots = {i["slot"]: i for i in doc.get("images", [])}
    rows = []
    for written, number in doc.get("written", {}).items():
        image = slots.get(number)
        if image is not None and image["state"] == "open":
            rows.append({"mountpoint": os.path.join(mountpoint, written),
                         "reference": written, "digest": image["digest"]})
    return rows


COMMANDS = [_add_serve]

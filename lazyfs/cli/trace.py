"""``lazyfs trace``: the first-read traces mounts record, shown and shared."""

from __future__ import annotations

import argparse
import sys

from ..errors import NotFound, UsageError
from .options import (REF_HELP, add_command, open_store, parse_ref, platform_of, print_json,
                      registry_options)
from .render import align, human_size


def _resolved(args: argparse.Namespace, store):
    import trio

    from ..pull import resolve_for_inspect
    return trio.run(lambda: resolve_for_inspect(parse_ref(args.ref), platform=platform_of(args),
                                                options=registry_options(args), store=store))


def _stored(store, image):
    from ..read.trace import load_trace
    trace = load_trace(store, image.manifest.digest)
    if trace is None:
        raise NotFound(f"no trace of {image.pinned} ({image.manifest.digest}) here: mount it "
                       "and run the workload first")
    return trace


def cmd_trace_show(args: argparse.Namespace) -> int:
    store = open_store(args)
    image = _resolved(args, store)
    trace = _stored(store, image)
    paths = _paths(store, trace)
    rows = [{"at": round(e.at, 3), "layer": e.layer, "offset": e.offset, "size": e.size,
             "path": paths.get((e.layer, e.data), "")} for e in trace.entries]
    if args.json:
        print_json({"manifest": trace.manifest, "reference": trace.reference,
                    "created": trace.created, "bytes": trace.total_bytes(), "entries": rows})
        return 0
    print(f"trace of {trace.reference or image.pinned} ({trace.manifest}), recorded "
          f"{trace.created or '?'}: {len(rows)} ranges, {human_size(trace.total_bytes())} "
          f"in {len(trace.layers)} layer(s)")
    lines = ["SECONDS\tLAYER\tOFFSET\tSIZE\tPATH"]
    lines += [f"{r['at']:.3f}\t{r['layer'][7:19]}\t{r['offset']}\t{human_size(r['size'])}\t"
              f"{r['path'] or '?'}" for r in rows]
    sys.stdout.write(align(lines))
    return 0


def _paths(store, trace) -> dict[tuple[str, bytes], str]:
    """``(layer, locator)`` -> the file's path, from the layer tables in the store."""
    from ..errors import LazyfsError
    from ..index.layertable import load_layer_table, table_path
    from ..index.overlay import path_parts
    out = {}
    for layer in trace.layers:
        fmt = trace.formats.get(layer)
        if not fmt:
            continue
        try:
            table = load_layer_table(table_path(store, fmt, layer))
        except LazyfsError:
            continue
        out.update(((layer, e.data), "/" + "/".join(path_parts(e.name)))
                   for e in table.entries if e.data)
    return out


def cmd_trace_push(args: argparse.Namespace) -> int:
    import trio

    from ..manifest import Descriptor
    from ..read.trace import push_trace
    from ..registry.client import RegistryClient
    ref = parse_ref(args.ref)
    if ref.transport != "docker":
        raise UsageError(f"{args.ref}: only images in a registry can carry a trace")
    store = open_store(args)
    image = _resolved(args, store)
    trace = _stored(store, image)
    manifest = image.manifest
    subject = Descriptor(manifest.media_type, manifest.digest, len(manifest.raw))

    async def push():
        async with RegistryClient(registry_options(args)) as client:
            return await push_trace(client, image.pinned, subject, trace)
    print(trio.run(push))
    return 0


def _missing_command(args: argparse.Namespace) -> int:
    raise UsageError("trace: which one? lazyfs trace show REF, or lazyfs trace push REF")


def _add_trace(sub) -> None:
    p = add_command(sub, "trace", "the reads a mount's start needed, replayed by the next "
                                  "cold mount")
    p.epilog = ("Every mount records its first reads (which ranges of which files, when) in "
                "the cache, keyed by the image's manifest digest; a later mount of the image, "
                "or of one sharing its layers, fetches them ahead of the reads.")
    trace_sub = p.add_subparsers(dest="trace_command", metavar="COMMAND")
    p.set_defaults(func=_missing_command)
    show = add_command(trace_sub, "show", "print the trace recorded here for REF")
    show.add_argument("--json", action="store_true", help="as JSON")
    show.add_argument("ref", metavar="REF", help=REF_HELP)
    show.set_defaults(func=cmd_trace_show)
    push = add_command(trace_sub, "push", "publish the trace recorded here for REF as a "
                                          "referrer of the image, for mounts elsewhere")
    push.add_argument("ref", metavar="REF", help=REF_HELP)
    push.set_defaults(func=cmd_trace_push)


COMMANDS = [_add_trace]

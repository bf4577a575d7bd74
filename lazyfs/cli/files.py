"""Commands that look at an image's files without mounting it: ls, cat,
stat, find, diff, export (the work is in ``browse.py``)."""

from __future__ import annotations

import argparse
import os
import time
import sys

from ..errors import UsageError
from .options import REF_HELP, add_command, image_context, opt, print_json, with_image
from .progress import Tally, add_quiet, drawn, interruption
from .statstable import render_stats


def _out_line(line: str) -> None:
    sys.stdout.write(line + "\n")


def cmd_ls(args: argparse.Namespace) -> int:
    from . import browse

    async def body(image):
        await browse.ls(image, args.path, long=args.long, recursive=args.recursive,
                        itself=args.directory, write=_out_line)
    with_image(args, args.ref, body)
    return 0


def _add_ls(sub) -> None:
    p = add_command(sub, "ls", "list a directory of an image, like ls")
    p.add_argument("-l", dest="long", action="store_true",
                   help="long listing: mode, owner, size, time; a symlink named as PATH is "
                        "shown itself, as ls -l does (add a trailing / to list its target)")
    p.add_argument("-R", dest="recursive", action="store_true", help="list subdirectories too")
    p.add_argument("-d", dest="directory", action="store_true",
                   help="show a directory itself, not what it holds")
    p.add_argument("-a", dest="all", action="store_true",
                   help="accepted for habit's sake: names starting with . are always listed")
    p.add_argument("ref", metavar="REF", help=REF_HELP)
    p.add_argument("path", metavar="PATH", nargs="?", default="/",
                   help="a directory or file inside the image (default: /)")
    p.set_defaults(func=cmd_ls)


def cmd_cat(args: argparse.Namespace) -> int:
    from . import browse
    out = sys.stdout.buffer

    async def body(image):
        for path in args.paths:
            await browse.cat(image, path, out.write)
        out.flush()
        return image.stats()
    stats = with_image(args, args.ref, body)
    if args.stats:
        sys.stderr.write(render_stats(stats))
    return 0


def _add_cat(sub) -> None:
    p = add_command(sub, "cat", "print files of an image (symlinks followed inside the image)")
    p.add_argument("--stats", action="store_true", help="then what was fetched, per layer, on stderr "
                                                        "(lazyfs stats --help explains the columns)")
    p.add_argument("ref", metavar="REF", help=REF_HELP)
    p.add_argument("paths", metavar="PATH", nargs="+", help="files inside the image")
    p.set_defaults(func=cmd_cat)


def cmd_stat(args: argparse.Namespace) -> int:
    from . import browse

    async def body(image):
        return browse.stat_json(image, args.path, browse.node_at(image, args.path, follow=False))
    print_json(with_image(args, args.ref, body))
    return 0


def _add_stat(sub) -> None:
    p = add_command(sub, "stat", "one path's attributes as JSON")
    p.add_argument("ref", metavar="REF", help=REF_HELP)
    p.add_argument("path", metavar="PATH", help="a path inside the image (not followed if a symlink)")
    p.set_defaults(func=cmd_stat)


def cmd_find(args: argparse.Namespace) -> int:
    from . import browse

    async def body(image):
        for path in browse.find(image, args.path, args.name, args.type,
                                min_depth=args.mindepth, max_depth=args.maxdepth):
            _out_line(path)
    with_image(args, args.ref, body)
    return 0


def _add_find(sub) -> None:
    p = add_command(sub, "find", "walk an image's tree, like find")
    p.add_argument("ref", metavar="REF", help=REF_HELP)
    p.add_argument("path", metavar="PATH", nargs="?", default="/",
                   help="where to start inside the image (default: /)")
    p.add_argument("-name", "--name", dest="name", metavar="GLOB", help="only names matching GLOB")
    p.add_argument("-type", "--type", dest="type", metavar="f|d|l|c|b|p", help="only this type")
    p.add_argument("-maxdepth", "--maxdepth", dest="maxdepth", metavar="N", type=_depth,
                   help="descend at most N levels below PATH (0: PATH alone)")
    p.add_argument("-mindepth", "--mindepth", dest="mindepth", metavar="N", type=_depth, default=0,
                   help="print nothing less than N levels below PATH")
    p.set_defaults(func=cmd_find)


def _depth(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return int(text)


def cmd_diff(args: argparse.Namespace) -> int:
    from . import browse

    async def body(a):
        async with image_context(args, args.ref2) as b:
            return await browse.diff(a, b), [_cost(a), _cost(b)]
    started = time.monotonic()
    with drawn(args, "comparing"):
        changes, costs = with_image(args, args.ref1, body)
    if args.json:
        print_json({"changes": changes, "seconds": round(time.monotonic() - started, 3),
                    "images": costs})
        return 0
    marks = {"added": "A", "removed": "D", "changed": "C"}
    for c in changes:
        detail = ""
        if c["change"] == "changed":
            detail = "  (" + ", ".join(c["what"]) + ")"
        _out_line(f"{marks[c['change']]} {c['path']}{detail}")
    return 0


def _cost(image) -> dict:
    """What opening and comparing an image fetched: the facts progress shows."""
    layers = image.stats()["layers"]
    return {"reference": str(image.ref), "layers": len(layers),
            "bytes_fetched": sum(layer["bytes_fetched"] for layer in layers),
            "bytes_downloaded_whole": sum(layer["pulled_bytes"] for layer in layers),
            "requests": sum(layer["requests"] for layer in layers)}


def _add_diff(sub) -> None:
    p = add_command(sub, "diff", "paths added (A), removed (D) or changed (C) from REF1 to REF2")
    p.add_argument("--json", action="store_true", help="what changed, how long it took and what each image fetched, as JSON")
    add_quiet(p)
    p.add_argument("ref1", metavar="REF1", help="the image compared from")
    p.add_argument("ref2", metavar="REF2", help="the image compared to")
    p.set_defaults(func=cmd_diff)


def cmd_export(args: argparse.Namespace) -> int:
    from . import browse, tarexport
    kind, dest = _export_target(args)
    where = "stdout" if dest == "-" else dest
    tally = Tally()

    async def body(image):
        if display is not None:
            display.tally("writing", tally)
        if kind == "dir":
            return await browse.export(image, dest, tally)
        return await tarexport.export_tar(image, None if dest == "-" else dest, tally)
    try:
        with drawn(args, "exporting") as display:
            n = with_image(args, args.ref, body)
    except BaseException as e:
        if interruption(e) is None or not (tally.done or tally.done_bytes):
            raise
        removed = " (removed)" if kind == "archive" and dest != "-" else ""
        raise KeyboardInterrupt(tally.summary(where) + removed) from None
    if not opt(args, "quiet"):
        print(f"exported {n} entries to {where}", file=sys.stderr)
    return 0


def _export_target(args: argparse.Namespace) -> tuple[str, str]:
    """("dir", DIR) or ("archive", FILE or "-")."""
    if args.tar is not None and args.dir is not None:
        raise UsageError("export: give either DIR or --tar FILE, not both")
    if args.tar is None and args.dir is None:
        raise UsageError("export: give a DIR, - for a tar stream on stdout, or --tar FILE")
    if args.dir is not None and args.dir != "-":
        _check_export_dir(args.dir)
        return "dir", args.dir
    dest = args.tar or "-"
    if dest == "-" and sys.stdout.isatty():
        raise UsageError("export: not writing a tar stream to a terminal "
                         "(redirect stdout, or use --tar FILE)")
    if dest != "-":
        _check_archive_path(dest)
    return "archive", dest


def _check_export_dir(dest: str) -> None:
    """Refused before the image is opened, and its layers fetched, for nothing."""
    if os.path.isdir(dest):
        try:
            entries = os.listdir(dest)
        except OSError as e:
            raise UsageError(f"export: cannot use {dest}: {e.strerror}") from None
        if entries:
            raise UsageError(f"export: {dest} is not empty")
        return
    if os.path.lexists(dest):
        raise UsageError(f"export: {dest} exists and is not a directory")
    above = os.path.dirname(os.path.abspath(dest))
    while not os.path.lexists(above):
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise UsageError(f"export: cannot create {dest}: {above} is not a directory")


def _check_archive_path(dest: str) -> None:
    if os.path.isdir(dest):
        raise UsageError(f"export: {dest} is a directory (give the archive's file name)")
    parent = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(parent):
        raise UsageError(f"export: cannot write {dest}: no directory {parent}")


def _add_export(sub) -> None:
    p = add_command(sub, "export",
                    "write an image's merged tree to a directory, or as a tar stream")
    p.add_argument("-q", "--quiet", action="store_true", help="do not say how many entries were written")
    p.add_argument("--tar", metavar="FILE",
                   help="write a tar archive to FILE (- for stdout) instead of a directory: "
                        "hardlinks, symlinks, devices, owners, modes, times and xattrs kept "
                        "(xattrs and sub-second times as pax records)")
    p.add_argument("ref", metavar="REF", help=REF_HELP)
    p.add_argument("dir", metavar="DIR", nargs="?",
                   help="an absent or empty directory; - writes a tar stream to stdout")
    p.set_defaults(func=cmd_export)


COMMANDS = [_add_ls, _add_cat, _add_stat, _add_find, _add_diff, _add_export]

"""The ``lazyfs`` command: one small function per subcommand.

Every ``LazyfsError`` becomes one line on stderr and its class's exit code;
nothing else is caught, so a traceback always means a bug.

Adding a command is one ``cmd_*`` function plus one ``_add_*`` parser block
(built with ``add_command``, which brings the common options) listed in
``COMMANDS``.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import logging
import os
import re
import sys
import threading
import time

from .._version import __version__
from ..errors import LazyfsError, UsageError, lazyfs_error_in
from .render import align, familiar_repo, human_size, image_fields, render

# -- shared helpers ------------------------------------------------------------


def add_common_options(p: argparse.ArgumentParser) -> None:
    """Options every command takes, before or after the command name."""
    s = argparse.SUPPRESS
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", default=s,
                   help="platform to choose from a multi-platform image (default: this host)")
    p.add_argument("--insecure-registry", metavar="HOST", action="append", default=s,
                   help="talk plain HTTP (or unverified TLS) to HOST; repeatable")
    p.add_argument("--registry-mirror", metavar="URL", action="append", default=s,
                   help="try this mirror before Docker Hub; repeatable")
    p.add_argument("--cache-dir", metavar="DIR", default=s, help="the local store (default: $LAZYFS_CACHE_DIR)")
    p.add_argument("--cache-size", metavar="SIZE", default=s,
                   help="bound on cached file content, e.g. 500M or 10G (default: $LAZYFS_CACHE_SIZE, "
                        "else 10%% of the file system up to 10G)")
    p.add_argument("--debug", action="store_true", default=s, help="log requests and decisions to stderr")
    p.add_argument("--no-shared-index", action="store_true", default=s,
                   help="build layer tables here instead of using ones published in the registry")


def add_command(sub, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand parser that also takes the common options after its name."""
    p = sub.add_parser(name, help=help, description=help)
    add_common_options(p)
    return p


def opt(args: argparse.Namespace, name: str, default=None):
    return getattr(args, name, default)


def open_store(args: argparse.Namespace):
    from ..store.chunks import parse_size
    from ..store.blobs import Store
    size = opt(args, "cache_size")
    if size is not None:
        parse_size(size)
        os.environ["LAZYFS_CACHE_SIZE"] = size  # read by the cache, here and in a mount daemon
    return Store(opt(args, "cache_dir"))


def platform_of(args: argparse.Namespace):
    from ..manifest import Platform
    text = opt(args, "platform")
    return Platform.parse(text) if text else None


def registry_options(args: argparse.Namespace):
    """What the registry client needs from the command line."""
    from ..registry.client import RegistryOptions
    return RegistryOptions(insecure_registries=tuple(opt(args, "insecure_registry") or ()),
                           mirrors=tuple(opt(args, "registry_mirror") or ()))


def parse_ref(text: str):
    from ..reference import parse_reference
    return parse_reference(text)


def print_json(doc) -> None:
    print(json.dumps(doc, indent=4))


# -- pull ----------------------------------------------------------------------


def cmd_pull(args: argparse.Namespace) -> int:
    import trio

    from .. import pull as _pull
    ref = parse_ref(args.ref)
    if args.all_tags and (ref.tag is not None or ref.digest is not None):
        raise UsageError("tag can't be used with --all-tags/-a")
    store = open_store(args)
    progress = None if args.quiet or not sys.stdout.isatty() else TtyProgress(sys.stdout)
    kw = dict(platform=platform_of(args), options=registry_options(args), store=store, progress=progress)
    if args.all_tags:
        results = trio.run(lambda: _pull.pull_all_tags(ref, **kw))
    else:
        results = [trio.run(lambda: _pull.pull(ref, **kw))]
    for r in results:
        if not args.quiet:
            print(f"Digest: {r.digest}")
            news = "Image is up to date for" if r.up_to_date else "Downloaded newer image for"
            print(f"Status: {news} {r.ref.familiar}")
        print(str(r.ref))
    return 0


def _add_pull(sub) -> None:
    p = add_command(sub, "pull", "download an image into the local store, verified")
    p.add_argument("-a", "--all-tags", action="store_true", help="download every tag of the repository")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image's full reference")
    p.add_argument("ref", metavar="REF")
    p.set_defaults(func=cmd_pull)


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


# -- images --------------------------------------------------------------------

def cmd_images(args: argparse.Namespace) -> int:
    store = open_store(args)
    rows = [image_fields(r, args.no_trunc) for r in _filtered(store.list_images(), args.filter)]
    if args.quiet:
        ids = [row["ID"] for row in rows]
        print("\n".join(dict.fromkeys(ids)), end="\n" if ids else "")
        return 0
    template = args.format or _default_format(args.digests)
    sys.stdout.write(render(template, rows))
    return 0


def _add_images(sub) -> None:
    p = add_command(sub, "images", "list pulled images, like docker images")
    p.add_argument("-q", "--quiet", action="store_true", help="only image IDs")
    p.add_argument("--digests", action="store_true", help="show digests")
    p.add_argument("--no-trunc", action="store_true", help="do not truncate IDs")
    p.add_argument("--format", metavar="TEMPLATE", help="Go-template subset, e.g. 'table {{.Repository}}\\t{{.ID}}'")
    p.add_argument("filter", metavar="REPO[:TAG]", nargs="?")
    p.set_defaults(func=cmd_images)


def _default_format(digests: bool) -> str:
    cols = ["Repository", "Tag"] + (["Digest"] if digests else []) + ["ID", "CreatedSince", "Size"]
    return "table " + "\t".join("{{." + c + "}}" for c in cols)


def _filtered(records, pattern: str | None):
    if not pattern:
        return records
    repo, tag = pattern, None
    last = pattern.rsplit("/", 1)[-1]
    if ":" in last:
        repo, _, tag = pattern.rpartition(":")
    names = {repo}
    if not any(c in repo for c in "*?["):
        names.add(parse_ref(repo).name)
    return [r for r in records
            if any(fnmatch.fnmatchcase(r.repository, n) or fnmatch.fnmatchcase(familiar_repo(r.repository), n)
                   for n in names)
            and (tag is None or (r.tag is not None and fnmatch.fnmatchcase(r.tag, tag)))]


# -- inspect -------------------------------------------------------------------


def cmd_inspect(args: argparse.Namespace) -> int:
    import trio

    from .. import pull as _pull
    ref = parse_ref(args.ref)
    store = open_store(args)
    image = trio.run(lambda: _pull.resolve_for_inspect(
        ref, platform=platform_of(args), options=registry_options(args), store=store))
    print_json(_pull.describe(image))
    return 0


def _add_inspect(sub) -> None:
    p = add_command(sub, "inspect", "manifest, platforms, config and layers as JSON (no layer download)")
    p.add_argument("ref", metavar="REF")
    p.set_defaults(func=cmd_inspect)


# -- rmi / prune ---------------------------------------------------------------


def cmd_rmi(args: argparse.Namespace) -> int:
    store = open_store(args)
    code = 0
    for text in args.refs:
        try:
            removed = _remove_one(store, text)
        except LazyfsError as e:
            print(f"lazyfs: {e}", file=sys.stderr)
            code = code or e.exit_code
            continue
        for rec in removed:
            name = familiar_repo(rec.repository)
            print(f"Untagged: {name}:{rec.tag}" if rec.tag else f"Untagged: {name}@{rec.digest}")
    return code


def _remove_one(store, text: str):
    if re.fullmatch(r"(sha256:)?[0-9a-f]{1,64}", text):
        try:
            return store.remove_image(image_id=text)
        except LazyfsError:
            if text.startswith("sha256:"):
                raise
    ref = parse_ref(text)
    if ref.digest:
        return store.remove_image(ref.name, digest=ref.digest)
    return store.remove_image(ref.name, tag=ref.tag or "latest")


def _add_rmi(sub) -> None:
    p = add_command(sub, "rmi", "forget images (by name:tag, name@digest or image ID)")
    p.add_argument("refs", metavar="REF", nargs="+")
    p.set_defaults(func=cmd_rmi)


def cmd_prune(args: argparse.Namespace) -> int:
    from ..store.chunks import prune_chunks
    store = open_store(args)
    r = store.prune(all=args.all)
    chunks = prune_chunks(store, all=args.all)
    if args.all:
        print(f"Forgot {r.images} images")
    print(f"Deleted {r.blobs} blobs, {r.indexes} indexes, {r.tmp} temporary files, "
          f"{chunks.files} cached pieces")
    print(f"Total reclaimed space: {human_size(r.bytes_freed + chunks.bytes_freed)}")
    return 0


def _add_prune(sub) -> None:
    p = add_command(sub, "prune", "delete blobs and indexes no recorded image needs")
    p.add_argument("--all", action="store_true", help="forget every image first, emptying the store")
    p.set_defaults(func=cmd_prune)


# -- looking inside an image: ls, cat, stat, find, diff, export ------------------------


def open_options(args: argparse.Namespace):
    from ..image import OpenOptions
    return OpenOptions(platform=platform_of(args), registry=registry_options(args),
                       full_pull=bool(opt(args, "full_pull")), prefetch=bool(opt(args, "prefetch")),
                       use_shared_index=not opt(args, "no_shared_index"))


def with_image(args: argparse.Namespace, ref_text: str, body):
    """Run ``await body(image)`` with ``ref_text`` opened; returns its result."""
    import trio

    from ..image import open_image_async

    async def run():
        async with open_image_async(parse_ref(ref_text), open_options(args), open_store(args)) as image:
            return await body(image)
    return trio.run(run)


def _out_line(line: str) -> None:
    sys.stdout.write(line + "\n")


def cmd_ls(args: argparse.Namespace) -> int:
    from . import browse

    async def body(image):
        await browse.ls(image, args.path, long=args.long, recursive=args.recursive, write=_out_line)
    with_image(args, args.ref, body)
    return 0


def _add_ls(sub) -> None:
    p = add_command(sub, "ls", "list a directory of an image, like ls")
    p.add_argument("-l", dest="long", action="store_true", help="long listing: mode, owner, size, time")
    p.add_argument("-R", dest="recursive", action="store_true", help="list subdirectories too")
    p.add_argument("ref", metavar="REF")
    p.add_argument("path", metavar="PATH", nargs="?", default="/")
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
    p.add_argument("--stats", action="store_true", help="then what was fetched, per layer, on stderr")
    p.add_argument("ref", metavar="REF")
    p.add_argument("paths", metavar="PATH", nargs="+")
    p.set_defaults(func=cmd_cat)


def cmd_stat(args: argparse.Namespace) -> int:
    from . import browse

    async def body(image):
        return browse.stat_json(image, args.path, browse.node_at(image, args.path, follow=False))
    print_json(with_image(args, args.ref, body))
    return 0


def _add_stat(sub) -> None:
    p = add_command(sub, "stat", "one path's attributes as JSON")
    p.add_argument("ref", metavar="REF")
    p.add_argument("path", metavar="PATH")
    p.set_defaults(func=cmd_stat)


def cmd_find(args: argparse.Namespace) -> int:
    from . import browse

    async def body(image):
        for path in browse.find(image, args.path, args.name, args.type):
            _out_line(path)
    with_image(args, args.ref, body)
    return 0


def _add_find(sub) -> None:
    p = add_command(sub, "find", "walk an image's tree, like find")
    p.add_argument("ref", metavar="REF")
    p.add_argument("path", metavar="PATH", nargs="?", default="/")
    p.add_argument("-name", "--name", dest="name", metavar="GLOB", help="only names matching GLOB")
    p.add_argument("-type", "--type", dest="type", metavar="f|d|l|c|b|p", help="only this type")
    p.set_defaults(func=cmd_find)


def cmd_diff(args: argparse.Namespace) -> int:
    from . import browse

    async def body(a):
        async def inner(b):
            return await browse.diff(a, b)
        from ..image import open_image_async
        async with open_image_async(parse_ref(args.ref2), open_options(args), open_store(args)) as b:
            return await inner(b)
    changes = with_image(args, args.ref1, body)
    if args.json:
        print_json(changes)
        return 0
    marks = {"added": "A", "removed": "D", "changed": "C"}
    for c in changes:
        detail = ""
        if c["change"] == "changed":
            detail = "  (" + ", ".join(c["what"]) + ")"
        _out_line(f"{marks[c['change']]} {c['path']}{detail}")
    return 0


def _add_diff(sub) -> None:
    p = add_command(sub, "diff", "paths added (A), removed (D) or changed (C) from REF1 to REF2")
    p.add_argument("--json", action="store_true", help="with what changed, as JSON")
    p.add_argument("ref1", metavar="REF1")
    p.add_argument("ref2", metavar="REF2")
    p.set_defaults(func=cmd_diff)


def cmd_export(args: argparse.Namespace) -> int:
    from . import browse

    async def body(image):
        return await browse.export(image, args.dir)
    n = with_image(args, args.ref, body)
    if not opt(args, "quiet"):
        print(f"exported {n} entries to {args.dir}", file=sys.stderr)
    return 0


def _add_export(sub) -> None:
    p = add_command(sub, "export", "write an image's merged tree to a directory")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("ref", metavar="REF")
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(func=cmd_export)


# -- mount, umount, mounts, stats ---------------------------------------------------


def _mount_options(args: argparse.Namespace):
    from ..fs.daemon import MountOptions
    flags = set()
    for group in args.o or []:
        flags.update(f for f in group.split(",") if f)
    unknown = flags - {"suid", "dev", "nosuid", "nodev", "allow_other", "ro"}
    if unknown:
        raise UsageError(f"unsupported mount option(s): {', '.join(sorted(unknown))} "
                         "(lazyfs takes suid, dev, allow_other)")
    return MountOptions(foreground=args.foreground,
                        allow_other=args.allow_other or "allow_other" in flags,
                        suid="suid" in flags, dev="dev" in flags, debug=bool(opt(args, "debug")))


def cmd_mount(args: argparse.Namespace) -> int:
    from ..fs.operations import image_operations
    from ..fs.daemon import mount
    if args.foreground:
        # serving in this terminal: its log goes here
        logging.getLogger("lazyfs").propagate = True
        logging.basicConfig(level=logging.DEBUG if opt(args, "debug") else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ref = parse_ref(args.ref)
    options = dataclasses.replace(open_options(args), background_index=not args.wait_index,
                                  early_reads=args.early_reads, push_index=args.push_index)
    factory = image_operations(str(ref) if ref.transport == "docker" else args.ref,
                               args.mountpoint, layers=args.layers,
                               open_options=options, store=open_store(args))
    mounted = mount(factory, args.mountpoint, fsname=str(ref), options=_mount_options(args))
    if opt(args, "debug") and not args.foreground:
        print(f"lazyfs: daemon {mounted.pid} logs to {mounted.log_path}", file=sys.stderr)
    return 0


def _add_mount(sub) -> None:
    p = add_command(sub, "mount", "mount an image read-only at MOUNTPOINT, fetching what is read")
    p.add_argument("-f", "--foreground", action="store_true", help="serve in this process until unmounted")
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
    p.add_argument("-o", metavar="OPTS", action="append",
                   help="mount options: suid, dev, allow_other (default nosuid,nodev)")
    p.add_argument("ref", metavar="REF")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.set_defaults(func=cmd_mount)


def cmd_umount(args: argparse.Namespace) -> int:
    from ..fs.daemon import umount
    umount(args.mountpoint, lazy=args.lazy)
    return 0


def _add_umount(sub) -> None:
    p = add_command(sub, "umount", "unmount a lazyfs mount (also one whose daemon died)")
    p.add_argument("-l", "--lazy", action="store_true", help="detach now, even if files are open")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.set_defaults(func=cmd_umount)


def cmd_mounts(args: argparse.Namespace) -> int:
    from ..fs.daemon import list_mounts
    rows = []
    for m in list_mounts():
        state = m.state or {}
        rows.append({"mountpoint": m.mountpoint, "reference": m.source,
                     "digest": state.get("digest", ""), "pid": state.get("pid"),
                     "alive": m.state is not None})
    if args.json:
        print_json(rows)
        return 0
    lines = ["MOUNTPOINT\tREFERENCE\tDIGEST\tPID"]
    for r in rows:
        pid = str(r["pid"]) if r["alive"] else "dead (run lazyfs umount)"
        lines.append(f"{r['mountpoint']}\t{r['reference']}\t{r['digest'][:19]}\t{pid}")
    sys.stdout.write(align(lines))
    return 0


def _add_mounts(sub) -> None:
    p = add_command(sub, "mounts", "list active lazyfs mounts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_mounts)


def cmd_stats(args: argparse.Namespace) -> int:
    from ..fs.daemon import read_stats
    doc = read_stats(args.mountpoint)
    if args.json:
        print_json(doc)
        return 0
    sys.stdout.write(render_stats(doc))
    return 0


def render_stats(doc: dict) -> str:
    head = [f"{doc.get('reference', '')}", f"digest {doc.get('digest', '')}",
            f"opened in {doc.get('open_seconds', 0):.2f}s"]
    if "index" in doc:
        took = doc.get("index_seconds")
        head.append(f"index {doc['index']}" + (f" in {took:.2f}s" if took is not None else ""))
    lines = ["LAYER\tFORMAT\tMODE\tFETCHED\tSIZE\tREQUESTS\tHITS\tMISSES\tBAD"]
    for layer in doc.get("layers", []):
        mode = layer["mode"] + (f" ({layer['reason']})" if layer.get("reason") else "")
        indexing = layer.get("indexing")
        if indexing and indexing["state"] == "indexing":
            mode += f" (indexing: {human_size(indexing['indexed'])} in)"
        lines.append("\t".join([
            layer["digest"].partition(":")[2][:12], layer["format"], mode,
            human_size(layer["bytes_fetched"]), human_size(layer["size"]),
            str(layer["requests"]), str(layer["cache_hits"]), str(layer["cache_misses"]),
            str(layer["verify_failures"])]))
    return "\n".join(head) + "\n" + align(lines)


def _add_stats(sub) -> None:
    p = add_command(sub, "stats", "what a mount has fetched, per layer")
    p.add_argument("--json", action="store_true")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.set_defaults(func=cmd_stats)


# -- index: shared layer tables --------------------------------------------------------


def cmd_index_push(args: argparse.Namespace) -> int:
    from ..index.shared import publish_index

    async def body(image):
        from ..registry.client import RegistryClient
        async with RegistryClient(registry_options(args)) as client:
            return await publish_index(client, image)
    if parse_ref(args.ref).transport != "docker":
        raise UsageError(f"{args.ref}: only images in a registry can carry a shared index")
    print(with_image(args, args.ref, body))
    return 0


def cmd_index_verify(args: argparse.Namespace) -> int:
    from ..errors import LayerFormatError
    from ..index.shared import verify_image

    async def body(image):
        from ..registry.client import RegistryClient
        async with RegistryClient(registry_options(args)) as client:
            return await verify_image(client, image)
    bad = 0
    for layer, problems in with_image(args, args.ref, body).items():
        if problems is None:
            print(f"{layer}\tno shared table")
        elif not problems:
            print(f"{layer}\tok")
        else:
            bad += 1
            for problem in problems:
                print(f"{layer}\t{problem}")
    if bad:
        raise LayerFormatError(f"{bad} shared layer table(s) do not match their layer")
    return 0


def _add_index(sub) -> None:
    p = add_command(sub, "index", "share layer tables through the registry")
    index_sub = p.add_subparsers(dest="index_command", metavar="COMMAND")
    push = add_command(index_sub, "push",
                       "build any missing layer tables and publish them as a referrer of REF")
    push.add_argument("ref", metavar="REF")
    push.set_defaults(func=cmd_index_push)
    verify = add_command(index_sub, "verify",
                         "fetch REF's shareable layers whole and check the published tables "
                         "against them")
    verify.add_argument("ref", metavar="REF")
    verify.set_defaults(func=cmd_index_verify)


# -- main ----------------------------------------------------------------------

COMMANDS = [_add_pull, _add_images, _add_inspect, _add_rmi, _add_prune,
            _add_ls, _add_cat, _add_stat, _add_find, _add_diff, _add_export,
            _add_mount, _add_umount, _add_mounts, _add_stats, _add_index]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lazyfs",
        description="Mount and inspect container images straight from a registry, "
                    "fetching only the bytes that are read.")
    parser.add_argument("--version", action="version", version=f"lazyfs {__version__}")
    add_common_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    if opt(args, "debug"):
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
    else:
        # Retries and fallbacks are logged for --debug and the mount's log file;
        # a failing command says one line, the error itself.
        logging.getLogger("lazyfs").addHandler(logging.NullHandler())
        logging.getLogger("lazyfs").propagate = False
    try:
        return args.func(args) or 0
    except LazyfsError as e:
        print(f"lazyfs: {e}", file=sys.stderr)
        return e.exit_code
    except BaseExceptionGroup as group:
        e = lazyfs_error_in(group)
        if e is None:
            raise
        print(f"lazyfs: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``lazyfs ls ... | head``): stop quietly, as cat does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141

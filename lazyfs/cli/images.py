"""Commands on the local store's images: pull, images, inspect, rmi, prune."""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import re
import sys

from ..errors import LazyfsError, NotFound, UsageError
from .options import REF_HELP, add_command, open_store, parse_ref, platform_of, print_json, registry_options
from .progress import Display, add_quiet, drawn, shown
from .prompt import confirm
from .render import FIELDS, familiar_repo, human_size, image_fields, render
from .template import Template


def cmd_pull(args: argparse.Namespace) -> int:
    import trio

    from .. import pull as _pull
    ref = parse_ref(args.ref)
    if args.all_tags and (ref.tag is not None or ref.digest is not None):
        raise UsageError("tag can't be used with --all-tags/-a")
    store = open_store(args)
    with Display(transient=False) if shown(args) else contextlib.nullcontext() as progress:
        kw = dict(platform=platform_of(args), options=registry_options(args), store=store,
                  progress=progress)
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
    p.add_argument("ref", metavar="REF", help=REF_HELP)
    p.set_defaults(func=cmd_pull)


def cmd_images(args: argparse.Namespace) -> int:
    store = open_store(args)
    rows = [image_fields(r, args.no_trunc) for r in _filtered(store.list_images(), args.filter)]
    if args.quiet:
        ids = [row["ID"] for row in rows]
        print("\n".join(dict.fromkeys(ids)), end="\n" if ids else "")
        return 0
    template = args.format
    if not template or template.strip() == "table":
        template = _default_format(args.digests)
    sys.stdout.write(render(template, rows))
    return 0


def _add_images(sub) -> None:
    p = add_command(sub, "images", "list pulled images, like docker images")
    p.epilog = ("SIZE is the unpacked size, as docker images shows it: the sizes of the regular "
                "files summed over the layers (a file replaced by a later layer counts twice), "
                "the same whether the layers are gzip, zstd or plain tar. A pull computes it from "
                "each layer's table, which it builds and keeps for the first mount; an image "
                "pulled by an older lazyfs shows its compressed size until pulled again.")
    p.add_argument("-q", "--quiet", action="store_true", help="only image IDs")
    p.add_argument("--digests", action="store_true", help="show digests")
    p.add_argument("--no-trunc", action="store_true", help="do not truncate IDs")
    p.add_argument("--format", metavar="TEMPLATE",
                   help="'json' (one object per line), 'table', or a Go template, e.g. "
                        "'table {{.Repository}}\\t{{.ID}}' (fields: " + ", ".join(FIELDS) + ")")
    p.add_argument("filter", metavar="REPO[:TAG]", nargs="?", help="only these (shell patterns allowed)")
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


def cmd_inspect(args: argparse.Namespace) -> int:
    import trio

    from .. import pull as _pull
    ref = parse_ref(args.ref)
    template = None if args.format is None else _inspect_template(args.format)
    store = open_store(args)
    image = trio.run(lambda: _pull.resolve_for_inspect(
        ref, platform=platform_of(args), options=registry_options(args), store=store))
    if args.raw:
        # with --platform, the manifest chosen from an index, as crane does
        chosen = image.manifest if platform_of(args) else image.index or image.manifest
        sys.stdout.buffer.write(chosen.raw)
        sys.stdout.buffer.flush()
    elif template is not None:
        sys.stdout.write(template.execute(_pull.describe(image)) + "\n")
    else:
        print_json(_pull.describe(image))
    return 0


def _inspect_template(text: str) -> Template:
    text = text.replace("\\t", "\t").replace("\\n", "\n")
    return Template("{{json .}}" if text.strip() == "json" else text)


def _add_inspect(sub) -> None:
    p = add_command(sub, "inspect", "manifest, platforms, config and layers as JSON (no layer download)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("-f", "--format", metavar="TEMPLATE",
                     help="print this Go template over the JSON document instead, "
                          "e.g. '{{.Config.Digest}}' or '{{json .Layers}}'")
    out.add_argument("--raw", action="store_true",
                     help="print the manifest (or index) REF names, byte for byte as the registry "
                          "sent it; with --platform, that platform's manifest")
    p.add_argument("ref", metavar="REF", help=REF_HELP)
    p.set_defaults(func=cmd_inspect)


def cmd_rmi(args: argparse.Namespace) -> int:
    store = open_store(args)
    code = 0
    for text in args.refs:
        try:
            removed = _remove_one(store, text, args.force)
        except LazyfsError as e:
            print(f"lazyfs: {e}", file=sys.stderr)
            code = code or e.exit_code
            continue
        for rec in removed:
            name = familiar_repo(rec.repository)
            print(f"Untagged: {name}:{rec.tag}" if rec.tag else f"Untagged: {name}@{rec.digest}")
    return code


def _remove_one(store, text: str, force: bool):
    if re.fullmatch(r"(sha256:)?[0-9a-f]{1,64}", text):
        try:
            return store.remove_image(image_id=text, force=force)
        except NotFound:
            if text.startswith("sha256:"):
                raise
    ref = parse_ref(text)
    if ref.digest:
        return store.remove_image(ref.name, digest=ref.digest)
    return store.remove_image(ref.name, tag=ref.tag or "latest")


def _add_rmi(sub) -> None:
    p = add_command(sub, "rmi", "forget images (by name:tag, name@digest or image ID)")
    p.epilog = ("A REF that cannot be removed is reported and the others still are; "
                "the exit code is then that of the first error. An image ID that several "
                "names (repository:tag or repository@digest) point to is removed only with "
                "-f, which then untags all of them, as docker rmi -f does.")
    p.add_argument("-f", "--force", action="store_true",
                   help="remove an image ID even if several names point to it")
    p.add_argument("refs", metavar="REF", nargs="+", help="NAME[:TAG], NAME@DIGEST or an image ID (prefix)")
    p.set_defaults(func=cmd_rmi)


def cmd_prune(args: argparse.Namespace) -> int:
    from ..store.chunks import prune_chunks
    store = open_store(args)
    if not args.force and not confirm(_PRUNE_WARNING[args.all], "pass -f/--force to prune"):
        return 0
    with drawn(args, "pruning"):
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
    p.epilog = ("Asks for confirmation on a terminal, as docker image prune does; "
                "without a terminal, -f is required.")
    p.add_argument("--all", action="store_true", help="forget every image first, emptying the store")
    p.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    add_quiet(p)
    p.set_defaults(func=cmd_prune)


_PRUNE_WARNING = {
    False: "WARNING! This will remove all blobs, indexes and cached pieces no recorded image needs.",
    True: "WARNING! This will forget every image and remove everything in the store.",
}


COMMANDS = [_add_pull, _add_images, _add_inspect, _add_rmi, _add_prune]

"""What every command shares: the common options, and opening the store,
the registry options and an image from them."""

from __future__ import annotations

import argparse
import json
import os


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

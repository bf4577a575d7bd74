"""What every command shares: the common options, and opening the store,
the registry options and an image from them."""

from __future__ import annotations

import argparse
import json
import os
import re
import textwrap

from ..errors import UsageError

_GLOBAL = [
    (("--platform",), dict(metavar="OS/ARCH[/VARIANT]",
                           help="platform to choose from a multi-platform image (default: this host)")),
    (("--insecure-registry",), dict(metavar="HOST", action="append",
                                    help="talk plain HTTP (or unverified TLS) to HOST; repeatable")),
    (("--registry-mirror",), dict(metavar="URL", action="append",
                                  help="try this mirror before Docker Hub; repeatable")),
    (("--hosts-dir",), dict(metavar="DIR",
                            help="containerd's registry host configuration (hosts.toml: "
                                 "mirrors, certificates, headers) (default: $LAZYFS_HOSTS_DIR, "
                                 "else /etc/containerd/certs.d)")),
    (("--cache-dir",), dict(metavar="DIR", help="the local store (default: $LAZYFS_CACHE_DIR)")),
    (("--cache-size",), dict(metavar="SIZE",
                             help="bound on cached file content, e.g. 500M or 10G (default: "
                                  "$LAZYFS_CACHE_SIZE, else 10%% of the file system up to 10G)")),
    (("--creds",), dict(metavar="USER[:PASS]",
                        help="authenticate as USER with PASS (asked for on a terminal when "
                             "left out) to the registries this command talks to, instead of "
                             "stored credentials")),
    (("--debug",), dict(action="store_true", help="log requests and decisions to stderr")),
    (("--no-shared-index",), dict(action="store_true",
                                  help="build layer tables here instead of using ones "
                                       "published in the registry")),
]
GLOBAL_TITLE = "global options"
REF_HELP = "[REGISTRY/]REPO[:TAG][@DIGEST], oci:DIR[:TAG] or docker-archive:FILE"


def global_flags() -> list[str]:
    return [flags[0] for flags, _ in _GLOBAL]


def add_common_options(p: argparse.ArgumentParser, brief: bool = False) -> None:
    """The options every command takes, before or after the command name, in
    a group of their own: described in full for ``lazyfs --help``, and
    ``brief``ly (named, not explained) in each command's help."""
    if brief:
        group = p.add_argument_group(
            GLOBAL_TITLE, ", ".join(global_flags()) + " (before or after the command; "
                                                      "see lazyfs --help)")
    else:
        group = p.add_argument_group(GLOBAL_TITLE, "accepted before or after the command name")
    for flags, kw in _GLOBAL:
        kw = dict(kw, default=argparse.SUPPRESS)
        if brief:
            kw["help"] = argparse.SUPPRESS
        group.add_argument(*flags, **kw)


class HelpFormatter(argparse.HelpFormatter):
    """argparse's, without breaking ``--cache-size`` at its hyphen, and with
    an epilog's lines kept: one starting with two spaces is a ``NAME  text``
    row, continued under its text."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(_fill_line(line, width, indent) for line in text.splitlines())


def _fill_line(line: str, width: int, indent: str) -> str:
    row = re.match(r"  \S+ +", line)
    return textwrap.fill(line if row else " ".join(line.split()), width, initial_indent=indent,
                         subsequent_indent=indent + " " * (row.end() if row else 0),
                         break_on_hyphens=False)


def add_command(sub, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand parser that also takes the common options after its name."""
    p = sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)
    add_common_options(p, brief=True)
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
    from ..registry.login import fixed_auth
    credential = creds_credential(args)
    return RegistryOptions(insecure_registries=tuple(opt(args, "insecure_registry") or ()),
                           mirrors=tuple(_mirror(m) for m in opt(args, "registry_mirror") or ()),
                           hosts_dir=opt(args, "hosts_dir"),
                           auth=fixed_auth(credential) if credential is not None else None)


def _mirror(text: str) -> str:
    """A mirror as docker takes one, an http(s) URL of a host, or the host alone."""
    if not re.fullmatch(r"(?:https?://)?[A-Za-z0-9.-]+(?::[0-9]{1,5})?/?|"
                        r"(?:https?://)?\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?/?", text):
        raise UsageError(f"invalid --registry-mirror {text!r}: expected "
                         "http[s]://HOST[:PORT] or HOST[:PORT]")
    return text


def creds_credential(args: argparse.Namespace):
    """The credential ``--creds`` gives, its password asked for once if left out."""
    from ..registry.credentials import Credential
    from .prompt import ask
    text = opt(args, "creds")
    if text is None:
        return None
    if opt(args, "_creds") is None:
        user, sep, password = text.partition(":")
        if not user:
            raise UsageError("--creds needs a user name: --creds USER[:PASS]")
        if not sep:
            password = ask(f"Password for {user}: ", "give it as --creds USER:PASS", secret=True)
        args._creds = Credential(user, password, source="--creds")
    return args._creds


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


def image_context(args: argparse.Namespace, ref_text: str):
    """An async context giving ``ref_text`` opened: by the service answering
    this command (``lazyfs serve`` sets ``args._served``), else here."""
    served = opt(args, "_served")
    if served is not None:
        return served(ref_text)
    from ..image import open_image_async
    return open_image_async(parse_ref(ref_text), open_options(args), open_store(args))


def with_image(args: argparse.Namespace, ref_text: str, body):
    """Run ``await body(image)`` with ``ref_text`` opened; returns its result."""
    import trio

    async def run():
        async with image_context(args, ref_text) as image:
            return await body(image)
    return trio.run(run)

"""``lazyfs index``: layer tables shared through the registry."""

from __future__ import annotations

import argparse

from ..errors import LayerFormatError, UsageError
from .options import REF_HELP, add_command, parse_ref, registry_options, with_image
from .progress import add_quiet, drawn


def cmd_index_push(args: argparse.Namespace) -> int:
    from ..index.shared import publish_index

    async def body(image):
        from ..registry.client import RegistryClient
        async with RegistryClient(registry_options(args)) as client:
            return await publish_index(client, image)
    if parse_ref(args.ref).transport != "docker":
        raise UsageError(f"{args.ref}: only images in a registry can carry a shared index")
    with drawn(args, "publishing the index"):
        digest = with_image(args, args.ref, body)
    print(digest)
    return 0


def cmd_index_verify(args: argparse.Namespace) -> int:
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


def _missing_command(args: argparse.Namespace) -> int:
    raise UsageError("index: which one? lazyfs index push REF, or lazyfs index verify REF")


def _add_index(sub) -> None:
    p = add_command(sub, "index", "share layer tables through the registry")
    index_sub = p.add_subparsers(dest="index_command", metavar="COMMAND")
    p.set_defaults(func=_missing_command)
    push = add_command(index_sub, "push",
                       "build any missing layer tables and publish them as a referrer of REF")
    add_quiet(push)
    push.add_argument("ref", metavar="REF", help=REF_HELP)
    push.set_defaults(func=cmd_index_push)
    verify = add_command(index_sub, "verify",
                         "fetch REF's shareable layers whole and check the published tables "
                         "against them")
    verify.epilog = "Exits 9 (LayerFormatError) when a published table does not match its layer."
    verify.add_argument("ref", metavar="REF", help=REF_HELP)
    verify.set_defaults(func=cmd_index_verify)


COMMANDS = [_add_index]

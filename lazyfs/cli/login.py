"""``login`` and ``logout``: registry credentials kept where docker keeps them.

A login is checked against the registry before anything is written, so a
mistyped password is refused at once rather than at the next pull.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import UsageError
from .options import add_command, registry_options
from .prompt import ask

SERVER_HELP = "the registry, e.g. ghcr.io or localhost:5000 (default: Docker Hub)"


def cmd_login(args: argparse.Namespace) -> int:
    import trio

    from ..registry.credentials import Credential, normalize_registry
    from ..registry.credstore import store_credential
    from ..registry.login import check_login
    registry = normalize_registry(args.server)
    username, password = _username(args), _password(args)
    credential = Credential(username, password, source="the login")
    trio.run(check_login, registry, credential, registry_options(args))
    store_credential(registry, username, password)
    print("Login Succeeded")
    return 0


def _username(args: argparse.Namespace) -> str:
    username = args.username or ask("Username: ", "give it with -u/--username")
    if not username.strip():
        raise UsageError("login needs a user name")
    return username.strip()


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        if not args.username:
            raise UsageError("--password-stdin needs -u/--username")
        password = sys.stdin.read().removesuffix("\n").removesuffix("\r")
    elif args.password is not None:
        print("WARNING! Using --password via the CLI is insecure. Use --password-stdin.",
              file=sys.stderr)
        password = args.password
    else:
        password = ask("Password: ", "give it with --password-stdin", secret=True)
    if not password:
        raise UsageError("login needs a password")
    return password


def _add_login(sub) -> None:
    p = add_command(sub, "login", "check credentials with a registry and keep them as docker does")
    p.epilog = ("Credentials go to the credential helper docker's config.json names for the "
                "registry (credHelpers, else credsStore), else into $DOCKER_CONFIG/config.json "
                "(default ~/.docker/config.json), which docker and podman read too. A user "
                "name or password left out is asked for on a terminal.")
    p.add_argument("-u", "--username", metavar="USER", help="user name")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument("-p", "--password", metavar="PASS",
                        help="password or token (seen by other users of this machine; "
                             "prefer --password-stdin)")
    secret.add_argument("--password-stdin", action="store_true",
                        help="read the password from standard input")
    p.add_argument("server", metavar="SERVER", nargs="?", default="docker.io", help=SERVER_HELP)
    p.set_defaults(func=cmd_login)


def cmd_logout(args: argparse.Namespace) -> int:
    from ..registry.credentials import helper_server_url, normalize_registry
    from ..registry.credstore import erase_credential
    registry = normalize_registry(args.server)
    shown = helper_server_url(registry)
    if erase_credential(registry):
        print(f"Removing login credentials for {shown}")
    else:
        print(f"Not logged in to {shown}")
    return 0


def _add_logout(sub) -> None:
    p = add_command(sub, "logout", "forget the credentials kept for a registry")
    p.add_argument("server", metavar="SERVER", nargs="?", default="docker.io", help=SERVER_HELP)
    p.set_defaults(func=cmd_logout)


COMMANDS = [_add_login, _add_logout]

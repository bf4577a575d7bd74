"""Questions asked on a terminal: a confirmation, a user name, a password.

A command that needs an answer and has no terminal to ask on fails with a
usage error naming the option that answers it instead, so scripts never
hang on a prompt nobody sees.
"""

from __future__ import annotations

import getpass
import sys

from ..errors import UsageError


def interactive() -> bool:
    return sys.stdin.isatty()


def confirm(warning: str, instead: str) -> bool:
    """docker's ``[y/N]`` question; without a terminal, a usage error
    suggesting ``instead``."""
    _need_terminal(instead)
    try:
        answer = input(f"{warning}\nAre you sure you want to continue? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def ask(question: str, instead: str, secret: bool = False) -> str:
    """One line typed on the terminal (not echoed when ``secret``)."""
    _need_terminal(instead)
    try:
        return getpass.getpass(question) if secret else input(question)
    except EOFError:
        raise UsageError(f"no answer given; {instead}") from None


def _need_terminal(instead: str) -> None:
    if not interactive():
        raise UsageError(f"cannot prompt: stdin is not a terminal; {instead}")

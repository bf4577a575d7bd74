"""A few-megabyte image that runs: this machine's dash and the C library it
needs, and a second layer that adds a file and deletes one (a whiteout), so
an overlay of both is what a container sees. Only shell builtins work in it."""

from __future__ import annotations

from pathlib import Path

from lazyfs.testing import WHITEOUT, File, gzip_layer
from lazyfs.testing.push import push_image

LIBS = ("/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2")

SCRIPT = 'read m < /etc/msg; echo "$m"; [ -e /etc/old ] || echo old-gone; echo w > /tmp/w && echo wrote'
"""Run with /bin/sh -c: prints what ``EXPECTED`` says."""
EXPECTED = "hello from the upper layer\nold-gone\nwrote\n"


def shell_layers(name: str = "") -> list[bytes]:
    """``name`` goes into a file of the base layer, so that images of
    different names share no layer (nor snapshot)."""
    base = {"etc/image": name, "bin/": None, "etc/": None, "tmp/": None, "lib/": None, "lib/x86_64-linux-gnu/": None,
            "lib64/": None, "etc/old": "to be deleted\n",
            "bin/sh": File(Path("/bin/dash").read_bytes(), mode=0o755)}
    for lib in LIBS:
        base[lib.lstrip("/")] = File(Path(lib).resolve().read_bytes(), mode=0o755)
    upper = {"etc/": None, "etc/msg": "hello from the upper layer\n", "etc/old": WHITEOUT}
    return [gzip_layer(base).blob, gzip_layer(upper).blob]


def push_shell_image(client, repo: str, tag: str = "v1") -> str:
    push_image(client, repo, tag, shell_layers(repo))
    return f"{repo}:{tag}"

"""README.md says what the command line and the repository hold now."""

from __future__ import annotations

import os
import re
from pathlib import Path

from lazyfs.cli import doc
from lazyfs.cli.main import build_parser
from lazyfs.cli.options import global_flags

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _commands() -> dict[str, set[str]]:
    """Every command the parser has (``index push`` too) → its option strings."""
    return {name: {s for a in sub._actions for s in a.option_strings}
            for name, sub, _ in doc._commands(build_parser())}


def _table_commands() -> list[tuple[str, list[str]]]:
    """(command, option-looking words) for each ``lazyfs …`` in the commands table."""
    known = _commands()
    out = []
    for line in _section("Commands").splitlines():
        if not line.startswith("| `lazyfs"):
            continue
        for code in re.findall(r"`(lazyfs [^`]*)`", line.split(" | ")[0]):
            words = code.replace("\\|", " ").replace("[", " ").replace("]", " ").split()[1:]
            name = words[0]
            if len(words) > 1 and f"{name} {words[1]}" in known:
                name = f"{name} {words[1]}"
            out.append((name, [w for w in words if w.startswith("-") and w != "-"]))
    return out


def _accepts(flags: set[str], word: str) -> bool:
    """``word`` is one of ``flags``, or short flags run together (``-la``)."""
    return word in flags or (not word.startswith("--")
                             and all(f"-{c}" in flags for c in word[1:]))


def test_the_setup_commands_exist():
    for script in ("scripts/demo", "scripts/test"):
        assert f"\n{script} " in _section("Quick start (Debian 12, as root)")
        assert os.access(ROOT / script, os.X_OK)


def test_the_commands_table_names_every_command_and_only_real_options():
    known = _commands()
    rows = _table_commands()
    assert {name for name, _ in rows} == set(known) - {"index", "trace"}
    for name, words in rows:
        for word in words:
            assert _accepts(known[name] | set(global_flags()), word), (name, word)


def test_every_option_the_readme_names_exists():
    every = set(global_flags()).union(*_commands().values())
    for word in re.findall(r"`(--[a-z-]+)", README):
        assert word in every, word


def test_every_page_in_docs_is_listed():
    listed = _section("Documentation")
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"`docs/{page.name}`" in listed, page.name

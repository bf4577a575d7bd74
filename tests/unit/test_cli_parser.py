"""The command line's shape: global options, help, and docs/cli.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from lazyfs.cli import doc
from lazyfs.cli.main import build_parser
from lazyfs.cli.options import global_flags

ROOT = Path(__file__).resolve().parents[2]


def test_docs_cli_md_is_what_the_parser_says():
    """Regenerate with ``python -m lazyfs.cli.doc > docs/cli.md``."""
    assert (ROOT / "docs" / "cli.md").read_text() == doc.markdown()


def test_docs_cover_every_command_option_and_exit_code():
    text = doc.markdown()
    parser = build_parser()
    for name, sub, _ in doc._commands(parser):
        assert f"### `lazyfs {name}`" in text
        for action in sub._actions:
            for flag in action.option_strings:
                assert flag in text or flag in global_flags() or flag in ("-h", "--help")
    for code in ("| 3 |", "| 9 |", "| 12 |", "| 130 |", "| 141 |"):
        assert code in text
    assert "`truncate`" in text and "`{{range PIPE}}…{{else}}…{{end}}`" in text


@pytest.mark.parametrize("argv", [
    ["--platform", "linux/arm64", "--cache-dir", "/c", "ls", "REF"],
    ["ls", "--platform", "linux/arm64", "--cache-dir", "/c", "REF"],
    ["--platform", "linux/arm64", "ls", "REF", "--cache-dir", "/c"],
])
def test_global_options_work_before_and_after_the_command(argv):
    args = build_parser().parse_args(argv)
    assert (args.platform, args.cache_dir, args.ref) == ("linux/arm64", "/c", "REF")


def test_command_help_starts_with_what_it_does_and_names_global_options_once(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ls", "--help"])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("usage: lazyfs ls ") and "--platform" not in lines[0]
    assert lines[2].startswith("list a directory of an image")
    assert out.count("--cache-size") == 1 and "global options:" in out
    assert "bound on cached file content" not in out  # explained in lazyfs --help only


def test_main_help_explains_global_options_in_their_own_group(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    group = out[out.index("global options:"):]
    assert all(flag in group for flag in global_flags())
    assert "bound on cached file content" in group


def test_index_without_its_command_is_a_usage_error(capsys):
    from lazyfs.cli.main import main
    assert main(["index"]) == 2
    assert capsys.readouterr().err.startswith("lazyfs: index: which one?")


def test_ctrl_c_while_the_command_is_still_importing_is_one_line():
    """Interrupted in the middle of importing the command's modules (a hook
    raises where the signal would), ``lazyfs`` says so in one line, no traceback."""
    import subprocess
    import sys
    code = ("import sys\n"
            "class Hook:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'lazyfs.cli.render':\n"
            "            raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, Hook())\n"
            "from lazyfs.cli import main\n"
            "raise SystemExit(main(['ls', 'x:y', '/']))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (p.returncode, p.stderr, p.stdout) == (130, "lazyfs: interrupted\n", "")


@pytest.mark.parametrize("mirror, ok", [
    ("https://mirror.gcr.io", True), ("http://127.0.0.1:5000/", True),
    ("mirror.example:5000", True), ("http://[::1]:5000", True),
    ("not a url", False), ("ftp://mirror.example", False), ("https://mirror.example/path", False),
])
def test_registry_mirror_is_a_host_or_its_url(mirror, ok):
    from lazyfs.cli.options import registry_options
    from lazyfs.errors import UsageError
    args = build_parser().parse_args(["--registry-mirror", mirror, "ls", "REF"])
    if ok:
        assert registry_options(args).mirrors == (mirror,)
    else:
        with pytest.raises(UsageError, match="invalid --registry-mirror"):
            registry_options(args)


def test_an_export_directory_that_cannot_be_listed_is_one_usage_error(tmp_path, monkeypatch):
    """As a user other than root meets a directory of mode 000 (root lists it
    anyway, so the refusal is made here)."""
    from lazyfs.cli import files
    from lazyfs.errors import UsageError

    def refused(path):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(files.os, "listdir", refused)
    with pytest.raises(UsageError, match=f"export: cannot use {tmp_path}: Permission denied"):
        files._check_export_dir(str(tmp_path))

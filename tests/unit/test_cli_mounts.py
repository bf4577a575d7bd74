"""``lazyfs mounts``: one line per mount whatever its path holds (escaped as
/proc/mounts escapes it), and where the log of a dead daemon is."""

from __future__ import annotations

import json

from lazyfs.cli.main import main
from lazyfs.fs import daemon
from lazyfs.fs.daemon import MountInfo

STATE = {"pid": 4242, "digest": "sha256:" + "ab" * 32}


def listed(monkeypatch, capsys, mounts, *args) -> str:
    monkeypatch.setattr(daemon, "list_mounts", lambda: mounts)
    assert main(["mounts", *args]) == 0
    return capsys.readouterr().out


def test_a_newline_in_a_mount_path_is_escaped(monkeypatch, capsys):
    mounts = [MountInfo("/mnt/one\nfake\tline\\x", "reg/app:v1", ("ro",), STATE),
              MountInfo("/mnt/two", "reg/other:v2", ("ro",), STATE)]
    out = listed(monkeypatch, capsys, mounts).splitlines()
    assert len(out) == 3
    assert out[1].startswith("/mnt/one\\012fake\\011line\\134x ") and out[1].endswith("4242")
    assert out[2].startswith("/mnt/two ")
    rows = json.loads(listed(monkeypatch, capsys, mounts, "--json"))
    assert rows[0]["mountpoint"] == "/mnt/one\nfake\tline\\x"


def test_a_dead_daemon_says_where_its_log_is(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    log = daemon.default_log_path("/mnt/dead")
    log.parent.mkdir(parents=True)
    log.write_text("it went wrong\n")
    mounts = [MountInfo("/mnt/dead", "reg/app:v1", ("ro",), None),
              MountInfo("/mnt/gone", "reg/app:v1", ("ro",), None)]
    out = listed(monkeypatch, capsys, mounts).splitlines()
    assert out[1].endswith(f"dead (log: {log}; run lazyfs umount)")
    assert out[2].endswith("dead (run lazyfs umount)")
    rows = json.loads(listed(monkeypatch, capsys, mounts, "--json"))
    assert rows[0]["log"] == str(log) and "log" not in rows[1]


def test_mount_refuses_contradicting_prefetch_options(capsys, tmp_path):
    for extra in (["--prefetch", "--no-prefetch"], ["--prefetch-concurrency", "0"],
                  ["--prefetch-rate", "fast"]):
        assert main(["mount", *extra, "reg.test/app:v1", str(tmp_path)]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("lazyfs: ") and err.count("\n") == 1, err

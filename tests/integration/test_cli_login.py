"""``lazyfs login`` / ``logout`` and ``--creds`` against the htpasswd registry
(user ``alice``, password ``s3cret``), with docker's config file in a private
``$DOCKER_CONFIG``."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from lazyfs.errors import Unauthorized, UsageError
from lazyfs.testing.push import push_image
from tests.support.images import gzip_bytes, make_tar

ROOT = Path(__file__).resolve().parents[2]
ALICE_AUTH = base64.b64encode(b"alice:s3cret").decode()


def lazyfs(*args: str, stdin: str | None = None, env: dict | None = None,
           expect: int = 0) -> subprocess.CompletedProcess:
    """``lazyfs`` with no terminal: ``stdin`` is what it reads, if anything."""
    p = subprocess.run([sys.executable, "-m", "lazyfs", *args], capture_output=True, text=True,
                       cwd=ROOT, timeout=120, env=env,
                       input=stdin, stdin=subprocess.DEVNULL if stdin is None else None)
    assert p.returncode == expect, (args, p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and "s3cret" not in p.stderr
    return p


@pytest.fixture(scope="module")
def private_image(auth_registry) -> str:
    repo = f"login/private-{uuid.uuid4().hex[:8]}"
    with auth_registry.client() as c:
        push_image(c, repo, "v1", [gzip_bytes(make_tar({"etc/": None, "etc/secret": "42\n"}))])
    return f"{auth_registry.host}/{repo}:v1"


def read_config(docker_config: Path) -> dict:
    return json.loads((docker_config / "config.json").read_text())


def test_login_ls_logout(auth_registry, private_image, docker_config, cache_dir):
    host = auth_registry.host
    config = docker_config / "config.json"
    lazyfs("ls", private_image, "/etc", expect=Unauthorized.exit_code)

    wrong = lazyfs("login", "-u", "alice", "--password-stdin", host, stdin="nope\n",
                   expect=Unauthorized.exit_code)
    assert wrong.stderr.count("\n") == 1 and "incorrect username or password" in wrong.stderr
    assert not config.exists()

    config.write_text(json.dumps({"psFormat": "table {{.ID}}",
                                  "auths": {"other.example": {"auth": "b3RoZXI6eA=="}}}))
    ok = lazyfs("login", "-u", "alice", "--password-stdin", host, stdin="s3cret\n")
    assert ok.stdout == "Login Succeeded\n"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert read_config(docker_config) == {
        "psFormat": "table {{.ID}}",
        "auths": {"other.example": {"auth": "b3RoZXI6eA=="}, host: {"auth": ALICE_AUTH}}}
    assert lazyfs("ls", private_image, "/etc").stdout.split() == ["secret"]

    assert lazyfs("logout", host).stdout == f"Removing login credentials for {host}\n"
    assert read_config(docker_config)["auths"] == {"other.example": {"auth": "b3RoZXI6eA=="}}
    assert read_config(docker_config)["psFormat"] == "table {{.ID}}"
    lazyfs("ls", private_image, "/etc", expect=Unauthorized.exit_code)
    assert lazyfs("logout", host).stdout == f"Not logged in to {host}\n"


def test_login_asks_only_on_a_terminal(auth_registry, docker_config):
    for args in (["login", auth_registry.host], ["login", "-u", "alice", auth_registry.host],
                 ["login", "--password-stdin", auth_registry.host]):
        p = lazyfs(*args, expect=UsageError.exit_code)
        assert p.stderr.count("\n") == 1, p.stderr
    assert not (docker_config / "config.json").exists()


def on_terminal(*args: str, typed: str, password: str) -> subprocess.CompletedProcess:
    """``lazyfs`` with a fresh terminal as stdin and controlling terminal (so
    getpass reads it): ``typed`` entered at once, ``password`` once asked for
    (getpass discards what was typed before it asks)."""
    import fcntl
    import pty
    import select
    import termios
    main_fd, tty_fd = pty.openpty()
    try:
        os.write(main_fd, typed.encode())
        proc = subprocess.Popen([sys.executable, "-m", "lazyfs", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=ROOT, stdin=tty_fd,
                                start_new_session=True,
                                preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        shown = b""
        while b"Password" not in shown and select.select([main_fd], [], [], 60)[0]:
            shown += os.read(main_fd, 1024)
        os.write(main_fd, password.encode() + b"\n")
        out, err = proc.communicate(timeout=120)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    finally:
        os.close(tty_fd)
        os.close(main_fd)


def test_login_and_creds_ask_on_a_terminal(auth_registry, private_image, docker_config,
                                           cache_dir):
    p = on_terminal("login", auth_registry.host, typed="alice\n", password="s3cret")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("Username: ") and p.stdout.endswith("Login Succeeded\n")
    assert read_config(docker_config)["auths"][auth_registry.host] == {"auth": ALICE_AUTH}
    (docker_config / "config.json").unlink()
    p = on_terminal("--creds", "alice", "ls", private_image, "/etc", typed="", password="s3cret")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["secret"]


def test_login_with_a_password_argument_warns(auth_registry, docker_config):
    p = lazyfs("login", "-u", "alice", "-p", "s3cret", auth_registry.host)
    assert p.stdout == "Login Succeeded\n" and "--password-stdin" in p.stderr
    assert read_config(docker_config)["auths"][auth_registry.host] == {"auth": ALICE_AUTH}


FAKE_HELPER = """\
    #!{python}
    import json, os, sys
    path = os.environ["FAKE_HELPER_STORE"]
    saved = json.load(open(path)) if os.path.exists(path) else {{}}
    action, given = sys.argv[1], sys.stdin.read()
    if action == "store":
        entry = json.loads(given)
        saved[entry["ServerURL"]] = entry
    elif given.strip() not in saved:
        print("credentials not found in native keychain")
        sys.exit(1)
    elif action == "get":
        entry = saved[given.strip()]
        print(json.dumps({{"Username": entry["Username"], "Secret": entry["Secret"]}}))
    elif action == "erase":
        del saved[given.strip()]
    json.dump(saved, open(path, "w"))
"""


@pytest.mark.parametrize("style", ["credsStore", "credHelpers"])
def test_login_and_logout_through_a_credential_helper(style, auth_registry, private_image,
                                                      docker_config, cache_dir, tmp_path):
    host = auth_registry.host
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-test"
    helper.write_text(textwrap.dedent(FAKE_HELPER).format(python=sys.executable))
    helper.chmod(0o755)
    saved = tmp_path / "helper-store.json"
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               FAKE_HELPER_STORE=str(saved))
    setting = {"credsStore": "test"} if style == "credsStore" else {"credHelpers": {host: "test"}}
    (docker_config / "config.json").write_text(json.dumps(setting))

    lazyfs("login", "-u", "alice", "--password-stdin", host, stdin="s3cret", env=env)
    assert json.loads(saved.read_text()) == {
        host: {"ServerURL": host, "Username": "alice", "Secret": "s3cret"}}
    assert read_config(docker_config) == {**setting, "auths": {host: {}}}
    assert lazyfs("ls", private_image, "/etc", env=env).stdout.split() == ["secret"]

    lazyfs("logout", host, env=env)
    assert json.loads(saved.read_text()) == {}
    assert read_config(docker_config) == {**setting, "auths": {}}
    lazyfs("ls", private_image, "/etc", env=env, expect=Unauthorized.exit_code)


def test_creds_option_overrides_stored_credentials(auth_registry, private_image, docker_config,
                                                  cache_dir):
    assert lazyfs("--creds", "alice:s3cret", "ls", private_image, "/etc").stdout.split() == ["secret"]
    wrong = base64.b64encode(b"alice:wrong").decode()
    (docker_config / "config.json").write_text(
        json.dumps({"auths": {auth_registry.host: {"auth": wrong}}}))
    lazyfs("ls", private_image, "/etc", expect=Unauthorized.exit_code)
    assert lazyfs("ls", "--creds", "alice:s3cret", private_image, "/etc").stdout.split() == ["secret"]
    p = lazyfs("ls", "--creds", "alice:nope", private_image, "/etc", expect=Unauthorized.exit_code)
    assert "--creds" in p.stderr
    p = lazyfs("ls", "--creds", "alice", private_image, "/etc", expect=UsageError.exit_code)
    assert p.stderr.count("\n") == 1 and "--creds USER:PASS" in p.stderr

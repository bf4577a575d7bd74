"""containerd's hosts.toml, read as containerd 1.6/1.7 read it, and Go's proxy rules."""

from __future__ import annotations

import logging

import pytest

from lazyfs.registry.hosts import (ALL_CAPABILITIES, HostEntry, TlsConfig, host_dir, hosts_root,
                                   load_hosts)
from lazyfs.registry.mirrors import MirrorHealth, registry_endpoints
from lazyfs.registry.proxies import ProxyConfig


def write(root, name: str, text: str | None = None, files: dict | None = None):
    d = root / name
    d.mkdir(parents=True)
    if text is not None:
        (d / "hosts.toml").write_text(text)
    for fname, content in (files or {}).items():
        (d / fname).write_text(content)
    return d


def test_hosts_are_tried_in_file_order_and_the_server_last(tmp_path):
    d = write(tmp_path, "registry.example", '''
server = "https://registry.example"

[host."http://mirror-b.local:5000"]
  capabilities = ["pull"]
  skip_verify = true

[host."https://mirror-a.local/prefix"]
  capabilities = ["pull", "resolve"]
  ca = ["ca.pem", "/etc/other.pem"]
  client = [["c.cert", "c.key"], "both.pem"]
  [host."https://mirror-a.local/prefix".header]
    x-custom = "one"
    x-many = ["a", "b"]

[host."https://odd.local/api/"]
  override_path = true
''')
    hosts = load_hosts(tmp_path, "registry.example")
    assert [(h.scheme, h.host, h.path) for h in hosts] == [
        ("http", "mirror-b.local:5000", "/v2"), ("https", "mirror-a.local", "/prefix/v2"),
        ("https", "odd.local", "/api"), ("https", "registry.example", "/v2")]
    assert hosts[0].capabilities == {"pull"} and hosts[0].tls == TlsConfig(skip_verify=True)
    assert hosts[1].tls.ca == (str(d / "ca.pem"), "/etc/other.pem")
    assert hosts[1].tls.client == ((str(d / "c.cert"), str(d / "c.key")), (str(d / "both.pem"), ""))
    assert hosts[1].headers == (("x-custom", "one"), ("x-many", "a"), ("x-many", "b"))
    assert hosts[3].capabilities == ALL_CAPABILITIES and hosts[3].tls is None


def test_directory_lookup_order_and_no_configuration(tmp_path):
    assert load_hosts(tmp_path, "127.0.0.1:5000") is None
    write(tmp_path, "_default", '[host."http://fallback:1"]\n')
    assert host_dir(tmp_path, "127.0.0.1:5000") == tmp_path / "_default"
    write(tmp_path, "127.0.0.1:5000", '[host."http://colon:1"]\n')
    assert host_dir(tmp_path, "127.0.0.1:5000") == tmp_path / "127.0.0.1:5000"
    write(tmp_path, "127.0.0.1_5000_", '[host."http://underscore:1"]\n')
    hosts = load_hosts(tmp_path, "127.0.0.1:5000")
    assert [h.host for h in hosts] == ["underscore:1", ""]


def test_a_file_containerd_rejects_is_ignored_with_a_warning(tmp_path, caplog):
    write(tmp_path, "a.example", 'server = "https://elsewhere"\n')  # no [host] table
    write(tmp_path, "b.example", '[host."https://m"]\ncapabilities = ["fly"]\n')
    write(tmp_path, "c.example", 'this is = not toml [', files={"ca.crt": "x", "me.cert": "y",
                                                                 "me.key": "z"})
    with caplog.at_level(logging.WARNING):
        a = load_hosts(tmp_path, "a.example")
        b = load_hosts(tmp_path, "b.example")
        c = load_hosts(tmp_path, "c.example")
    assert a == b == [HostEntry()]
    d = tmp_path / "c.example"
    assert c == [HostEntry(tls=TlsConfig((str(d / "ca.crt"),),
                                         ((str(d / "me.cert"), str(d / "me.key")),)))]
    text = caplog.text
    assert "no [host] table" in text and "unknown capability fly" in text and "not TOML" in text


def test_hosts_root_option_then_environment_then_containerd_default(monkeypatch, tmp_path):
    monkeypatch.setenv("LAZYFS_HOSTS_DIR", str(tmp_path))
    assert str(hosts_root("/x")) == "/x"
    assert str(hosts_root()) == str(tmp_path)
    monkeypatch.delenv("LAZYFS_HOSTS_DIR")
    assert str(hosts_root()) == "/etc/containerd/certs.d"


def test_endpoints_put_registry_mirrors_first_for_docker_hub_only():
    hosts = [HostEntry("https", "hub-cache.local", capabilities=frozenset({"pull"})), HostEntry()]
    eps = registry_endpoints("docker.io", hosts, ("http://m:5000",), ())
    assert [(e.api_host, e.schemes, e.mirror) for e in eps] == [
        ("m:5000", ("http",), True), ("hub-cache.local", ("https",), True),
        ("registry-1.docker.io", ("https",), False)]
    assert registry_endpoints("quay.io", None, ("http://m:5000",), ())[0].api_host == "quay.io"
    local = registry_endpoints("127.0.0.1:5000", None, (), ())
    assert [(e.api_host, e.schemes, e.mirror) for e in local] == [
        ("127.0.0.1:5000", ("https", "http"), False)]


def test_a_failing_mirror_is_skipped_for_longer_each_time():
    now = [100.0]
    health = MirrorHealth(clock=lambda: now[0])
    health.failed("m", "connection refused")
    assert not health.usable("m") and health.usable("other")
    now[0] += 31
    assert health.usable("m")
    health.failed("m", "HTTP 503")
    now[0] += 31
    assert not health.usable("m")
    [state] = health.state()
    assert state["state"] == "skipped" and state["last_failure"] == "HTTP 503"
    now[0] += 30
    health.answered("m")
    assert health.state()[0]["failures"] == 0 and health.usable("m")


@pytest.mark.parametrize("no_proxy, host, port, proxied", [
    ("", "registry.example", 443, True),
    ("", "127.0.0.1", 5000, False),
    ("", "localhost", 5000, False),
    ("", "::1", 5000, False),
    ("*", "registry.example", 443, False),
    ("example", "registry.example", 443, False),
    ("ample", "registry.example", 443, True),
    ("registry.example", "registry.example", 443, False),
    ("example.com", "cdn.example.com", 443, False),
    (".example.com", "example.com", 443, True),
    (".example.com", "cdn.example.com", 443, False),
    ("*.example.com", "cdn.example.com", 443, False),
    ("10.0.0.0/8", "10.1.2.3", 443, False),
    ("10.0.0.0/8", "11.1.2.3", 443, True),
    ("10.1.2.3", "10.1.2.3", 443, False),
    ("registry.example:5000", "registry.example", 443, True),
    ("registry.example:443", "registry.example", 443, False),
    (" other , registry.example ", "registry.example", 443, False),
])
def test_no_proxy_is_read_as_go_reads_it(no_proxy, host, port, proxied):
    cfg = ProxyConfig(http="proxy:3128", https="http://proxy:3128", no_proxy=no_proxy)
    assert (cfg.proxy_for("https", host, port) is not None) is proxied


def test_proxy_variables_upper_case_first_and_by_scheme():
    cfg = ProxyConfig.from_env({"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:1",
                                "http_proxy": "plain:2", "NO_PROXY": ""})
    assert cfg.proxy_for("https", "r.example", 443) == "http://upper:1"
    assert cfg.proxy_for("http", "r.example", 80) == "http://plain:2"
    cgi = ProxyConfig.from_env({"HTTP_PROXY": "http://p:1", "REQUEST_METHOD": "GET"})
    assert cgi.proxy_for("http", "r.example", 80) is None
    assert ProxyConfig.from_env({}).proxy_for("https", "r.example", 443) is None


def test_hosts_dir_option_reaches_the_registry_options():
    from lazyfs.cli.main import build_parser
    from lazyfs.cli.options import registry_options
    for argv in (["--hosts-dir", "/srv/certs.d", "images"],
                 ["images", "--hosts-dir", "/srv/certs.d"]):
        args = build_parser().parse_args(argv)
        assert registry_options(args).hosts_dir == "/srv/certs.d"
    assert registry_options(build_parser().parse_args(["images"])).hosts_dir is None


def test_tls_context_takes_the_ca_and_client_pairs_and_skip_verify(tmp_path):
    import ssl
    import subprocess

    from lazyfs.errors import UsageError
    from lazyfs.registry.hosts import tls_context
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=t", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    ctx = tls_context(TlsConfig(ca=(str(cert),), client=((str(cert), str(key)),)))
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert any(c.get("subject") == ((("commonName", "t"),),) for c in ctx.get_ca_certs())
    loose = tls_context(TlsConfig(skip_verify=True))
    assert loose.verify_mode == ssl.CERT_NONE and not loose.check_hostname
    with pytest.raises(UsageError, match="cannot load certificate"):
        tls_context(TlsConfig(ca=(str(tmp_path / "missing.pem"),)))


async def test_a_socks_proxy_without_its_package_is_a_usage_error():
    try:
        import socksio  # noqa: F401
        pytest.skip("socksio is installed")
    except ImportError:
        pass
    from lazyfs.errors import UsageError
    from lazyfs.reference import parse_reference
    from lazyfs.registry import RegistryClient
    from lazyfs.registry.transport import RegistryOptions
    opts = RegistryOptions(proxies=ProxyConfig(https="socks5://127.0.0.1:1"), max_retries=0)
    async with RegistryClient(opts) as client:
        with pytest.raises(UsageError, match="socksio"):
            await client.get_manifest(parse_reference("registry.example/app:v1"))

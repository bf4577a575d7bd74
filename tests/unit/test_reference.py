from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lazyfs.errors import InvalidReference
from lazyfs.reference import Reference, is_digest, parse_digest, parse_reference

F64 = "f" * 64
SHA256 = "sha256:" + F64
SHA512 = "sha512:" + "f" * 128
HEX64 = "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a"
REDIS = "sha256:dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c"
BUSYBOX = "sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa"
HUB = "docker.io"

# Cases from distribution/reference: reference_test.go (TestReferenceParse),
# normalize_test.go (TestValidateReferenceName, TestValidateRemoteName,
# TestParseRepositoryInfo, TestParseAnyReference, TestNormalizedSplitHostname,
# TestParseReferenceWithTagAndDigest) and regexp_test.go (TestFullNameRegexp).
# reference_test.go checks the un-normalised Parse; the expectations below are
# what ParseNormalizedNamed makes of the same input (docker.io, library/).
# (input, registry, repository, tag, digest)
VALID = [
    # reference_test.go
    ("test_com", HUB, "library/test_com", None, None),
    ("test.com:tag", HUB, "library/test.com", "tag", None),
    ("test.com:5000", HUB, "library/test.com", "5000", None),
    ("test.com/repo:tag", "test.com", "repo", "tag", None),
    ("test:5000/repo", "test:5000", "repo", None, None),
    ("test:5000/repo:tag", "test:5000", "repo", "tag", None),
    (f"test:5000/repo@{SHA256}", "test:5000", "repo", None, SHA256),
    (f"test:5000/repo:tag@{SHA256}", "test:5000", "repo", "tag", SHA256),
    ("lowercase:Uppercase", HUB, "library/lowercase", "Uppercase", None),
    ("a/" * 127 + "a:tag-puts-this-over-max", HUB, "a/" * 127 + "a", "tag-puts-this-over-max", None),
    ("sub-dom1.foo.com/bar/baz/quux", "sub-dom1.foo.com", "bar/baz/quux", None, None),
    ("sub-dom1.foo.com/bar/baz/quux:some-long-tag", "sub-dom1.foo.com", "bar/baz/quux", "some-long-tag", None),
    ("b.gcr.io/test.example.com/my-app:test.example.com", "b.gcr.io", "test.example.com/my-app",
     "test.example.com", None),
    ("xn--n3h.com/myimage:xn--n3h.com", "xn--n3h.com", "myimage", "xn--n3h.com", None),
    (f"xn--7o8h.com/myimage:xn--7o8h.com@{SHA512}", "xn--7o8h.com", "myimage", "xn--7o8h.com", SHA512),
    ("foo_bar.com:8080", HUB, "library/foo_bar.com", "8080", None),
    ("foo/foo_bar.com:8080", HUB, "foo/foo_bar.com", "8080", None),
    ("192.168.1.1", HUB, "library/192.168.1.1", None, None),
    ("192.168.1.1:tag", HUB, "library/192.168.1.1", "tag", None),
    ("192.168.1.1:5000", HUB, "library/192.168.1.1", "5000", None),
    ("192.168.1.1/repo", "192.168.1.1", "repo", None, None),
    ("192.168.1.1:5000/repo", "192.168.1.1:5000", "repo", None, None),
    ("192.168.1.1:5000/repo:5050", "192.168.1.1:5000", "repo", "5050", None),
    ("[2001:db8::1]/repo", "[2001:db8::1]", "repo", None, None),
    ("[2001:db8:1:2:3:4:5:6]/repo:tag", "[2001:db8:1:2:3:4:5:6]", "repo", "tag", None),
    ("[2001:db8::1]:5000/repo", "[2001:db8::1]:5000", "repo", None, None),
    ("[2001:db8::1]:5000/repo:tag", "[2001:db8::1]:5000", "repo", "tag", None),
    (f"[2001:db8::1]:5000/repo@{SHA256}", "[2001:db8::1]:5000", "repo", None, SHA256),
    (f"[2001:db8::1]:5000/repo:tag@{SHA256}", "[2001:db8::1]:5000", "repo", "tag", SHA256),
    ("[2001:db8::]:5000/repo", "[2001:db8::]:5000", "repo", None, None),
    ("[::1]:5000/repo", "[::1]:5000", "repo", None, None),
    # reference_test.go expects ErrDigestUnsupported here (go-digest knows no such
    # algorithm); lazyfs accepts any algorithm the grammar allows and lets the
    # registry judge it.
    (f"validname@invaliddigest:{F64}", HUB, "library/validname", None, f"invaliddigest:{F64}"),
    # reference_test.go TestSerialization
    ("example.com:8000/named:tagged", "example.com:8000", "named", "tagged", None),
    # normalize_test.go TestValidateReferenceName
    ("docker/docker", HUB, "docker/docker", None, None),
    ("library/debian", HUB, "library/debian", None, None),
    ("debian", HUB, "library/debian", None, None),
    ("docker.io/docker/docker", HUB, "docker/docker", None, None),
    ("docker.io/library/debian", HUB, "library/debian", None, None),
    ("docker.io/debian", HUB, "library/debian", None, None),
    ("index.docker.io/docker/docker", HUB, "docker/docker", None, None),
    ("index.docker.io/library/debian", HUB, "library/debian", None, None),
    ("index.docker.io/debian", HUB, "library/debian", None, None),
    ("127.0.0.1:5000/docker/docker", "127.0.0.1:5000", "docker/docker", None, None),
    ("127.0.0.1:5000/library/debian", "127.0.0.1:5000", "library/debian", None, None),
    ("127.0.0.1:5000/debian", "127.0.0.1:5000", "debian", None, None),
    ("192.168.0.1", HUB, "library/192.168.0.1", None, None),
    ("192.168.0.1:80", HUB, "library/192.168.0.1", "80", None),
    ("192.168.0.1:8/debian", "192.168.0.1:8", "debian", None, None),
    ("192.168.0.2:25000/debian", "192.168.0.2:25000", "debian", None, None),
    ("thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev", HUB,
     "library/thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev", None, None),
    ("[fc00::1]:5000/docker", "[fc00::1]:5000", "docker", None, None),
    ("[fc00::1]:5000/docker/docker", "[fc00::1]:5000", "docker/docker", None, None),
    ("[fc00:1:2:3:4:5:6:7]:5000/library/debian", "[fc00:1:2:3:4:5:6:7]:5000", "library/debian", None, None),
    (f"docker.io/{HEX64}", HUB, f"library/{HEX64}", None, None),
    ("Docker/docker", "Docker", "docker", None, None),
    ("DOCKER/docker", "DOCKER", "docker", None, None),
    # normalize_test.go TestValidateRemoteName
    ("docker-rules/docker", HUB, "docker-rules/docker", None, None),
    ("docker---rules/docker", HUB, "docker---rules/docker", None, None),
    ("doc/docker", HUB, "doc/docker", None, None),
    ("d/docker", HUB, "d/docker", None, None),
    ("jess/t", HUB, "jess/t", None, None),
    ("dock__er/docker", HUB, "dock__er/docker", None, None),
    # normalize_test.go TestParseRepositoryInfo / TestNormalizedSplitHostname
    ("library/foo/bar", HUB, "library/foo/bar", None, None),
    ("store/foo/bar", HUB, "store/foo/bar", None, None),
    ("Foo/bar", "Foo", "bar", None, None),
    ("test-com:8080/foo", "test-com:8080", "foo", None, None),
    ("xn--n3h.com:18080/foo", "xn--n3h.com:18080", "foo", None, None),
    ("docker.io/library/foo/bar", HUB, "library/foo/bar", None, None),
    # normalize_test.go TestParseAnyReference / TestParseReferenceWithTagAndDigest
    (f"redis@{REDIS}", HUB, "library/redis", None, REDIS),
    (f"dmcgowan/myapp@{REDIS}", HUB, "dmcgowan/myapp", None, REDIS),
    ("dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9", HUB,
     "library/dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9", None, None),
    (f"busybox:latest@{BUSYBOX}", HUB, "library/busybox", "latest", BUSYBOX),
    # regexp_test.go TestFullNameRegexp / TestReferenceRegexp
    ("registry.io/foo/project--id.module--name.ver---sion--name", "registry.io",
     "foo/project--id.module--name.ver---sion--name", None, None),
    ("example.com/some_separator__underscore/myimage", "example.com", "some_separator__underscore/myimage", None, None),
    ("Asdf.com/foo/bar", "Asdf.com", "foo/bar", None, None),
    (f"localhost:8080@{SHA256}", HUB, "library/localhost", "8080", SHA256),
    (f"localhost:8080/name@{SHA256}", "localhost:8080", "name", None, SHA256),
    ("localhost/foo", "localhost", "foo", None, None),
    ("localhost", HUB, "library/localhost", None, None),
]

# (input, substring of the message)
INVALID = [
    # reference_test.go TestReferenceParse
    ("", "empty reference"),
    (":justtag", "invalid repository name"),
    (f"@{SHA256}", "invalid repository name"),
    ("repo@sha256:" + "f" * 34, 'invalid digest "sha256:' + "f" * 34),
    ("Uppercase:tag", "repository name must be lowercase"),
    ("test:5000/Uppercase/lowercase:tag", "repository name must be lowercase"),
    ("a/" * 128 + "a:tag", "name too long (257 > 255 characters)"),
    ("aa/asdf$$^/aa", "invalid repository name"),
    ("[2001:db8::1]", "invalid repository name"),
    ("[2001:db8::1]:5000", "invalid repository name"),
    ("[2001:db8::1]:tag", "invalid repository name"),
    ("[fe80::1%eth0]:5000/repo", 'invalid registry "[fe80::1%eth0]:5000"'),
    ("[fe80::1%@invalidzone]:5000/repo", "invalid registry"),
    # normalize_test.go TestValidateReferenceName
    ("https://github.com/docker/docker", "not a URL"),
    ("docker/Docker", "repository name must be lowercase"),
    ("-docker", "invalid repository name"),
    ("-docker/docker", "invalid repository name"),
    ("-docker.io/docker/docker", 'invalid registry "-docker.io"'),
    ("docker///docker", "invalid repository name"),
    ("docker.io/docker/Docker", "repository name must be lowercase"),
    ("docker.io/docker///docker", "invalid repository name"),
    ("[fc00::1]", "invalid repository name"),
    ("[fc00::1]:5000", "invalid repository name"),
    ("fc00::1:5000/debian", 'invalid registry "fc00::1:5000"'),
    ("[fe80::1%eth0]:5000/debian", "invalid registry"),
    ("[2001:db8:3:4::192.0.2.33]:5000/debian", "invalid registry"),
    (HEX64, "cannot specify 64-byte hexadecimal strings"),
    # normalize_test.go TestValidateRemoteName
    ("docker-/docker", "invalid repository name"),
    ("-docker-/docker", "invalid repository name"),
    ("____/____", "invalid repository name"),
    ("_docker/_docker", "invalid repository name"),
    ("dock..er/docker", 'invalid registry "dock..er"'),  # a dot makes it a registry
    ("dock_.er/docker", 'invalid registry "dock_.er"'),  # a dot makes it a registry
    ("dock-.er/docker", 'invalid registry "dock-.er"'),  # a dot makes it a registry
    ("docker/", "invalid repository name"),
    ("_".join(["this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255"] * 4) + "/docker",
     "name too long (278 > 255 characters)"),
    # regexp_test.go TestFullNameRegexp / TestReferenceRegexp / TestDomainRegexp
    ("a/a/a/a/", "invalid repository name"),
    ("foo.com/", "invalid repository name"),
    ("foo.com:http/bar", 'invalid registry "foo.com:http"'),
    ("foo.com/a-/a/a", "invalid repository name"),
    ("foo/-bar", "invalid repository name"),
    ("foo/bar-", "invalid repository name"),
    ("example.com/__underscore/myimage", "invalid repository name"),
    ("example.com/.dots/myimage", "invalid repository name"),
    ("docker./docker", 'invalid registry "docker."'),
    ("do__cker:8080/docker", 'invalid registry "do__cker:8080"'),
    ("Foo/FarB", "repository name must be lowercase"),
    ("registry.com:8080/myapp@sha256:badbadbadbad", 'invalid digest "sha256:badbadbadbad"'),
    ("registry.com:8080/myapp:invalid~tag", 'invalid tag "invalid~tag"'),
    ("bad_hostname.com:8080/myapp:tag", 'invalid registry "bad_hostname.com:8080"'),
    ("localhost:http/name@" + SHA256, 'invalid registry "localhost:http"'),
    ("registry.com:8080/myapp@bad", 'invalid digest "bad"'),
    ("registry.com:8080/myapp@2bad", 'invalid digest "2bad"'),
    ("ab-.com/x", 'invalid registry "ab-.com"'),
    ("[fd00:1:2::3]75050/x", "invalid registry"),
    # normalize_test.go TestInvalidReferenceComponents
    ("-foo", "invalid repository name"),
    # lazyfs-specific
    ("foo:", 'invalid tag ""'),
    ("foo:" + "t" * 129, "invalid tag"),
    ("foo@", 'invalid digest ""'),
    ("foo@sha256:" + F64.upper(), "sha256 needs 64 lower-case hex digits"),
    ("foo@sha256:" + F64 + "ff", "sha256 needs 64 lower-case hex digits"),
    ("foo@sha512:" + F64, "sha512 needs 128 lower-case hex digits"),
    ("foo@" + SHA256 + "@" + SHA256, "invalid digest"),
    ("foo:bar/baz", 'invalid registry "foo:bar"'),
    ("foo_bar.com/app", 'invalid registry "foo_bar.com"'),
    ("debian" + "n" * 250, "name too long (264 > 255 characters)"),
    ("docker://", "empty reference"),
]


def _identifier(tag, digest):
    return digest or tag or "latest"


@pytest.mark.parametrize(("text", "registry", "repository", "tag", "digest"), VALID)
def test_valid_reference_has_every_attribute(text, registry, repository, tag, digest):
    ref = parse_reference(text)
    assert (ref.transport, ref.registry, ref.repository, ref.tag, ref.digest, ref.path) == (
        "docker", registry, repository, tag, digest, None)
    assert ref.name == f"{registry}/{repository}"
    assert ref.identifier == _identifier(tag, digest)
    assert not ref.is_local


@pytest.mark.parametrize(("text", "message"), INVALID)
def test_invalid_reference_names_what_is_wrong(text, message):
    with pytest.raises(InvalidReference) as info:
        parse_reference(text)
    assert message in str(info.value)


def test_tables_are_big_enough():
    assert len(VALID) + len(INVALID) >= 60


# (input, canonical form, familiar form); from normalize_test.go TestParseRepositoryInfo
# and TestParseAnyReference, plus the forms the lazyfs CLI documents.
NORMALISED = [
    ("ubuntu", "docker.io/library/ubuntu:latest", "ubuntu:latest"),
    ("ubuntu:22.04", "docker.io/library/ubuntu:22.04", "ubuntu:22.04"),
    ("index.docker.io/foo", "docker.io/library/foo:latest", "foo:latest"),
    ("docker.io/foo", "docker.io/library/foo:latest", "foo:latest"),
    ("index.docker.io/fooo/bar", "docker.io/fooo/bar:latest", "fooo/bar:latest"),
    ("user/app:1", "docker.io/user/app:1", "user/app:1"),
    ("nonlibrary/ubuntu", "docker.io/nonlibrary/ubuntu:latest", "nonlibrary/ubuntu:latest"),
    ("other/library", "docker.io/other/library:latest", "other/library:latest"),
    ("library/ubuntu-12.04-base", "docker.io/library/ubuntu-12.04-base:latest", "ubuntu-12.04-base:latest"),
    ("library/foo/bar", "docker.io/library/foo/bar:latest", "library/foo/bar:latest"),
    ("localhost/foo", "localhost/foo:latest", "localhost/foo:latest"),
    ("localhost:5000/x:y", "localhost:5000/x:y", "localhost:5000/x:y"),
    ("Foo.com/bar", "Foo.com/bar:latest", "Foo.com/bar:latest"),
    ("FOO/bar", "FOO/bar:latest", "FOO/bar:latest"),
    ("127.0.0.1:8000/private/moonbase", "127.0.0.1:8000/private/moonbase:latest",
     "127.0.0.1:8000/private/moonbase:latest"),
    ("example.com/privatebase", "example.com/privatebase:latest", "example.com/privatebase:latest"),
    ("[::1]:5000/a/b:c", "[::1]:5000/a/b:c", "[::1]:5000/a/b:c"),
    (f"127.0.0.1:5000/x@{SHA256}", f"127.0.0.1:5000/x@{SHA256}", f"127.0.0.1:5000/x@{SHA256}"),
    (f"busybox:latest@{BUSYBOX}", f"docker.io/library/busybox:latest@{BUSYBOX}", f"busybox:latest@{BUSYBOX}"),
    (f"redis@{REDIS}", f"docker.io/library/redis@{REDIS}", f"redis@{REDIS}"),
    ("docker://ubuntu", "docker.io/library/ubuntu:latest", "ubuntu:latest"),
    ("docker://quay.io/a/b:c", "quay.io/a/b:c", "quay.io/a/b:c"),
    ("docker.io/library/oci:1", "docker.io/library/oci:1", "docker.io/library/oci:1"),
    ("docker-archive/x:1", "docker.io/docker-archive/x:1", "docker-archive/x:1"),
    (f"oci@{SHA256}", f"docker.io/library/oci@{SHA256}", f"oci@{SHA256}"),
]


@pytest.mark.parametrize(("text", "canonical", "familiar"), NORMALISED)
def test_normalisation(text, canonical, familiar):
    ref = parse_reference(text)
    assert str(ref) == canonical
    assert ref.familiar == familiar
    assert str(parse_reference(familiar)) == canonical


def test_identifier_is_what_the_manifest_endpoint_is_asked_for():
    assert parse_reference("ubuntu").identifier == "latest"
    assert parse_reference("ubuntu:22.04").identifier == "22.04"
    assert parse_reference(f"ubuntu:22.04@{SHA256}").identifier == SHA256
    assert parse_reference(f"ubuntu@{SHA256}").tag is None


def test_with_tag_and_with_digest_keep_the_other_part():
    ref = parse_reference("test.com:8000/foo")
    tagged = ref.with_tag("TAG5")
    assert str(tagged) == "test.com:8000/foo:TAG5"
    both = tagged.with_digest(SHA512)
    assert str(both) == f"test.com:8000/foo:TAG5@{SHA512}"
    assert both.with_tag("v2") == Reference(registry="test.com:8000", repository="foo", tag="v2", digest=SHA512)
    assert str(ref.with_digest(SHA256)) == f"test.com:8000/foo@{SHA256}"
    assert ref.tag is None and ref.digest is None


@pytest.mark.parametrize("bad", ["-foo", "", "a" * 129, "has space", "x:y"])
def test_with_tag_refuses_bad_tags(bad):
    with pytest.raises(InvalidReference, match="invalid tag"):
        parse_reference("busybox").with_tag(bad)


@pytest.mark.parametrize("bad", ["foo", "sha256:abc", "sha256:" + F64.upper(), ""])
def test_with_digest_refuses_bad_digests(bad):
    with pytest.raises(InvalidReference, match="invalid digest"):
        parse_reference("busybox").with_digest(bad)


def test_reference_is_frozen_and_hashable():
    ref = parse_reference("ubuntu")
    with pytest.raises(AttributeError):
        ref.tag = "x"
    assert len({ref, parse_reference("docker.io/library/ubuntu"), parse_reference("ubuntu:latest")}) == 2


# -- digests -----------------------------------------------------------------

@pytest.mark.parametrize("good", [
    SHA256, SHA512, "sha384:" + "a" * 96, REDIS,
    "multihash+base58:" + "a" * 32, "sha256+b64u:" + "F" * 40, "md5.x:" + "0" * 32,
])
def test_parse_digest_accepts(good):
    assert parse_digest(good) == good
    assert is_digest(good)


@pytest.mark.parametrize("bad", [
    "", "sha256", "sha256:", F64, "sha256:" + "f" * 63, "sha256:" + "f" * 65, "sha256:" + F64.upper(),
    "sha512:" + F64, "sha384:" + F64, "sha256:" + "g" * 64, "1sha:" + F64, "sha--256:" + F64,
    "foo:" + "f" * 31, " " + SHA256, SHA256 + "\n", None, 42,
])
def test_parse_digest_refuses(bad):
    with pytest.raises(InvalidReference, match="invalid digest"):
        parse_digest(bad)
    assert not is_digest(bad)


# -- local transports -------------------------------------------------------

@pytest.mark.parametrize(("text", "path", "tag"), [
    ("oci:/srv/layout", "/srv/layout", None),
    ("oci:/srv/layout:v1", "/srv/layout", "v1"),
    ("oci:relative/dir:1.0-rc_2", "relative/dir", "1.0-rc_2"),
    ("oci:/with:colons/in:path:v2", "/with:colons/in:path", "v2"),
    ("oci:layout", "layout", None),
])
def test_oci_layout(text, path, tag):
    ref = parse_reference(text)
    assert (ref.transport, ref.registry, ref.repository, ref.path, ref.tag, ref.digest) == (
        "oci", "", "", path, tag, None)
    assert ref.is_local
    assert str(ref) == text
    assert ref.familiar == text
    assert ref.identifier == (tag or "latest")
    assert parse_reference(str(ref)) == ref


@pytest.mark.parametrize(("text", "path"), [
    ("docker-archive:/tmp/image.tar", "/tmp/image.tar"),
    ("docker-archive:saved.tar", "saved.tar"),
    ("docker-archive:/tmp/a:b.tar", "/tmp/a:b.tar"),
])
def test_docker_archive(text, path):
    ref = parse_reference(text)
    assert (ref.transport, ref.registry, ref.repository, ref.path, ref.tag, ref.digest) == (
        "docker-archive", "", "", path, None, None)
    assert str(ref) == text
    assert parse_reference(str(ref)) == ref


@pytest.mark.parametrize(("text", "message"), [
    ("oci:", "needs a layout directory path"),
    ("oci::v1", "needs a layout directory path"),
    ("oci:/srv/layout:", 'invalid tag ""'),
    ("oci:/with:colons/no/tag", "a path containing ':' needs a tag after it"),
    ("oci:/srv/layout:bad~tag", 'invalid tag "bad~tag"'),
    ("docker-archive:", "needs a tarball path"),
])
def test_local_transport_errors(text, message):
    with pytest.raises(InvalidReference) as info:
        parse_reference(text)
    assert message in str(info.value)


def test_local_transports_keep_their_own_shape():
    oci = parse_reference("oci:/srv/layout")
    assert str(oci.with_tag("v3")) == "oci:/srv/layout:v3"
    with pytest.raises(InvalidReference, match="cannot carry a digest"):
        oci.with_digest(SHA256)
    with pytest.raises(InvalidReference, match="cannot carry a tag"):
        parse_reference("docker-archive:/x.tar").with_tag("v1")


# -- messages ------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "alice:s3cret@registry.example.com/app:1",
    "https://alice:s3cret@registry.example.com/app:1",
    "alice:s3cret@[::1]:5000/app",
])
def test_messages_never_echo_credentials(text):
    with pytest.raises(InvalidReference) as info:
        parse_reference(text)
    assert "s3cret" not in str(info.value)
    assert "registry" in str(info.value)


def test_messages_are_one_bounded_line():
    with pytest.raises(InvalidReference) as info:
        parse_reference("bad\nname/" + "x" * 5000 + "$")
    message = str(info.value)
    assert "\n" not in message and len(message) < 700


# -- properties ----------------------------------------------------------------

_component = st.from_regex(r"[a-z0-9]{1,6}(?:(?:[._]|__|-{1,3})[a-z0-9]{1,6}){0,2}", fullmatch=True)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_hex = st.binary(min_size=32, max_size=32).map(bytes.hex)
_digest = st.one_of(
    _hex.map(lambda h: f"sha256:{h}"),
    st.binary(min_size=64, max_size=64).map(lambda b: f"sha512:{b.hex()}"),
    st.from_regex(r"[a-z][a-z0-9]{0,4}(?:[+.][a-z][a-z0-9]{0,3})?:[0-9a-fA-F]{32,40}", fullmatch=True),
)
_registry = st.one_of(
    st.sampled_from(["localhost", "localhost:5000", "127.0.0.1:5000", "[::1]:5000", "[fd00:1:2::3]",
                     "Foo.com", "quay.io", "registry.example.com:443"]),
    st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,4}[a-z0-9])?\.[a-z]{2,5}(?::[0-9]{1,5})?", fullmatch=True),
)


@settings(max_examples=150, deadline=None)
@given(_registry, st.lists(_component, min_size=1, max_size=4), st.none() | _tag, st.none() | _digest)
def test_property_explicit_registry_round_trips(registry, components, tag, digest):
    repository = "/".join(components)
    text = f"{registry}/{repository}" + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    ref = parse_reference(text)
    assert ref == Reference(registry=registry, repository=repository, tag=tag, digest=digest)
    assert parse_reference(str(ref)) == (ref if tag or digest else ref.with_tag("latest"))
    assert parse_reference(ref.familiar) == parse_reference(str(ref))


@settings(max_examples=150, deadline=None)
@given(st.lists(_component, min_size=1, max_size=3), st.none() | _tag, st.none() | _digest)
def test_property_hub_names_round_trip(components, tag, digest):
    text = "/".join(components) + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    assume(not text.startswith(("oci:", "docker-archive:")))
    try:
        ref = parse_reference(text)
    except InvalidReference as e:
        # a first component with a dot is a registry, and those need the stricter DNS shape
        assume("." in components[0] and len(components) > 1 and "invalid registry" in str(e))
        return
    assert ref.registry in (components[0], "docker.io")
    canonical = parse_reference(str(ref))
    assert canonical == (ref if tag or digest else ref.with_tag("latest"))
    assert str(canonical) == str(ref)
    assert parse_reference(ref.familiar) == canonical


_alphabet = st.sampled_from(list("abcAZ09:/@._-[]%+~ \n\u00e9") + ["sha256:", F64, "docker.io", "oci:", "//"])


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(), st.lists(_alphabet, max_size=12).map("".join)))
def test_property_arbitrary_text_only_ever_raises_invalid_reference(text):
    try:
        ref = parse_reference(text)
    except InvalidReference as e:
        assert str(e) and "\n" not in str(e)
        return
    again = parse_reference(str(ref))
    assert str(again) == str(ref)
    assert again == (ref if ref.tag or ref.digest or ref.is_local else ref.with_tag("latest"))

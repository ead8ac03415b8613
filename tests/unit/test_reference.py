"""The image reference grammar: normalization as containerd does it, and the shim's extras."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from image_cri_shim.reference import Reference, ReferenceError, is_image_id, parse

D64 = "sha256:" + "0123456789abcdef" * 4
D512 = "sha512:" + "f" * 128
D384 = "sha384:" + "a" * 96

VALID = [
    # Docker Hub short names and namespaces.
    ("nginx", "docker.io/library/nginx:latest"),
    ("nginx:1.27", "docker.io/library/nginx:1.27"),
    ("nginx:Latest_1.x-rc", "docker.io/library/nginx:Latest_1.x-rc"),
    ("library/nginx", "docker.io/library/nginx:latest"),
    ("user/app", "docker.io/user/app:latest"),
    ("user/app:v1", "docker.io/user/app:v1"),
    ("library/foo/bar", "docker.io/library/foo/bar:latest"),
    ("store/foo/bar", "docker.io/store/foo/bar:latest"),
    ("docker.io/nginx", "docker.io/library/nginx:latest"),
    ("docker.io/library/nginx", "docker.io/library/nginx:latest"),
    ("docker.io/user/app:v1", "docker.io/user/app:v1"),
    ("index.docker.io/nginx", "docker.io/library/nginx:latest"),
    ("index.docker.io/library/nginx:1", "docker.io/library/nginx:1"),
    ("index.docker.io/user/app", "docker.io/user/app:latest"),
    # A component without "." or ":" is a namespace, not a host.
    ("test_com/foo", "docker.io/test_com/foo:latest"),
    ("registry/app", "docker.io/registry/app:latest"),
    # Separators: one period, one or two underscores, any number of dashes.
    ("dock__er/docker", "docker.io/dock__er/docker:latest"),
    ("docker---rules/docker", "docker.io/docker---rules/docker:latest"),
    ("ab_c-d/e.f__g---h", "docker.io/ab_c-d/e.f__g---h:latest"),
    ("d/t", "docker.io/d/t:latest"),
    # Hex names: 63 hex is a name; 64 hex is one only when qualified.
    ("dbcc1", "docker.io/library/dbcc1:latest"),
    ("a" * 63, "docker.io/library/" + "a" * 63 + ":latest"),
    ("docker.io/" + "b" * 64, "docker.io/library/" + "b" * 64 + ":latest"),
    # Without a "/" a host-looking name is a Docker Hub image and ":5000" its tag.
    ("localhost", "docker.io/library/localhost:latest"),
    ("localhost:5000", "docker.io/library/localhost:5000"),
    ("192.168.0.1", "docker.io/library/192.168.0.1:latest"),
    ("192.168.0.1:80", "docker.io/library/192.168.0.1:80"),
    # localhost and hosts with dots or ports.
    ("localhost/app", "localhost/app:latest"),
    ("localhost:5000/app", "localhost:5000/app:latest"),
    ("localhost:5000/team/app:v2", "localhost:5000/team/app:v2"),
    ("registry.company.com/team/app", "registry.company.com/team/app:latest"),
    ("registry.company.com:5000/team/app:1.0", "registry.company.com:5000/team/app:1.0"),
    ("test:5000/repo", "test:5000/repo:latest"),
    ("test-com:8080/foo", "test-com:8080/foo:latest"),
    ("xn--n3h.com/myimage:xn--n3h.com", "xn--n3h.com/myimage:xn--n3h.com"),
    ("b.gcr.io/test.example.com/my-app:test.com", "b.gcr.io/test.example.com/my-app:test.com"),
    ("sub-dom1.foo.com/bar/baz/quux", "sub-dom1.foo.com/bar/baz/quux:latest"),
    ("quay.io/cilium/cilium:v1.15.0", "quay.io/cilium/cilium:v1.15.0"),
    ("registry.k8s.io/ingress-nginx/controller:v1.10.0", "registry.k8s.io/ingress-nginx/controller:v1.10.0"),
    ("ghcr.io/a/b/c/d/e/f:1", "ghcr.io/a/b/c/d/e/f:1"),
    # Other registries keep a one-component path as it is.
    ("example.com/privatebase", "example.com/privatebase:latest"),
    # IPv4 and IPv6 hosts.
    ("127.0.0.1:5000/debian", "127.0.0.1:5000/debian:latest"),
    ("192.168.1.1/repo", "192.168.1.1/repo:latest"),
    ("192.168.1.1:5000/repo:5050", "192.168.1.1:5000/repo:5050"),
    ("[::1]:5000/repo", "[::1]:5000/repo:latest"),
    ("[2001:db8::1]/repo", "[2001:db8::1]/repo:latest"),
    ("[2001:db8::]:5000/repo", "[2001:db8::]:5000/repo:latest"),
    ("[fc00:1:2:3:4:5:6:7]:5000/library/debian", "[fc00:1:2:3:4:5:6:7]:5000/library/debian:latest"),
    ("[2001:DB8::1]:5000/repo:tag", "[2001:DB8::1]:5000/repo:tag"),
    # Upper case in a host is fine where '.' or ':' makes it one.
    ("Localhost:5000/app", "Localhost:5000/app:latest"),
    ("Registry.Example.com/app", "Registry.Example.com/app:latest"),
    # Digests: no tag is added; a tag beside a digest is kept.
    ("nginx@" + D64, "docker.io/library/nginx@" + D64),
    ("nginx:1.27@" + D64, "docker.io/library/nginx:1.27@" + D64),
    ("busybox:latest@" + D64, "docker.io/library/busybox:latest@" + D64),
    ("test:5000/repo@" + D64, "test:5000/repo@" + D64),
    ("[2001:db8::1]:5000/repo:tag@" + D64, "[2001:db8::1]:5000/repo:tag@" + D64),
    ("xn--7o8h.com/myimage:xn--7o8h.com@" + D512, "xn--7o8h.com/myimage:xn--7o8h.com@" + D512),
    ("quay.io/x/y@" + D384, "quay.io/x/y@" + D384),
    # Limits: a 128-character tag; a name of exactly 255 characters.
    ("nginx:" + "t" * 128, "docker.io/library/nginx:" + "t" * 128),
    ("a.io/" + "b" * 250, "a.io/" + "b" * 250 + ":latest"),
    ("index.docker.io/u/" + "b" * 243, "docker.io/u/" + "b" * 243 + ":latest"),
]

INVALID = [
    "",
    " ",
    "nginx ",
    " nginx",
    "ngi nx",
    "nginx\n",
    "nginx:\n",
    "nginx:",
    "nginx@",
    ":tag",
    ":justtag",
    "@" + D64,
    "/nginx",
    "nginx/",
    "docker/",
    "docker///docker",
    "docker.io/docker///docker",
    "a//b",
    # Upper case in the repository path.
    "Nginx",
    "Uppercase:tag",
    "docker/Docker",
    "docker.io/docker/Docker",
    "test:5000/Uppercase/lowercase:tag",
    "localhost:5000/App",
    # A first component with upper case but no '.' or ':' is a Docker Hub path, not a host (Go's
    # parser reads the host "Foo" there).
    "Foo/bar",
    "FOO/bar:v1",
    "Localhost/app",
    # Malformed components.
    "-docker",
    "-docker/docker",
    "docker-/docker",
    "-docker.io/docker/docker",
    "____/____",
    "_docker/_docker",
    "dock..er/docker",
    "dock_.er/docker",
    "dock-.er/docker",
    "dock___er/docker",
    "aa/asdf$$^/aa",
    "https://github.com/docker/docker",
    # A first component with "." that is no host name: Go reads it as a path with no registry.
    "a_b.io/repo",
    "a.b_c-d/e",
    "host:port/repo",
    "fc00::1:5000/debian",
    # IPv6 without a path, with a zone, or IPv4-mapped.
    "[fc00::1]",
    "[fc00::1]:5000",
    "[2001:db8::1]:tag",
    "[fe80::1%eth0]:5000/debian",
    "[fe80::1%@invalidzone]:5000/repo",
    "[2001:db8:3:4::192.0.2.33]:5000/debian",
    # Tags.
    "nginx:-tag",
    "nginx:.tag",
    "nginx:a:b",
    "nginx:" + "t" * 129,
    "nginx:tag/x",
    # Digests.
    "nginx@sha256:" + "f" * 63,
    "nginx@sha256:" + "f" * 65,
    "nginx@sha256:" + "f" * 34,
    "nginx@sha256:" + "F" * 64,
    "nginx@sha256:" + "g" * 64,
    "nginx@sha256",
    "nginx@sha1:" + "f" * 40,
    "validname@invaliddigest:" + "f" * 64,
    "nginx@SHA256:" + "f" * 64,
    "nginx@sha512:" + "f" * 64,
    "nginx@" + D64 + ":tag",
    "nginx@" + D64 + "@" + D64,
    # Length: the normalized name counts, including "docker.io/library/".
    "a.io/" + "b" * 251,
    "a/" * 128 + "a:tag",
    "b" * 238,
    "x" * 100_000,
    # Image IDs are not references.
    "0123456789abcdef" * 4,
    "sha256:" + "0123456789abcdef" * 4,
]


@pytest.mark.parametrize(("text", "normalized"), VALID)
def test_valid_references_normalize(text: str, normalized: str) -> None:
    ref = parse(text)
    assert str(ref) == normalized
    assert parse(normalized) == ref


@pytest.mark.parametrize("text", INVALID)
def test_invalid_references_raise(text: str) -> None:
    with pytest.raises(ReferenceError) as info:
        parse(text)
    assert str(info.value)
    assert isinstance(info.value, ValueError)


def test_fields() -> None:
    ref = parse("registry.company.com:5000/team/app:1.0@" + D64)
    assert ref == Reference("registry.company.com:5000", "team/app", "1.0", D64)
    assert ref.name == "registry.company.com:5000/team/app"

    ref = parse("nginx")
    assert (ref.domain, ref.path, ref.tag, ref.digest) == ("docker.io", "library/nginx", "latest", None)

    ref = parse("nginx@" + D64)
    assert (ref.tag, ref.digest) == (None, D64)


def test_domain_split_rule() -> None:
    with pytest.raises(ReferenceError, match="lowercase"):
        parse("Foo/bar")  # a Docker Hub path with upper case, not the host "Foo"
    assert parse("foo/bar").domain == "docker.io"
    assert parse("localhost/bar").domain == "localhost"
    assert parse("host:1/bar").domain == "host:1"
    assert parse("a.b/bar").domain == "a.b"
    assert parse("[::1]/bar").domain == "[::1]"


def test_error_messages_say_why() -> None:
    cases = {
        "": "empty",
        "Nginx": "lowercase",
        "nginx:-x": "tag",
        "nginx@sha1:" + "f" * 40: "unsupported digest",
        "nginx@sha256:" + "f" * 40: "digest length",
        "a.io/" + "b" * 251: "too long",
        "sha256:" + "a" * 64: "image ID",
        "https://x/y": "domain",
        "a b": "invalid",
    }
    for text, words in cases.items():
        with pytest.raises(ReferenceError, match=words):
            parse(text)


def test_reference_is_immutable_and_hashable() -> None:
    ref = parse("nginx")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.tag = "x"  # type: ignore[misc]
    assert {ref: 1}[parse("docker.io/library/nginx:latest")] == 1


def test_parse_is_cached() -> None:
    assert parse("quay.io/cached/one:1") is parse("quay.io/cached/one:1")


def test_with_domain() -> None:
    ref = parse("nginx:1.27@" + D64)
    moved = ref.with_domain("harbor.company.com")
    assert moved == Reference("harbor.company.com", "library/nginx", "1.27", D64)
    assert str(moved) == "harbor.company.com/library/nginx:1.27@" + D64
    assert ref.with_domain("registry.local:5000").name == "registry.local:5000/library/nginx"
    assert ref.with_domain("[::1]:5000").name == "[::1]:5000/library/nginx"
    assert ref.with_domain("localhost").name == "localhost/library/nginx"
    assert str(parse("user/app:v1").with_domain("10.0.0.1:5000")) == "10.0.0.1:5000/user/app:v1"
    # The result means the same image to the runtime: it normalizes as parse does.
    assert parse("quay.io/app").with_domain("docker.io") == parse("docker.io/library/app")
    assert parse("quay.io/a/b").with_domain("index.docker.io") == parse("docker.io/a/b")
    assert parse(str(moved)) == moved


@pytest.mark.parametrize(
    "domain", ["", "registry", "https://harbor.io", "harbor.io/x", "a_b.io", "-a.io", "a.io:port", "a b.io"]
)
def test_with_domain_refuses_what_is_not_a_domain(domain: str) -> None:
    with pytest.raises(ReferenceError):
        parse("nginx").with_domain(domain)


def test_with_domain_keeps_the_length_limit() -> None:
    ref = parse("a.io/" + "b" * 250)
    with pytest.raises(ReferenceError, match="too long"):
        ref.with_domain("ab.io")


def test_manifest_ref_and_digest_form() -> None:
    assert parse("nginx").manifest_ref == "latest"
    assert parse("nginx:1.27").manifest_ref == "1.27"
    assert parse("nginx@" + D64).manifest_ref == D64
    assert parse("nginx:1.27@" + D64).manifest_ref == D64
    assert parse("nginx:1.27").digest_form(D64) == "docker.io/library/nginx@" + D64
    assert parse("h.io:5000/a/b:1@" + D512).digest_form(D64) == "h.io:5000/a/b@" + D64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sha256:" + "0123456789abcdef" * 4, True),
        ("0123456789abcdef" * 4, True),
        ("sha256:" + "a" * 63, False),
        ("sha256:" + "a" * 65, False),
        ("a" * 63, False),
        ("a" * 65, False),
        ("sha256:" + "A" * 64, False),
        ("A" * 64, False),
        ("sha256:" + "g" * 64, False),
        ("0123456789ab", False),
        ("sha256:0123456789ab", False),
        ("sha512:" + "a" * 128, False),
        ("sha256:" + "a" * 64 + "\n", False),
        ("a" * 64 + "\n", False),
        ("nginx", False),
        ("nginx@sha256:" + "a" * 64, False),
        ("", False),
    ],
)
def test_is_image_id(text: str, expected: bool) -> None:
    assert is_image_id(text) is expected


def test_short_hex_prefix_is_a_name() -> None:
    assert str(parse("0123456789ab")) == "docker.io/library/0123456789ab:latest"


# --- properties -------------------------------------------------------------------------------------

_component = st.from_regex(r"[a-z0-9]{1,6}(?:(?:[._]|__|-{1,3})[a-z0-9]{1,6}){0,2}", fullmatch=True)
_path = st.lists(_component, min_size=1, max_size=4).map("/".join)
_host_label = st.from_regex(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,6}[a-zA-Z0-9])?", fullmatch=True)
_port = st.integers(min_value=0, max_value=65535).map(lambda p: f":{p}")
_dotted = st.lists(_host_label, min_size=2, max_size=4).map(".".join)
_ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{a.compressed}]").filter(lambda s: "." not in s)
_domain = st.one_of(
    st.just("localhost"),
    st.just("docker.io"),
    st.just("index.docker.io"),
    _dotted,
    st.tuples(_host_label, _port).map("".join),
    st.tuples(st.one_of(_dotted, st.just("localhost"), _ipv6), st.one_of(st.just(""), _port)).map("".join),
)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", fullmatch=True)
_digest = st.one_of(
    st.from_regex(r"sha256:[a-f0-9]{64}", fullmatch=True),
    st.from_regex(r"sha512:[a-f0-9]{128}", fullmatch=True),
)


@st.composite
def _references(draw: st.DrawFn) -> tuple[str, str | None, str | None]:
    domain = draw(st.one_of(st.none(), _domain))
    # Without a domain, a first component with a "." would itself be read as a (bad) domain.
    path = draw(_path if domain is not None else _path.filter(lambda p: "." not in p.split("/")[0]))
    tag = draw(st.one_of(st.none(), _tag))
    digest = draw(st.one_of(st.none(), _digest))
    text = path if domain is None else f"{domain}/{path}"
    if tag is not None:
        text += f":{tag}"
    if digest is not None:
        text += f"@{digest}"
    return text, tag, digest


@given(_references())
def test_normalization_is_idempotent_and_keeps_tag_and_digest(
    case: tuple[str, str | None, str | None],
) -> None:
    text, tag, digest = case
    assume(not is_image_id(text))
    try:
        ref = parse(text)
    except ReferenceError as err:
        assert "too long" in str(err)
        return
    assert parse(str(ref)) == ref
    assert str(parse(str(ref))) == str(ref)
    assert ref.digest == digest
    if tag is not None:
        assert ref.tag == tag
    else:
        assert ref.tag == ("latest" if digest is None else None)
    assert ref.name.endswith("/" + text.split("/")[-1].split(":")[0].split("@")[0])
    assert ref.manifest_ref == (digest or tag or "latest")


@given(_references(), _domain)
def test_with_domain_round_trips(case: tuple[str, str | None, str | None], domain: str) -> None:
    text = case[0]
    assume(not is_image_id(text))
    try:
        moved = parse(text).with_domain(domain)
    except ReferenceError as err:
        assert "too long" in str(err)
        return
    assert parse(str(moved)) == moved
    assert (moved.tag, moved.digest) == (parse(text).tag, parse(text).digest)


@given(st.text())
def test_arbitrary_text_raises_only_reference_error(text: str) -> None:
    try:
        ref = parse(text)
    except ReferenceError:
        return
    assert parse(str(ref)) == ref


@given(st.text(alphabet="abAZ09._-/:@[]%", max_size=40))
def test_grammar_alphabet_raises_only_reference_error(text: str) -> None:
    try:
        ref = parse(text)
    except ReferenceError:
        return
    assert parse(str(ref)) == ref
    assert not is_image_id(text)


@given(st.text())
def test_is_image_id_never_raises(text: str) -> None:
    assert is_image_id(text) in (True, False)

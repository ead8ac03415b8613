"""The registry client's pure parts: backoff and health on a clock, challenge parsing and the
token cache, Retry-After, the TLS settings' one-line errors, index and status classification.
No sockets; the client against real HTTP servers: integration/test_registry*.py."""

from __future__ import annotations

import email.utils
import time

import pytest

from image_cri_shim import config, logs
from image_cri_shim.workers.lookup import transport as wire
from image_cri_shim.workers.lookup.auth import (
    Auth,
    RealmRefused,
    TokenRequest,
    Tokens,
    parse_challenge,
    read_token,
    realm_refusal,
)
from image_cri_shim.workers.lookup.client import Platform, classify, listed
from image_cri_shim.workers.lookup.decisions import Answer, Probe
from image_cri_shim.workers.lookup.health import BACKOFF_MAX, Health, backoff
from tests.harness.clock import Clock


def registry(address: str, extra: str = "") -> config.Registry:
    return config.parse(f"address: {address}\n{extra}", "t.yaml").registries[0]


# -- health ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "seconds"), [(1, 5.0), (2, 10.0), (3, 20.0), (4, 40.0), (5, 60.0), (9, 60.0), (5000, 60.0)]
)
def test_backoff_doubles_up_to_its_cap(failures: int, seconds: float) -> None:
    assert backoff(failures) == seconds <= BACKOFF_MAX


def test_failures_within_one_period_count_once() -> None:
    clock = Clock()
    health = Health(clock)
    assert health.available() and health.retry_in() == 0
    assert health.failed() == (5.0, True)
    clock.now += 2
    assert health.failed() == (3.0, False), "a concurrent probe's failure is no news"
    assert not health.available() and health.retry_in() == 3.0
    clock.now += 3
    assert health.available()
    assert health.failed() == (10.0, True), "the next period is twice as long"
    assert health.succeeded() is True, "reachable again"
    assert health.succeeded() is False and health.available()
    assert health.failed() == (5.0, True), "a success starts the steps over"


def test_a_retry_after_sets_the_period_but_counts_as_a_failure() -> None:
    clock = Clock()
    health = Health(clock)
    assert health.failed(120.0) == (120.0, True)
    clock.now += 120
    assert health.failed() == (10.0, True)


# -- auth ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "parsed"),
    [
        (
            'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
            'scope="repository:a/b:pull"',
            (
                "bearer",
                {
                    "realm": "https://auth.example.com/token",
                    "service": "registry.example.com",
                    "scope": "repository:a/b:pull",
                },
            ),
        ),
        ('Basic realm="x"', ("basic", {"realm": "x"})),
        ('BEARER Realm="r", service=plain', ("bearer", {"realm": "r", "service": "plain"})),
        ('Bearer realm="a \\"quoted\\" realm"', ("bearer", {"realm": 'a \\"quoted\\" realm'})),
        ("", ("", {})),
    ],
)
def test_parse_challenge(header: str, parsed: tuple[str, dict[str, str]]) -> None:
    assert parse_challenge(header) == parsed


def test_tokens_are_renewed_early_and_bounded() -> None:
    clock = Clock()
    tokens = Tokens(clock)
    tokens.put("repository:a:pull", "tok-a", 300.0)
    assert tokens.get("repository:a:pull") == "tok-a"
    assert tokens.get("repository:b:pull") is None
    clock.now += 289
    assert tokens.get("repository:a:pull") == "tok-a"
    clock.now += 1
    assert tokens.get("repository:a:pull") is None, "10 s before it expires it is fetched again"
    for n in range(1100):
        tokens.put(f"s{n}", "t", 300.0)
    assert len(tokens) == 1024 and tokens.get("s0") is None and tokens.get("s1099") == "t"


@pytest.mark.parametrize(
    ("answer", "read"),
    [
        ({"token": "t", "expires_in": 300}, ("t", 300.0)),
        ({"access_token": "t"}, ("t", 60.0)),  # no lifetime: the minimum
        ({"token": "t", "expires_in": 5}, ("t", 60.0)),  # too short: the minimum
        ({"token": ""}, None),
        ({"token": 42}, None),
        ({}, None),
    ],
)
def test_read_token(answer: object, read: tuple[str, float] | None) -> None:
    assert read_token(answer) == read


@pytest.mark.parametrize(
    "answer", [[], "token", {"token": "t", "expires_in": "soon"}, {"token": "t", "expires_in": [1]}]
)
def test_an_answer_that_is_no_token_endpoints_is_invalid(answer: object) -> None:
    with pytest.raises(ValueError):
        read_token(answer)


def test_basic_challenge_answers_with_the_configured_credentials_from_then_on() -> None:
    auth = Auth(registry("https://r.example.com", "auth: 'admin:pa:ss'\n"))
    assert auth.header("s") == "", "nothing is sent before the registry asks"
    answer = auth.challenged('Basic realm="r"', "s")
    assert answer == auth.basic and auth.header("other") == auth.basic
    assert "YWRtaW46cGE6c3M" not in logs.redact(f"Authorization: {auth.basic}"), "registered as a secret"


def test_bearer_challenge_asks_the_realm_and_keeps_the_token_per_scope() -> None:
    clock = Clock()
    auth = Auth(registry("https://r.example.com"), clock)
    step = auth.challenged('Bearer realm="https://auth.example.com/token",service="r"', "repository:a:pull")
    assert step == TokenRequest(
        "https://auth.example.com/token?service=r&scope=repository%3Aa%3Apull", "auth.example.com"
    )
    assert auth.header("repository:a:pull") == ""
    assert auth.token("repository:a:pull", {"token": "tok-unit-1", "expires_in": 120}) == "Bearer tok-unit-1"
    assert auth.header("repository:a:pull") == "Bearer tok-unit-1"
    assert auth.header("repository:b:pull") == "", "another scope needs its own token"
    assert "tok-unit-1" not in logs.redact("got tok-unit-1")
    clock.now += 111
    assert auth.header("repository:a:pull") == "", "expired: the registry challenges again"


def test_a_realm_with_its_own_query_keeps_it() -> None:
    step = Auth(registry("https://r.example.com")).challenged(
        'Bearer realm="https://user@auth.example.com:8443/token?account=robot&service=old",service="r"', ""
    )
    assert step == TokenRequest(
        "https://user@auth.example.com:8443/token?account=robot&service=r", "auth.example.com:8443"
    ), "the challenge's service wins, no scope without one"


def test_an_unknown_challenge_is_not_answered() -> None:
    auth = Auth(registry("https://r.example.com", "auth: 'admin:x'\n"))
    assert auth.challenged('Negotiate realm="r"', "s") == ""
    assert auth.challenged("Bearer service=no-realm", "s") == ""


@pytest.mark.parametrize(
    ("scheme", "realm", "credentials", "refused"),
    [
        ("https", "https://auth.example.com/token", True, None),
        ("https", "http://auth.example.com/token", False, None),
        ("https", "http://127.0.0.1:5001/token", True, "token realm http://127.0.0.1:5001 is plain http"),
        ("https", "HTTP://user@auth.example.com/token", True, "token realm http://auth.example.com is plain"),
        ("http", "http://auth.example.com/token", True, None),
        ("http", "https://auth.example.com/token", True, None),
        ("https", "file:///etc/shadow", True, "token realm is not an http(s) URL"),
        ("http", "ftp://auth.example.com/t", False, "token realm is not an http(s) URL"),
        ("https", "/token", True, "token realm is not an http(s) URL"),
    ],
)
def test_which_realms_may_have_the_credentials(
    scheme: str, realm: str, credentials: bool, refused: str | None
) -> None:
    reason = realm_refusal(scheme, realm, credentials)
    if refused is None:
        assert reason is None
    else:
        assert reason is not None and reason.startswith(refused), reason


def test_an_https_registrys_plain_http_realm_is_refused_before_anything_is_sent() -> None:
    auth = Auth(registry("https://r.example.com", "auth: 'admin:secret'\n"))
    with pytest.raises(RealmRefused, match="plain http for an https registry"):
        auth.challenged('Bearer realm="http://r.example.com:8080/token",service="r"', "s")
    assert auth.header("s") == "", "nothing is sent after the refusal either"
    plain = Auth(registry("http://r.example.com", "auth: 'admin:secret'\n"))
    assert isinstance(plain.challenged('Bearer realm="http://r.example.com:8080/token"', "s"), TokenRequest)


# -- transport -------------------------------------------------------------------------------------


def test_retry_after() -> None:
    assert wire.retry_after("120") == 120.0
    assert wire.retry_after(None) is None and wire.retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < (wire.retry_after(later) or 0) <= 30
    assert wire.retry_after(email.utils.formatdate(time.time() - 30, usegmt=True)) == 0.0


def test_docker_hub_is_asked_at_its_api_host() -> None:
    assert wire.api_url(registry("https://docker.io")) == "https://registry-1.docker.io"
    assert wire.api_url(registry("http://r.example.com:5000")) == "http://r.example.com:5000"


@pytest.mark.parametrize("address", ["http://r.example.com", "https://r.example.com"])
def test_a_missing_ssl_cert_file_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch, address: str) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent/ca.pem")
    with pytest.raises(wire.TLSSetupError) as raised:
        wire.client(registry(address), 5.0, None)
    assert str(raised.value) == "SSL_CERT_FILE=/nonexistent/ca.pem (environment): No such file or directory"


def test_without_ssl_cert_file_the_client_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    wire.check_ca_file()
    monkeypatch.setenv("SSL_CERT_FILE", "")
    wire.check_ca_file()


# -- answers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "probe"),
    [
        (404, Probe(Answer.NOT_FOUND)),
        (401, Probe(Answer.DENIED, "HTTP 401")),
        (403, Probe(Answer.DENIED, "HTTP 403")),
        (400, Probe(Answer.NOT_FOUND, "HTTP 400")),
    ],
)
def test_classify(status: int, probe: Probe) -> None:
    assert classify(status) == probe


AMD64 = Platform("linux", "amd64")


@pytest.mark.parametrize(
    ("body", "answer"),
    [
        (b'{"manifests": [{"platform": {"os": "linux", "architecture": "amd64"}}]}', Answer.FOUND),
        (b'{"manifests": [{"platform": {"os": "linux", "architecture": "s390x"}}]}', Answer.NO_PLATFORM),
        (b'{"manifests": []}', Answer.NO_PLATFORM),
        (b'{"manifests": ["x", 1]}', Answer.NO_PLATFORM),
        (b"[1, 2]", Answer.NOT_FOUND),
        (b"{not json", Answer.NOT_FOUND),
    ],
)
def test_an_index_must_list_the_node_platform(body: bytes, answer: Answer) -> None:
    assert listed(body, AMD64).answer is answer

"""merge(): ConfigMap registries.yaml + local config -> config text, or a reason (docs/configmap.md)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from image_cri_shim.config import ConfigError, parse
from image_cri_shim.syncer.merge import HEADER, Merged, Rejected, merge

P = "/etc/image-cri-shim/config.yaml"

LOCAL = """\
# the node's own file
shim: /run/shim.sock
cri: /run/containerd/containerd.sock
address: http://sealos.hub:5000
auth: admin:local-pass
registries:
  - {address: mirror-a.local, priority: 600}
  - {address: mirror-b.local}
cache:
  imageCacheTTL: 10m
  negativeCacheTTL: 5s
debug: true
stateDir: /var/lib/shim-state
"""

DOCUMENTED_EXAMPLE = """\
version: "v1"
sealos:  {address: "https://registry.company.com", auth: {username: admin, password: secret}}
registries:
  - {address: "https://backup.company.com", auth: {username: u, password: p}, priority: 800}
offlinePriority: 1000
reloadInterval: "60s"
force: true
debug: false
timeout: "20m"
cache: {imageCacheSize: 2048, imageCacheTTL: "1h"}
"""


def merged(configmap: str, local: str = LOCAL) -> Merged:
    result = merge(configmap, local, P)
    assert isinstance(result, Merged), result
    return result


def document(result: Merged) -> dict[str, Any]:
    loaded = yaml.safe_load(result.text)
    assert isinstance(loaded, dict)
    return loaded


def test_contract_example() -> None:
    result = merged(DOCUMENTED_EXAMPLE)
    assert result.text.startswith(HEADER)
    doc = document(result)
    assert doc == {
        "shim": "/run/shim.sock",
        "cri": "/run/containerd/containerd.sock",
        "address": "https://registry.company.com",
        "auth": "admin:secret",
        "registries": [{"address": "https://backup.company.com", "auth": "u:p", "priority": 800}],
        "cache": {"imageCacheTTL": "1h", "negativeCacheTTL": "5s", "imageCacheSize": 2048},
        "debug": False,
        "stateDir": "/var/lib/shim-state",
        "offlinePriority": 1000,
        "reloadInterval": "60s",
        "force": True,
        "timeout": "20m",
    }
    # Local key order first, the ConfigMap's new keys after it.
    assert list(doc)[:8] == ["shim", "cri", "address", "auth", "registries", "cache", "debug", "stateDir"]
    config = result.config
    assert [r.domain for r in config.registries] == ["registry.company.com", "backup.company.com"]
    assert (config.registries[0].username, config.registries[0].password) == ("admin", "secret")
    assert config.reload_interval == 60.0 and config.timeout == 1200.0 and config.force
    assert set(result.passwords) == {"secret", "p"}
    assert "version" not in doc


@pytest.mark.parametrize(
    ("configmap", "expect"),
    [
        # key -> value it must have in the merged document (absent keys keep LOCAL's values)
        ("debug: false\n", {"debug": False, "shim": "/run/shim.sock", "auth": "admin:local-pass"}),
        ("registries: []\n", {"registries": [], "address": "http://sealos.hub:5000"}),
        (
            "registries: [{address: only.io}]\n",
            {"registries": [{"address": "only.io"}]},
        ),
        ("sealos: {address: http://new.hub}\n", {"address": "http://new.hub", "auth": "admin:local-pass"}),
        ("sealos: {auth: {username: bob, password: 'pa:ss'}}\n", {"auth": "bob:pa:ss"}),
        ("sealos: {auth: 'carol:pw'}\n", {"auth": "carol:pw"}),
        ("sealos: {auth: {}}\n", {"auth": ""}),  # an explicit empty auth: anonymous
        ("auth: dave:pw\n", {"auth": "dave:pw"}),
        (
            "cache: {imageCacheSize: 7}\n",
            {"cache": {"imageCacheTTL": "10m", "negativeCacheTTL": "5s", "imageCacheSize": 7}},
        ),
        ("cache: {imageCacheTTL: null}\n", {"cache": {"imageCacheTTL": "10m", "negativeCacheTTL": "5s"}}),
        ("auth: ''\nsealos: {address: null}\nforce: null\n", {"auth": "admin:local-pass"}),
        ("futureKey: {a: 1}\n", {"futureKey": {"a": 1}}),
        (
            "registries:\n- {address: r.io, auth: {username: u}, insecureSkipVerify: true}\n",
            {"registries": [{"address": "r.io", "auth": "u:", "insecureSkipVerify": True}]},
        ),
    ],
)
def test_rules(configmap: str, expect: dict[str, Any]) -> None:
    doc = document(merged(configmap))
    for key, value in expect.items():
        assert doc[key] == value, key


LOCAL_ROUTES = """\
address: http://harbor.local
mirrors: {docker.io: dockerhub, quay.io: quay}
upstream: false
registries:
  - {address: backup.local, mirrors: {docker.io: hub}}
"""


@pytest.mark.parametrize(
    ("configmap", "expect"),
    [
        # routing rules (docs/routing.md): key -> value in the merged document
        (
            "sealos: {mirrors: {ghcr.io: gh}}\n",
            {"mirrors": {"ghcr.io": "gh"}, "address": "http://harbor.local", "upstream": False},
        ),
        ("mirrors: {ghcr.io: gh}\n", {"mirrors": {"ghcr.io": "gh"}}),  # replaced as a whole
        ("sealos: {mirrors: {}}\n", {"mirrors": {}}),  # present and empty: no rules any more
        (
            "sealos: {mirrors: null, address: http://new.local}\n",
            {"mirrors": {"docker.io": "dockerhub", "quay.io": "quay"}},
        ),
        ("sealos: {address: http://new.local}\n", {"mirrors": {"docker.io": "dockerhub", "quay.io": "quay"}}),
        ("upstream: true\n", {"upstream": True, "mirrors": {"docker.io": "dockerhub", "quay.io": "quay"}}),
        ("upstream: null\n", {"upstream": False}),
        (
            "registries: [{address: other.local, mirrors: {quay.io: ''}}]\n",
            {"registries": [{"address": "other.local", "mirrors": {"quay.io": ""}}], "upstream": False},
        ),
        (
            "registries: [{address: o.local, auth: {username: u, password: p}, mirrors: {docker.io: d}}]\n",
            {"registries": [{"address": "o.local", "auth": "u:p", "mirrors": {"docker.io": "d"}}]},
        ),
        ("debug: true\n", {"mirrors": {"docker.io": "dockerhub", "quay.io": "quay"}, "upstream": False}),
    ],
)
def test_routing_rules(configmap: str, expect: dict[str, Any]) -> None:
    result = merged(configmap, LOCAL_ROUTES)
    doc = document(result)
    for key, value in expect.items():
        assert doc[key] == value, key
    again = merged(configmap, result.text)
    assert again.text == result.text, "idempotent on bytes"


def test_routing_rules_reach_the_config() -> None:
    result = merged(
        "sealos: {address: http://harbor.local, mirrors: {docker.io: dockerhub}}\n"
        "registries: [{address: backup.local, mirrors: {quay.io: ''}}]\nupstream: false\n",
        LOCAL,
    )
    harbor, backup = result.config.registries
    assert harbor.mirrors == (("docker.io", "dockerhub"),)
    assert backup.mirrors == (("quay.io", ""),)
    assert result.config.upstream is False


def test_same_data_gives_identical_text() -> None:
    once = merged(DOCUMENTED_EXAMPLE)
    twice = merged(DOCUMENTED_EXAMPLE, once.text)
    assert twice.text == once.text


def test_nothing_to_change_returns_the_local_text_with_its_comments() -> None:
    assert merged("debug: true\nversion: v9\n").text == LOCAL
    assert merged("cache: {}\nregistries: null\n").text == LOCAL


def test_configmap_cannot_redirect_or_disable_its_syncer() -> None:
    result = merged("configMap: {enabled: false}\ndebug: false\n")
    assert "configMap" not in document(result)
    assert result.notes == ("configMap: set in each node's own config only, ignored",)


def test_unknown_sealos_key_is_a_note() -> None:
    result = merged("sealos: {address: http://x.io, mirror: y}\n")
    assert result.notes == ("sealos.mirror: unknown key, ignored (sealos has address, auth and mirrors)",)


def test_local_with_nothing_but_the_configmap_registry() -> None:
    result = merged("sealos: {address: http://hub.io}\n", local="configMap: {enabled: true}\n")
    assert [r.domain for r in result.config.registries] == ["hub.io"]


@pytest.mark.parametrize(
    ("configmap", "reason"),
    [
        ("a: [", "registries.yaml: invalid YAML at line 1, column 5: expected the node content"),
        ("", "registries.yaml is empty"),
        ("- a\n- b\n", "registries.yaml: expected a mapping of settings, got a list"),
        ("debug: 1\ndebug: 2\n", 'registries.yaml: invalid YAML at line 2, column 1: duplicate key "debug"'),
        (
            "registries: [{address: a.io, priority: high}]\n",
            'the merged config is invalid: registries[0].priority: expected an integer, got "high"',
        ),
        ("registries: {address: a.io}\n", "the merged config is invalid: registries: expected a list"),
        ("cache: big\n", 'the merged config is invalid: cache: expected a mapping, got "big"'),
        ("timeout: 30\n", "the merged config is invalid: timeout: expected a duration with a unit"),
        ("sealos: [a]\n", "sealos: expected a mapping with address, auth and mirrors, got a list"),
        (
            "sealos: {mirrors: {docker.io: hub}}\nmirrors: {quay.io: q}\n",
            "both sealos.mirrors and mirrors are set: keep one",
        ),
        (
            "sealos: {mirrors: {nginx: hub}}\n",
            'the merged config is invalid: mirrors."nginx": a source prefix starts with a domain',
        ),
        (
            "registries: [{address: h.io, mirrors: {docker.io: Hub}}]\n",
            'the merged config is invalid: registries[0].mirrors."docker.io": expected a repository path',
        ),
        ("upstream: 'no'\n", 'the merged config is invalid: upstream: expected true or false, got "no"'),
        (
            "sealos: {auth: [x]}\n",
            'sealos.auth: expected {username, password} or "user:password", got a list',
        ),
        ("sealos: {auth: {username: u, password: 123456}}\n", "sealos.auth.password: expected a string"),
        ("sealos: {auth: {username: 'a:b', password: x}}\n", "sealos.auth.username: must not contain ':'"),
        ("sealos: {auth: {password: lonely}}\n", "sealos.auth: a password without a username"),
        ("sealos: {auth: {user: u, pass: p}}\n", "sealos.auth.user: unknown key"),
        (
            "registries: [{address: a.io, auth: {username: u, password: 99}}]\n",
            "registries[0].auth.password: expected a string",
        ),
        ("sealos: {address: http://a.io}\naddress: http://b.io\n", "both sealos.address and address are set"),
        ("registries: [{address: a.io}, {address: a.io}]\n", 'registry "a.io" is already configured'),
        ("sealos: {address: 'ftp://x'}\n", "the merged config is invalid: address: expected an http://"),
    ],
)
def test_rejections(configmap: str, reason: str) -> None:
    result = merge(configmap, LOCAL, P)
    assert isinstance(result, Rejected), result
    assert reason in result.reason
    assert "\n" not in result.reason


def test_invalid_local_config_is_not_hidden() -> None:
    result = merge("debug: false\n", "address: http://a.io\nshim: relative.sock\n", P)
    assert isinstance(result, Rejected)
    assert result.reason.startswith("the merged config is invalid: shim: expected an absolute path")
    broken = merge("debug: false\n", "address: [", P)
    assert isinstance(broken, Rejected) and broken.reason.startswith("the local config: invalid YAML")


def test_reasons_never_show_a_password() -> None:
    cases = [
        "sealos: {address: 'http://u:hunter22@a.io', auth: {username: u, password: hunter22}}\n",
        "sealos: {auth: {username: 'u:x', password: hunter22}}\n",
        "registries: [{address: a.io, priority: high, auth: {username: u, password: hunter22}}]\n",
        "registries: [{address: a.io, auth: 'u:hunter22', ca: relative}]\n",
        "sealos: {auth: {username: u, password: hunter22, extra: 1}}\n",
    ]
    for configmap in cases:
        result = merge(configmap, LOCAL, P)
        assert isinstance(result, Rejected), configmap
        assert "hunter22" not in result.reason
        assert "hunter22" in result.passwords


# --------------------------------------------------------------------------- properties

KEYS = [
    "sealos",
    "registries",
    "address",
    "auth",
    "cache",
    "debug",
    "force",
    "timeout",
    "reloadInterval",
    "offlinePriority",
    "configMap",
    "version",
    "shim",
    "imageCacheSize",
    "imageCacheTTL",
    "username",
    "password",
    "priority",
    "mirrors",
    "upstream",
    "docker.io",
    "x",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.text(max_size=12),
    st.sampled_from(
        ["30s", "1h", "http://h.io", "https://r.io:5000", "b.io", "u:p", "/abs", "12:34", "high", "", "0"]
    ),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=5),
    ),
    max_leaves=20,
)
DOCUMENTS = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6)
VALID_LOCALS = st.fixed_dictionaries(
    {"address": st.sampled_from(["http://sealos.hub:5000", "https://a.io"])},
    optional={
        "debug": st.booleans(),
        "registries": st.lists(
            st.fixed_dictionaries(
                {"address": st.sampled_from(["m1.io", "m2.io", "m3.io"])},
                optional={"priority": st.integers(0, 10000), "auth": st.sampled_from(["u:p", "v:w:x"])},
            ),
            max_size=2,
            unique_by=lambda r: r["address"],
        ),
        "cache": st.fixed_dictionaries({}, optional={"imageCacheTTL": st.sampled_from(["1m", "2h"])}),
        "mirrors": st.dictionaries(
            st.sampled_from(["docker.io", "quay.io", "docker.io/library"]),
            st.sampled_from(["", "hub", "a/b"]),
        ),
        "upstream": st.booleans(),
        "extra": st.text(max_size=5),
    },
)


def check(configmap_text: str, local_text: str) -> None:
    result = merge(configmap_text, local_text, P)
    if isinstance(result, Rejected):
        assert result.reason and "\n" not in result.reason
        return
    parse(result.text, P)  # the loader accepts what merge returns
    again = merge(configmap_text, result.text, P)
    assert isinstance(again, Merged) and again.text == result.text  # idempotent, on bytes


@pytest.mark.parametrize("odd", ["\x85", "\u2028", "\u2029", "a\x85b"])
def test_a_key_with_a_line_break_character_round_trips(odd: str) -> None:
    # Written raw in single quotes, YAML would read NEL, LS or PS back as a folded space.
    check(yaml.safe_dump({odd: 1, "x": {odd: odd}}), LOCAL)
    result = merge(yaml.safe_dump({odd: 1}), LOCAL, P)
    assert isinstance(result, Merged) and yaml.safe_load(result.text)[odd] == 1


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCUMENTS, VALID_LOCALS)
def test_merge_is_idempotent_and_valid_or_a_reason(configmap: dict[Any, Any], local: dict[str, Any]) -> None:
    check(yaml.safe_dump(configmap), yaml.safe_dump(local))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(DOCUMENTS, DOCUMENTS)
def test_merge_with_any_local_document(configmap: dict[Any, Any], local: dict[Any, Any]) -> None:
    check(yaml.safe_dump(configmap), yaml.safe_dump(local))


FRAGMENTS = st.sampled_from(
    [*KEYS, ": ", "\n", "  ", "- ", "{", "}", "[", "]", ",", "&a ", "*a", "<<: *a", "!!omap", "'", '"', "u:p"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(FRAGMENTS, max_size=25).map("".join), st.sampled_from([LOCAL, "address: http://a.io\n"]))
def test_any_text_gives_merged_or_reason(configmap_text: str, local_text: str) -> None:
    check(configmap_text, local_text)


def test_an_accepted_local_text_is_never_made_invalid() -> None:
    """The loader and merge agree: a valid local plus an empty-effect map stays loadable."""
    for local_text in (LOCAL, "address: http://a.io\n# only a comment\n"):
        parse(local_text, P)
        result = merged("version: v1\n", local_text)
        assert result.text == local_text
    with pytest.raises(ConfigError):
        parse("registries: [{address: a.io, priority: high}]\n", P)

"""The config model: the keys of docs/configuration.md, defaults, messages and secrets."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from image_cri_shim import config as cfg
from image_cri_shim.config import (
    CRI_SOCKETS,
    DEFAULT_PATH,
    CacheConfig,
    Config,
    ConfigError,
    ConfigMapRef,
    load,
    parse,
    parse_duration,
)
from image_cri_shim.config.schema import CACHE, CONFIG_MAP, REGISTRY, TOP
from image_cri_shim.startup import resolve_cri

P = DEFAULT_PATH
MIN = "address: http://sealos.hub:5000\n"


def ok(text: str) -> Config:
    return parse(text, P)


def err(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text, P)
    return info.value


# --------------------------------------------------------------------------- defaults


def test_defaults() -> None:
    c = ok(MIN)
    assert c.path == P
    assert c.shim == "/var/run/image-cri-shim.sock"
    assert c.cri is None
    assert c.force is False
    assert c.debug is False
    assert c.timeout == 900.0
    assert c.reload_interval == 15.0
    assert c.cache == CacheConfig()
    assert c.cache == CacheConfig(1024, 1800.0, 30.0, 60.0, False)
    assert c.metrics_address is None
    assert c.config_map == ConfigMapRef(True, "kube-system", "image-cri-shim", "registries.yaml")
    assert c.state_dir == "/var/lib/image-cri-shim"
    assert c.warnings == ()
    (reg,) = c.registries
    assert reg.domain == "sealos.hub:5000"
    assert reg.scheme == "http"
    assert reg.url == "http://sealos.hub:5000"
    assert (reg.username, reg.password, reg.has_credentials) == ("", "", False)
    assert reg.priority == 1000
    assert reg.offline is True
    assert reg.insecure_skip_verify is False
    assert reg.ca is None
    assert reg.key == "address"
    assert reg.mirrors == ()
    assert c.upstream is True


def test_every_key_set() -> None:
    c = ok(
        """
shim: unix:///run/shim/shim.sock
cri: unix:///run/containerd/containerd.sock
address: https://registry.company.com
auth: admin:secret
offlinePriority: 900
insecureSkipVerify: true
ca: /etc/ssl/company.pem
registries:
  - address: backup.company.com:5443
    auth: u:p
    priority: 800
    insecureSkipVerify: false
    ca: /etc/ssl/backup.pem
force: true
debug: true
timeout: 20m
reloadInterval: 1m
cache:
  imageCacheSize: 2048
  imageCacheTTL: 1h
  negativeCacheTTL: 0s
  statsLogInterval: 5m
  disableStats: true
metricsAddress: 127.0.0.1:9100
configMap: {enabled: false, namespace: infra, name: shim.config, key: shim.yaml}
stateDir: /var/lib/shim/
"""
    )
    assert c.shim == "/run/shim/shim.sock"
    assert c.cri == "/run/containerd/containerd.sock"
    assert (c.force, c.debug, c.timeout, c.reload_interval) == (True, True, 1200.0, 60.0)
    assert c.cache == CacheConfig(2048, 3600.0, 0.0, 300.0, True)
    assert c.metrics_address == "127.0.0.1:9100"
    assert c.config_map == ConfigMapRef(False, "infra", "shim.config", "shim.yaml")
    assert c.state_dir == "/var/lib/shim"
    offline, backup = c.registries
    assert (offline.domain, offline.scheme, offline.priority, offline.offline) == (
        "registry.company.com",
        "https",
        900,
        True,
    )
    assert (offline.insecure_skip_verify, offline.ca) == (True, "/etc/ssl/company.pem")
    assert (backup.domain, backup.scheme, backup.priority, backup.offline) == (
        "backup.company.com:5443",
        "https",
        800,
        False,
    )
    assert (backup.username, backup.password, backup.ca, backup.key) == (
        "u",
        "p",
        "/etc/ssl/backup.pem",
        "registries[0]",
    )
    assert c.warnings == ()


def test_registries_only_is_enough() -> None:
    c = ok("registries: [{address: mirror.example.com}]")
    (reg,) = c.registries
    assert (reg.url, reg.priority, reg.offline, reg.key) == (
        "https://mirror.example.com",
        500,
        False,
        "registries[0]",
    )


def test_null_and_empty_values_mean_default() -> None:
    c = ok(MIN + "shim: ''\ncri: ''\nregistries:\ntimeout:\ncache:\nconfigMap:\nmetricsAddress: ''\nca: ''\n")
    assert c.shim == "/var/run/image-cri-shim.sock"
    assert c.cri is None
    assert c.timeout == 900.0
    assert c.cache == CacheConfig()
    assert c.metrics_address is None
    assert c.registries[0].ca is None


def test_file_written_by_the_go_shim_loads() -> None:
    """sealos' Go shim marshals every field, zero values included."""
    c = ok(
        """
address: http://sealos.hub:5000
auth: admin:passw0rd
cache:
  disableStats: false
  domainCacheTTL: 0s
  imageCacheSize: 1024
  imageCacheTTL: 0s
  statsLogInterval: 1m0s
cri: ""
debug: false
force: true
registries: null
reloadInterval: 0s
shim: /var/run/image-cri-shim.sock
timeout: 15m0s
"""
    )
    assert c.timeout == 900.0
    assert c.reload_interval == 15.0
    assert c.cache == CacheConfig()
    assert c.warnings == ()


# --------------------------------------------------------------------------- auth and secrets


@pytest.mark.parametrize(
    ("auth", "user", "password"),
    [
        ("admin:passw0rd", "admin", "passw0rd"),
        ("admin:pa:ss:word", "admin", "pa:ss:word"),
        ("robot$ci:tok:en=", "robot$ci", "tok:en="),
        ("user:", "user", ""),
        ("", "", ""),
    ],
)
def test_auth_splits_at_first_colon(auth: str, user: str, password: str) -> None:
    (reg,) = ok(MIN + f"auth: {auth!r}\n").registries
    assert (reg.username, reg.password) == (user, password)
    assert reg.has_credentials is bool(user)


def test_auth_that_yaml_1_1_would_read_as_base_60_stays_text() -> None:
    (reg,) = ok(MIN + "auth: 12:34\n").registries
    assert (reg.username, reg.password) == ("12", "34")


def test_repr_hides_password() -> None:
    c = ok(MIN + "auth: admin:S3cr3t-pw\nregistries: [{address: b.io, auth: 'u:An0ther-pw'}]\n")
    for text in (repr(c), str(c), repr(c.registries), str(c.registries[0])):
        assert "S3cr3t-pw" not in text
        assert "An0ther-pw" not in text
    assert "admin" in repr(c)


@pytest.mark.parametrize(
    "text",
    [
        MIN + "auth: S3cr3t-pw\n",
        MIN + "auth: ':S3cr3t-pw'\n",
        MIN + "auth: [S3cr3t-pw]\n",
        MIN + "auth: {username: u, password: S3cr3t-pw}\n",
        "address: https://admin:S3cr3t-pw@registry.company.com\n",
        "address: admin:S3cr3t-pw@registry.company.com\n",
        "address: ftp://admin:S3cr3t-pw@registry.company.com\n",
        "address: https://admin:S3cr3t-pw@registry.company.com/v2/\n",
        "registries: [{address: 'u:S3cr3t-pw@b.io'}]\n",
        "registries: [{address: b.io, auth: S3cr3t-pw}]\n",
        "registries: [{address: b.io, auth: 'S3cr3t-pw'}, {address: b.io, auth: 'u:S3cr3t-pw'}]\n",
    ],
)
def test_secrets_never_in_messages(text: str) -> None:
    e = err(text)
    assert "S3cr3t-pw" not in str(e)
    assert str(e).startswith(f"config {P}: ")


def test_secrets_never_in_warnings() -> None:
    c = ok("auth: 'u:S3cr3t-pw'\npasword: S3cr3t-pw\nregistries: [{address: b.io, auht: 'u:S3cr3t-pw'}]\n")
    assert len(c.warnings) == 3
    assert not any("S3cr3t-pw" in w for w in c.warnings)


def test_yaml_error_does_not_quote_the_line() -> None:
    e = err(MIN + 'auth: "admin:S3cr3t-pw\n')
    assert "S3cr3t-pw" not in str(e)
    assert "invalid YAML" in str(e)


# --------------------------------------------------------------------------- ordering and priorities


def test_ordering_priority_desc_then_address_then_domain() -> None:
    c = ok(
        """
address: http://sealos.hub:5000
offlinePriority: 800
registries:
  - {address: zeta.io, priority: 800}
  - {address: alpha.io, priority: 800}
  - {address: fast.io, priority: 1200}
  - {address: slow.io, priority: 100}
  - {address: default.io}
"""
    )
    assert [r.domain for r in c.registries] == [
        "fast.io",
        "sealos.hub:5000",
        "alpha.io",
        "zeta.io",
        "default.io",
        "slow.io",
    ]
    assert [r.priority for r in c.registries] == [1200, 800, 800, 800, 500, 100]
    assert [r.key for r in c.registries] == [
        "registries[2]",
        "address",
        "registries[1]",
        "registries[0]",
        "registries[4]",
        "registries[3]",
    ]


@pytest.mark.parametrize(
    ("value", "priority", "warning"),
    [
        ("0", 500, None),  # "not set", as in sealos
        ("1", 1, None),
        ("10000", 10000, None),
        ("-5", 0, "registries[0].priority: -5 is outside 0..10000, using 0"),
        ("20000", 10000, "registries[0].priority: 20000 is outside 0..10000, using 10000"),
    ],
)
def test_priority_clamped_with_warning(value: str, priority: int, warning: str | None) -> None:
    c = ok(f"registries: [{{address: b.io, priority: {value}}}]")
    assert c.registries[0].priority == priority
    assert c.warnings == ((f"config {P}: {warning}",) if warning else ())


@pytest.mark.parametrize(
    ("value", "priority", "warned"),
    [("0", 1000, False), ("1", 1, False), ("20000", 10000, True), ("-1", 0, True)],
)
def test_offline_priority(value: str, priority: int, warned: bool) -> None:
    c = ok(MIN + f"offlinePriority: {value}\n")
    assert c.registries[0].priority == priority
    assert bool(c.warnings) is warned
    if warned:
        assert c.warnings[0].startswith(f"config {P}: offlinePriority: {value} is outside 0..10000")


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("address", "url"),
    [
        ("docker.io", "https://docker.io"),
        ("Registry.Company.COM", "https://registry.company.com"),
        ("127.0.0.1:5000", "https://127.0.0.1:5000"),
        ("localhost:5000", "https://localhost:5000"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("HTTPS://b.io/", "https://b.io"),
        ("https://[FD00::1]:5000", "https://[fd00::1]:5000"),
        ("[::1]", "https://[::1]"),
        ("  https://b.io  ", "https://b.io"),
    ],
)
def test_registry_address_forms(address: str, url: str) -> None:
    assert ok(f"registries: [{{address: {address!r}}}]").registries[0].url == url


def test_top_level_address_must_be_a_url() -> None:
    assert str(err("address: sealos.hub:5000")) == (
        f'config {P}: address: expected an http:// or https:// URL, got "sealos.hub:5000"'
    )


# --------------------------------------------------------------------------- bad values, one line each

BAD: list[tuple[str, str, str]] = [
    # (document, key path, problem fragment)
    ("shim: relative.sock\n" + MIN, "shim", 'expected an absolute path, got "relative.sock"'),
    ("shim: 5\n" + MIN, "shim", "expected a string, got 5"),
    ("shim: tcp://1.2.3.4:5\n" + MIN, "shim", "expected an absolute path or a unix:// URL"),
    ("shim: /" + "s" * 120 + "\n" + MIN, "shim", "longer than 107 bytes"),
    ("cri: run/containerd.sock\n" + MIN, "cri", "expected an absolute path"),
    ("cri: unix://run/x.sock\n" + MIN, "cri", "expected an absolute path"),
    ("cri: /var/run/image-cri-shim.sock\n" + MIN, "cri", "is the same socket as shim"),
    ("address: 5000\n", "address", "expected an http:// or https:// URL, got 5000"),
    ("address: ftp://h\n", "address", 'expected an http:// or https:// URL, got "ftp://h"'),
    ("address: https://\n", "address", "no host"),
    ("address: https://h/v2/\n", "address", 'a path is not allowed ("/v2/")'),
    ("address: https://h?x=1\n", "address", "a query or fragment is not allowed"),
    ("address: https://h#x\n", "address", "a query or fragment is not allowed"),
    ("address: https://h:0\n", "address", 'port "0" is not a number from 1 to 65535'),
    ("address: https://h:65536\n", "address", "is not a number from 1 to 65535"),
    ("address: https://h:x\n", "address", 'port "x" is not a number'),
    ("address: 'https://h_1'\n", "address", '"h_1" is not a valid host name'),
    ("address: https://-h\n", "address", "is not a valid host name"),
    ("address: https://fd00::1\n", "address", "must be written in brackets"),
    ("address: 'https://[fd00::1'\n", "address", "missing ']'"),
    ("address: 'https://[zz::1]'\n", "address", "is not an IPv6 address"),
    ("address: 'https://[::1]x'\n", "address", "after the IPv6 address"),
    ("address: https://u:p@h\n", "address", "credentials in the URL are not allowed: put them in auth"),
    (MIN + "auth: admin\n", "auth", 'expected "user:password" (value not shown): there is no colon'),
    (MIN + "auth: ':x'\n", "auth", "the user name before the colon is empty"),
    (MIN + "auth: 5\n", "auth", 'expected a string "user:password", got a number'),
    (MIN + "offlinePriority: high\n", "offlinePriority", 'expected an integer, got "high"'),
    (MIN + "offlinePriority: true\n", "offlinePriority", "expected an integer, got true"),
    (MIN + "offlinePriority: 1.5\n", "offlinePriority", "expected an integer, got 1.5"),
    (MIN + "insecureSkipVerify: 'yes'\n", "insecureSkipVerify", 'expected true or false, got "yes"'),
    (MIN + "ca: etc/ca.pem\n", "ca", 'expected an absolute path, got "etc/ca.pem"'),
    (MIN + "registries: b.io\n", "registries", 'expected a list of registries, got "b.io"'),
    (MIN + "registries: {address: b.io}\n", "registries", "expected a list of registries, got a mapping"),
    (MIN + "registries: [b.io]\n", "registries[0]", 'expected a mapping with an address, got "b.io"'),
    (
        MIN + "registries: [{auth: 'u:p'}]\n",
        "registries[0].address",
        "missing: every registry needs an address",
    ),
    (
        MIN + "registries: [{address: b.io}, {address: c.io, priority: [1]}]\n",
        "registries[1].priority",
        "got a list",
    ),
    (MIN + "registries: [{address: b.io, priority: '800'}]\n", "registries[0].priority", 'got "800"'),
    (MIN + "registries: [{address: b.io, priority: false}]\n", "registries[0].priority", "got false"),
    (MIN + "registries: [{address: 'b.io/library'}]\n", "registries[0].address", "a path is not allowed"),
    (
        MIN + "registries: [{address: b.io, insecureSkipVerify: 1}]\n",
        "registries[0].insecureSkipVerify",
        "got 1",
    ),
    (MIN + "registries: [{address: b.io, ca: 7}]\n", "registries[0].ca", "expected a string, got 7"),
    (MIN + "registries: [{address: b.io, auth: nocolon}]\n", "registries[0].auth", "there is no colon"),
    (MIN + "force: 'true'\n", "force", 'expected true or false, got "true"'),
    (MIN + "debug: 1\n", "debug", "expected true or false, got 1"),
    (MIN + "timeout: 30\n", "timeout", 'expected a duration with a unit, e.g. "30s" or "15m", got 30'),
    (MIN + "timeout: 1.5\n", "timeout", 'expected a duration with a unit, e.g. "30s" or "15m", got 1.5'),
    (MIN + "timeout: '30'\n", "timeout", '"30" has no unit: write e.g. "30s"'),
    (MIN + "timeout: 15 minutes\n", "timeout", 'unknown unit " minutes"'),
    (MIN + "timeout: -5s\n", "timeout", 'must not be negative, got "-5s"'),
    (MIN + "timeout: true\n", "timeout", "got true"),
    (MIN + "timeout: [1s]\n", "timeout", "got a list"),
    (MIN + "reloadInterval: 15\n", "reloadInterval", 'e.g. "30s"'),
    (MIN + "cache: 5\n", "cache", "expected a mapping, got 5"),
    (MIN + "cache: {imageCacheSize: big}\n", "cache.imageCacheSize", 'expected an integer, got "big"'),
    (MIN + "cache: {imageCacheTTL: 30}\n", "cache.imageCacheTTL", 'e.g. "30s"'),
    (MIN + "cache: {negativeCacheTTL: 1x}\n", "cache.negativeCacheTTL", 'unknown unit "x"'),
    (MIN + "cache: {statsLogInterval: 60}\n", "cache.statsLogInterval", 'e.g. "30s"'),
    (MIN + "cache: {disableStats: 'no'}\n", "cache.disableStats", 'expected true or false, got "no"'),
    (MIN + "metricsAddress: 9100\n", "metricsAddress", 'got 9100 (write e.g. "127.0.0.1:9100")'),
    (
        MIN + "metricsAddress: localhost\n",
        "metricsAddress",
        'expected "host:port" or an absolute socket path',
    ),
    (MIN + "metricsAddress: 'localhost:'\n", "metricsAddress", 'port "" is not a number'),
    (MIN + "metricsAddress: ':99999'\n", "metricsAddress", "is not a number from 1 to 65535"),
    (MIN + "metricsAddress: /var/run/image-cri-shim.sock\n", "metricsAddress", "is the same socket as shim"),
    (MIN + "configMap: true\n", "configMap", "expected a mapping, got true"),
    (MIN + "configMap: {enabled: 'off'}\n", "configMap.enabled", 'expected true or false, got "off"'),
    (MIN + "configMap: {namespace: Kube_System}\n", "configMap.namespace", "expected a namespace name"),
    (MIN + "configMap: {name: 'a/b'}\n", "configMap.name", "expected a ConfigMap name"),
    (MIN + "configMap: {key: 'a b'}\n", "configMap.key", "expected a ConfigMap key"),
    (MIN + "configMap: {namespace: " + "a" * 64 + "}\n", "configMap.namespace", "expected a namespace name"),
    (MIN + "stateDir: var/lib/shim\n", "stateDir", "expected an absolute path"),
    (
        MIN + "registries: [{address: 'http://sealos.hub:5000'}]\n",
        "registries[0].address",
        'registry "sealos.hub:5000" is already configured at address',
    ),
    (
        "registries: [{address: a.io}, {address: b.io}, {address: 'https://A.io/'}]\n",
        "registries[2].address",
        'registry "a.io" is already configured at registries[0].address',
    ),
    # routing rules (docs/routing.md): every bad value names its key path, the source prefix quoted
    (
        MIN + "registries: [{address: b.io, mirrors: {nginx: x}}]\n",
        'registries[0].mirrors."nginx"',
        "a source prefix starts with a domain, e.g. docker.io/library/nginx",
    ),
    (
        MIN + "mirrors: {library/nginx: x}\n",
        'mirrors."library/nginx"',
        "a source prefix starts with a domain",
    ),
    (MIN + "mirrors: {'': x}\n", 'mirrors.""', "a source prefix starts with a domain"),
    (MIN + "mirrors: {'a_b.io/x': y}\n", 'mirrors."a_b.io/x"', "is not a valid host name"),
    (MIN + "mirrors: {'quay.io/Org': y}\n", 'mirrors."quay.io/Org"', "repository path components"),
    (MIN + "mirrors: {'quay.io//x': y}\n", 'mirrors."quay.io//x"', "repository path components"),
    (
        MIN + "mirrors: {'docker.io/library/nginx:1.27': y}\n",
        'mirrors."docker.io/library/nginx:1.27"',
        "no tag or digest",
    ),
    (MIN + "mirrors: {'quay.io/a@sha256:00': y}\n", 'mirrors."quay.io/a@sha256:00"', "no tag or digest"),
    (MIN + "mirrors: {5: y}\n", "mirrors.5", "expected a source prefix such as docker.io"),
    (
        MIN + "mirrors: {docker.io: x, index.docker.io: y}\n",
        'mirrors."index.docker.io"',
        'the same source prefix as "docker.io"',
    ),
    (MIN + "mirrors: {quay.io: x, Quay.IO: y}\n", 'mirrors."Quay.IO"', 'the same source prefix as "quay.io"'),
    (MIN + "mirrors: {docker.io: Docker}\n", 'mirrors."docker.io"', 'got "Docker"'),
    (MIN + "mirrors: {docker.io: /dockerhub}\n", 'mirrors."docker.io"', "expected a repository path prefix"),
    (MIN + "mirrors: {docker.io: 'hub/'}\n", 'mirrors."docker.io"', "expected a repository path prefix"),
    (MIN + "mirrors: {docker.io: 'a:b'}\n", 'mirrors."docker.io"', "expected a repository path prefix"),
    (MIN + "mirrors: {docker.io: 5}\n", 'mirrors."docker.io"', "got 5"),
    (MIN + "mirrors: {docker.io: [a]}\n", 'mirrors."docker.io"', "got a list"),
    (MIN + "mirrors: [docker.io]\n", "mirrors", "expected a mapping of source prefix to path prefix"),
    (MIN + "mirrors: dockerhub\n", "mirrors", 'got "dockerhub"'),
    (
        MIN + "registries: [{address: b.io, mirrors: {docker.io: ok, quay.io: 'Q'}}]\n",
        'registries[0].mirrors."quay.io"',
        'got "Q"',
    ),
    (MIN + "upstream: 'false'\n", "upstream", 'expected true or false, got "false"'),
    (MIN + "upstream: 0\n", "upstream", "expected true or false, got 0"),
]


@pytest.mark.parametrize(("text", "key", "problem"), BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_bad_values(text: str, key: str, problem: str) -> None:
    e = err(text)
    line = str(e)
    assert line.startswith(f"config {P}: {key}: "), line
    assert problem in line, line
    assert "\n" not in line
    assert (e.path, e.key) == (P, key)


def test_mirrors_are_normalized_and_longest_first() -> None:
    c = ok(
        """
address: https://harbor.company.com
mirrors:
  quay.io: quay
  docker.io: dockerhub
  registry.k8s.io/ingress-nginx: ingress
  index.docker.io/library: ''
  ghcr.io/org: null
  localhost:5000/team: mirror/local
upstream: false
registries:
  - {address: backup.company.com}
  - {address: quay-mirror.company.com, mirrors: {quay.io: ''}}
"""
    )
    harbor, backup, quay = c.registries
    assert harbor.mirrors == (
        ("registry.k8s.io/ingress-nginx", "ingress"),
        ("localhost:5000/team", "mirror/local"),
        ("docker.io/library", ""),
        ("ghcr.io/org", ""),
        ("docker.io", "dockerhub"),
        ("quay.io", "quay"),
    )
    assert backup.mirrors == ()
    assert quay.mirrors == (("quay.io", ""),)
    assert c.upstream is False
    assert c.warnings == ()


@pytest.mark.parametrize("empty", ["null", "''", "{}"])
def test_empty_mirrors_mean_every_image(empty: str) -> None:
    """A tool that writes empty fields must not turn a registry off: {} is the same as unset."""
    c = ok(f"registries: [{{address: b.io, mirrors: {empty}}}]\nmirrors: {empty}\n")
    assert c.registries[0].mirrors == ()
    assert c.warnings == ()


def test_mirrors_and_upstream_message_lines() -> None:
    line = str(err(MIN + "registries: [{address: a.io}, {address: b.io, mirrors: {nginx: dockerhub}}]\n"))
    assert line == (
        f'config {P}: registries[1].mirrors."nginx": a source prefix starts with a domain,'
        " e.g. docker.io/library/nginx"
    )


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (
            "registries:\n  - {address: a.io}\n  - {address: b.io, priority: high}\n",
            f'config {P}: registries[1].priority: expected an integer, got "high"',
        ),
        (
            MIN + "timeout: 30\n",
            f'config {P}: timeout: expected a duration with a unit, e.g. "30s" or "15m", got 30',
        ),
        (
            "address: http://h\nregistries: [{address: 'http://H/'}]\n",
            f'config {P}: registries[0].address: registry "h" is already configured at address',
        ),
        ("", f"config {P}: the file is empty: at least address or registries must be set"),
        (
            "force: true\nconfigMap: {enabled: false}\n",
            f"config {P}: no registry configured: set address or registries",
        ),
        ("[a, b]\n", f"config {P}: expected a mapping of settings at the top level, got a list"),
        ("just text\n", f"config {P}: expected a mapping of settings at the top level, got a string"),
        (
            "address: http://h\nforce: [\n",
            f"config {P}: invalid YAML at line 3, column 1: expected the node content, "
            "but found '<stream end>'",
        ),
    ],
)
def test_exact_lines(text: str, line: str) -> None:
    assert str(err(text)) == line


def test_negative_cache_size_is_a_warning_and_disables_the_cache() -> None:
    c = ok(MIN + "cache: {imageCacheSize: -10}\n")
    assert c.cache.image_cache_size == 0
    warning = "cache.imageCacheSize: -10 is negative: the decision cache is disabled"
    assert c.warnings == (f"config {P}: {warning}",)


def test_no_registries_with_configmap_sync_is_a_passthrough_with_one_warning() -> None:
    c = ok("shim: /run/s.sock\ncri: /run/containerd/containerd.sock\n")
    assert c.registries == ()
    assert c.warnings == (f"config {P}: {cfg.PASSTHROUGH}",)


def test_comment_only_file_is_empty() -> None:
    assert "the file is empty" in str(err("# nothing here\n\n"))


def test_yaml_syntax_error_names_the_line() -> None:
    e = err("address: http://h\nregistries:\n  - address: a.io\n\tpriority: 5\n")
    assert e.key is None
    assert str(e).startswith(f"config {P}: invalid YAML at line 4, column 1: ")
    assert "\n" not in str(e)


def test_duplicate_key_is_an_error() -> None:
    assert str(err("address: http://a\nforce: true\naddress: http://b\n")) == (
        f'config {P}: invalid YAML at line 3, column 1: duplicate key "address"'
    )


def test_merge_keys_may_be_overridden() -> None:
    c = ok("base: &b {address: a.io, priority: 5}\nregistries: [{<<: *b, priority: 7}]\n")
    assert c.registries[0].priority == 7


def test_several_documents_is_an_error() -> None:
    assert "invalid YAML" in str(err(MIN + "---\n" + MIN))


def test_python_tags_are_refused() -> None:
    assert "invalid YAML" in str(err(MIN + "x: !!python/object/apply:os.system ['true']\n"))


def test_control_character_is_an_error() -> None:
    assert "unacceptable" in str(err(MIN + "x: \x07\n"))


def test_deep_nesting_is_an_error() -> None:
    text = MIN + "x: " + "[" * 5000 + "]" * 5000 + "\n"
    e = err(text)
    assert "invalid YAML" in str(e)


def test_config_error_is_one_line_and_picklable() -> None:
    e = ConfigError(P, "registries[1].priority", 'expected an integer, got "high"')
    assert str(e) == f'config {P}: registries[1].priority: expected an integer, got "high"'
    back = pickle.loads(pickle.dumps(e))
    assert (str(back), back.path, back.key, back.problem) == (str(e), e.path, e.key, e.problem)
    assert str(ConfigError(P, None, "no such file")) == f"config {P}: no such file"


def test_long_values_are_shortened_in_messages() -> None:
    line = str(err(MIN + "shim: " + "x" * 500 + "\n"))
    assert len(line) < 200


# --------------------------------------------------------------------------- warnings


@pytest.mark.parametrize(
    ("text", "warning"),
    [
        (MIN + "adress: x\n", 'adress: unknown key, ignored (did you mean "address"?)'),
        (MIN + "Timeout: 5s\n", 'Timeout: unknown key, ignored (did you mean "timeout"?)'),
        (
            MIN + "reload_interval: 5s\n",
            'reload_interval: unknown key, ignored (did you mean "reloadInterval"?)',
        ),
        (
            MIN + "cache: {imageCacheTtl: 5m}\n",
            'cache.imageCacheTtl: unknown key, ignored (did you mean "imageCacheTTL"?)',
        ),
        (
            MIN + "configMap: {namespce: x}\n",
            'configMap.namespce: unknown key, ignored (did you mean "namespace"?)',
        ),
        (
            MIN + "registries: [{address: b.io, prority: 5}]\n",
            'registries[0].prority: unknown key, ignored (did you mean "priority"?)',
        ),
        (MIN + "zzzz: 1\n", "zzzz: unknown key, ignored"),
        (MIN + "upstreams: false\n", 'upstreams: unknown key, ignored (did you mean "upstream"?)'),
        (
            MIN + "registries: [{address: b.io, mirror: {}}]\n",
            'registries[0].mirror: unknown key, ignored (did you mean "mirrors"?)',
        ),
        (
            "registries: [{address: b.io}]\nmirrors: {docker.io: x}\n",
            "mirrors: has no effect without address",
        ),
        (
            "registries: [{address: h.io, mirrors: {docker.io: h.io/dockerhub}}]\n",
            'registries[0].mirrors."docker.io": starts with the registry\'s own domain',
        ),
        (
            MIN + "mirrors: {docker.io: sealos.hub}\n",
            'mirrors."docker.io": starts with the registry\'s own domain',
        ),
        (MIN + "1: x\n", "1: unknown key, ignored"),
        (MIN + "registry.d: /etc/image-cri-shim.d\n", "registry.d: is not supported"),
        (
            MIN + "auth: ''\ninsecureSkipVerify: true\nca: /x.pem\n",
            "insecureSkipVerify: has no effect on an http://",
        ),
        ("registries: [{address: b.io}]\nauth: 'u:p'\n", "auth: has no effect without address"),
        (
            "registries: [{address: 'http://b.io', ca: /x.pem}]\n",
            "registries[0].ca: has no effect on an http:// registry",
        ),
    ],
)
def test_warnings(text: str, warning: str) -> None:
    warnings = ok(text).warnings
    assert f"config {P}: {warning}" in "\n".join(warnings), warnings


def test_unknown_key_does_not_stop_loading() -> None:
    c = ok(MIN + "mirrorz: {docker.io: x}\ncache: {imageCacheSize: 5, foo: 1}\n")
    assert c.cache.image_cache_size == 5
    assert len(c.warnings) == 2


def test_legacy_keys_are_silent() -> None:
    c = ok(
        MIN
        + """
version: v1alpha2
image: /var/lib/image-cri-shim
sync: 0
cache: {domainCacheTTL: 10m, imageCacheSize: 10}
"""
    )
    assert c.warnings == ()
    assert c.cache.image_cache_size == 10


def test_legacy_keys_with_any_value_are_ignored() -> None:
    assert ok(MIN + "version: [1, 2]\nimage: {a: b}\ncache: {domainCacheTTL: 30}\n").warnings == ()


# --------------------------------------------------------------------------- durations

GOOD_DURATIONS = [
    ("0", 0.0),
    ("+0", 0.0),
    ("0s", 0.0),
    ("500ms", 0.5),
    ("30s", 30.0),
    ("15m", 900.0),
    ("1h30m", 5400.0),
    ("1.5h", 5400.0),
    ("1h0m0s", 3600.0),
    ("15m0s", 900.0),
    (".5s", 0.5),
    ("5.s", 5.0),
    ("1ns", 1e-9),
    ("3us", 3e-6),
    ("3µs", 3e-6),
    ("3μs", 3e-6),
    ("2h45m10.5s", 9910.5),
    ("-1m", -60.0),
    ("100ms200us", 0.1002),
]

BAD_DURATIONS = [
    "",
    "30",
    "1.5",
    "s",
    ".s",
    ".",
    "1x",
    "1S",
    "1 s",
    " 1s",
    "1s ",
    "1h-5m",
    "--1s",
    "-",
    "1e3s",
    "0x10s",
    "1d",
    "9999999999999999999h",
    "5m.",
    "1..5s",
]


@pytest.mark.parametrize(("text", "seconds"), GOOD_DURATIONS)
def test_parse_duration_good(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, abs=1e-12)


@pytest.mark.parametrize("text", BAD_DURATIONS)
def test_parse_duration_bad(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_zero_durations() -> None:
    c = ok(
        MIN
        + "timeout: 0s\nreloadInterval: '0'\n"
        + "cache: {imageCacheTTL: 0s, negativeCacheTTL: 0s, statsLogInterval: 0s}\n"
    )
    assert (c.timeout, c.reload_interval) == (900.0, 15.0)
    assert c.cache == CacheConfig(negative_cache_ttl=0.0)


def test_duration_with_surrounding_space_in_quotes() -> None:
    assert ok(MIN + "timeout: ' 20m '\n").timeout == 1200.0


# --------------------------------------------------------------------------- misc values


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:9100", "127.0.0.1:9100"),
        ("':9100'", ":9100"),
        ("'[::]:9100'", "[::]:9100"),
        ("Localhost:9100", "localhost:9100"),
        ("/run/image-cri-shim/metrics.sock", "/run/image-cri-shim/metrics.sock"),
        ("unix:///run/metrics.sock", "/run/metrics.sock"),
    ],
)
def test_metrics_address(value: str, expected: str) -> None:
    assert ok(MIN + f"metricsAddress: {value}\n").metrics_address == expected


def test_cache_size_zero_disables() -> None:
    assert ok(MIN + "cache: {imageCacheSize: 0}\n").cache.image_cache_size == 0


def test_huge_numbers_are_safe() -> None:
    c = ok(f"registries: [{{address: b.io, priority: 0x{'f' * 5000}}}]")
    assert c.registries[0].priority == 10000
    assert "a very large number is outside" in c.warnings[0]
    assert str(err(MIN + "x: " + "9" * 5000 + "\n")) == (
        f"config {P}: invalid YAML at line 2, column 4: not a valid integer"
    )


@pytest.mark.parametrize("tagged", ["!!int", "!!int abc", "!!float x", "!!timestamp x", "!!bool 7"])
def test_odd_explicit_tags_are_errors(tagged: str) -> None:
    line = str(err(MIN + "x: " + tagged + "\n"))
    assert line.startswith(f"config {P}: invalid YAML"), line


# --------------------------------------------------------------------------- resolve_cri


def sockets(tmp_path: Path, *names: str) -> tuple[str, ...]:
    paths = tuple(str(tmp_path / name) for name in ("containerd.sock", "crio.sock", "cri-dockerd.sock"))
    for name in names:
        (tmp_path / name).touch()
    return paths


def test_resolve_cri_configured_wins(tmp_path: Path) -> None:
    c = ok(MIN + "cri: unix:///somewhere/else.sock\n")
    assert resolve_cri(c, sockets(tmp_path, "containerd.sock", "crio.sock")) == "/somewhere/else.sock"


def test_resolve_cri_one_existing(tmp_path: Path) -> None:
    candidates = sockets(tmp_path, "crio.sock")
    assert resolve_cri(ok(MIN), candidates) == candidates[1]


def test_resolve_cri_several_existing(tmp_path: Path) -> None:
    candidates = sockets(tmp_path, "containerd.sock", "cri-dockerd.sock")
    with pytest.raises(ConfigError) as info:
        resolve_cri(ok(MIN), candidates)
    assert str(info.value) == (
        f"config {P}: cri: several CRI sockets exist ({candidates[0]}, {candidates[2]}): "
        "set cri to the one to use"
    )


def test_resolve_cri_none_existing(tmp_path: Path) -> None:
    candidates = sockets(tmp_path)
    assert resolve_cri(ok(MIN), candidates) == candidates[0]
    assert resolve_cri(ok(MIN), ()) == CRI_SOCKETS[0]


def test_resolve_cri_same_socket_twice_counts_once(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "containerd.sock").touch()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    candidates = (str(tmp_path / "real" / "containerd.sock"), str(tmp_path / "link" / "containerd.sock"))
    assert resolve_cri(ok(MIN), candidates) == candidates[0]


def test_resolve_cri_never_picks_the_shim(tmp_path: Path) -> None:
    shim = tmp_path / "shim.sock"
    shim.touch()
    candidates = sockets(tmp_path, "crio.sock")
    c = ok(MIN + f"shim: {shim}\n")
    assert resolve_cri(c, (str(shim), *candidates)) == candidates[1]


def test_default_candidates_are_the_contract_ones() -> None:
    assert CRI_SOCKETS == (
        "/run/containerd/containerd.sock",
        "/var/run/crio/crio.sock",
        "/var/run/cri-dockerd.sock",
    )


# --------------------------------------------------------------------------- load


def test_load_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + MIN.encode())
    c = load(str(path))
    assert c.path == str(path)
    assert c.registries[0].domain == "sealos.hub:5000"


def test_load_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("registries: [{address: b.io, priority: high}]\n")
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert str(info.value) == f'config {path}: registries[0].priority: expected an integer, got "high"'


def load_error(path: Path | str) -> str:
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert "\n" not in str(info.value)
    return str(info.value)


def test_load_missing_file(tmp_path: Path) -> None:
    assert load_error(tmp_path / "nope.yaml") == f"config {tmp_path / 'nope.yaml'}: no such file"


def test_load_directory(tmp_path: Path) -> None:
    assert load_error(tmp_path).startswith(f"config {tmp_path}: ")


def test_load_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    assert load_error(path) == f"config {path}: binary data, not YAML text"


def test_load_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(MIN.encode() + b"auth: 'caf\xe9:x'\n")
    assert load_error(path) == f"config {path}: not UTF-8 text (byte 0xe9 at offset {len(MIN) + 10})"


def test_load_too_large(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"#" * (2 << 20))
    assert "larger than" in load_error(path)


def test_load_fifo_does_not_block(tmp_path: Path) -> None:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    assert load_error(path) == f"config {path}: not a regular file"


def test_load_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(MIN)
    path.chmod(0)
    if os.geteuid() == 0:  # root reads anything: simulate what an unprivileged user gets

        def denied(*args: Any, **kwargs: Any) -> int:
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(os, "open", denied)
    try:
        assert load_error(path) == f"config {path}: permission denied"
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


# --------------------------------------------------------------------------- robustness

KEYS = [*TOP, *REGISTRY, *CACHE, *CONFIG_MAP, "version", "x", ""]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(["30s", "http://h", "b.io", "u:p", "/abs", "unix:///x", "[::1]:5", ":9100", "0"]),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=6),
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_any_document_gives_config_or_config_error(document: object) -> None:
    text = yaml.safe_dump(document)
    try:
        c = parse(text, P)
    except ConfigError as e:
        assert str(e).startswith(f"config {P}: ")
        assert "\n" not in str(e)
    else:
        assert c.registries or (c.config_map.enabled and f"config {P}: {cfg.PASSTHROUGH}" in c.warnings)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_gives_config_or_config_error(text: str) -> None:
    try:
        parse(text, P)
    except ConfigError as e:
        assert "\n" not in str(e)


YAML_BITS = [
    "- ",
    ": ",
    "\n",
    "  ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "&a ",
    "*a",
    "<<: *a",
    "!!int",
    "!!str",
    '"',
    "'",
    "#",
]
VALUES = ["30s", "http://h", "b.io", "u:p", "12:34", "0x1", ".inf", "~", "---", "?"]
FRAGMENTS = st.sampled_from([*KEYS, *YAML_BITS, *VALUES])


@settings(max_examples=300, deadline=None)
@given(st.lists(FRAGMENTS, max_size=30).map("".join))
def test_yaml_like_text_gives_config_or_config_error(text: str) -> None:
    try:
        parse(text, P)
    except ConfigError as e:
        assert "\n" not in str(e)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
        ("pause:3.9", "docker.io/library/pause:3.9"),
        ("  hub.company.com:5000/k8s/pause:3.6 ", "hub.company.com:5000/k8s/pause:3.6"),
        ('""', None),
    ],
)
def test_sandbox_image_is_normalized_as_the_runtime_names_it(value: str, expected: str | None) -> None:
    assert ok(f"address: http://r:5000\nsandboxImage: {value}\n").sandbox_image == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("Pause:3.10", 'sandboxImage: "Pause:3.10" is not an image reference'),
        ("sha256:" + "a" * 64, "sandboxImage: expected an image name, got the image ID"),
        ("[a]", "sandboxImage: expected a string"),
    ],
)
def test_sandbox_image_that_is_no_image_name_is_an_error(value: str, problem: str) -> None:
    assert problem in str(err(f"address: http://r:5000\nsandboxImage: {value}\n"))

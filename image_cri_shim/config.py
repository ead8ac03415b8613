"""The one config model shared by the master, the proxy worker, the ConfigMap syncer and the CLI.

`load(path)` reads the YAML file and `parse(text, path)` turns it into a frozen `Config`, or
raises `ConfigError` whose text is the single line the operator sees:

    config /etc/image-cri-shim/config.yaml: registries[1].priority: expected an integer, got "high"

Nothing else escapes: YAML syntax errors, wrong types and unreadable files all become that
one line. Secrets (`auth` values, passwords, credentials inside a URL) never appear in a
message, a warning or `repr(Config)`.

Validation is driven by one small schema per section (`_TOP`, `_REGISTRY`, `_CACHE`,
`_CONFIG_MAP`): each YAML key maps to a check function and a default. Two rules hold for every
key: an absent key, a YAML null and an empty string all mean "use the default" (files written
by sealos' Go shim carry `cri: ""` and `registries: null`), and an unknown key is a warning,
never an error, so a newer file still starts an older shim.
"""

from __future__ import annotations

import ipaddress
import json
import os
import posixpath
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from functools import partial
from typing import Any, NoReturn

import yaml
from yaml.constructor import ConstructorError
from yaml.reader import ReaderError

from image_cri_shim import reference

__all__ = [
    "CRI_SOCKETS",
    "DEFAULT_PATH",
    "CacheConfig",
    "Config",
    "ConfigError",
    "ConfigMapRef",
    "Registry",
    "load",
    "parse",
    "parse_duration",
    "resolve_cri",
]

DEFAULT_PATH = "/etc/image-cri-shim/config.yaml"
CRI_SOCKETS = ("/run/containerd/containerd.sock", "/var/run/crio/crio.sock", "/var/run/cri-dockerd.sock")
DEFAULT_SHIM = "/var/run/image-cri-shim.sock"
DEFAULT_STATE_DIR = "/var/lib/image-cri-shim"
DEFAULT_TIMEOUT = 900.0  # 15m
DEFAULT_RELOAD_INTERVAL = 15.0
DEFAULT_PRIORITY = 500
# A node file that leaves the registries to the ConfigMap: the shim serves, rewriting nothing.
PASSTHROUGH = "no registry configured: images pass through unchanged until the ConfigMap sets registries"
DEFAULT_OFFLINE_PRIORITY = 1000
PRIORITY_MIN, PRIORITY_MAX = 0, 10000

# A config file is a few KiB; the cap keeps a wrong path (a device, a huge log) from stalling
# the master.
_MAX_FILE_BYTES = 1 << 20
# sun_path is 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107


class ConfigError(Exception):
    """One line: 'config <path>: <key.path>: <problem>' (str(err) is exactly that line).

    File-level problems (unreadable file, YAML syntax, no registry at all) have no key path:
    'config <path>: <problem>'.
    """

    def __init__(self, path: str, key: str | None, problem: str) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        super().__init__(_line(path, key, problem))

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, str | None, str]]:
        return (ConfigError, (self.path, self.key, self.problem))


@dataclass(frozen=True)
class Registry:
    """A registry the resolver may pull from, with the credentials to send it."""

    domain: str
    scheme: str
    username: str
    password: str = field(repr=False)
    priority: int
    offline: bool
    insecure_skip_verify: bool
    ca: str | None
    key: str
    # Routing rules (docs/routing.md): (source prefix, path prefix in this registry), longest prefix
    # first so the first match is the one that wins. Empty: a candidate for every image, at the
    # image's own repository path.
    mirrors: tuple[tuple[str, str], ...] = ()

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.domain}"

    @property
    def has_credentials(self) -> bool:
        return self.username != ""


@dataclass(frozen=True)
class CacheConfig:
    image_cache_size: int = 1024
    image_cache_ttl: float = 1800.0
    negative_cache_ttl: float = 30.0
    stats_log_interval: float = 60.0
    disable_stats: bool = False


@dataclass(frozen=True)
class ConfigMapRef:
    enabled: bool = True
    namespace: str = "kube-system"
    name: str = "image-cri-shim"
    key: str = "registries.yaml"


@dataclass(frozen=True)
class Config:
    path: str
    shim: str
    cri: str | None
    registries: tuple[Registry, ...]
    force: bool
    debug: bool
    timeout: float
    reload_interval: float
    cache: CacheConfig
    metrics_address: str | None
    config_map: ConfigMapRef
    state_dir: str
    upstream: bool  # false: an image no configured registry holds is refused, never pulled as asked
    warnings: tuple[str, ...]


# --------------------------------------------------------------------------- durations

_NS = {
    "ns": 1,
    "us": 10**3,
    "µs": 10**3,
    "μs": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_DURATION_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")
_MAX_NS = 2**63 - 1  # Go's time.Duration is an int64 of nanoseconds


def parse_duration(text: str) -> float:
    """Seconds in `text`, written as Go's time.ParseDuration wants it ("1h30m", "500ms", "0").

    Go syntax rather than bare numbers because sealos' config files already use it and because
    "timeout: 30" is ambiguous (seconds? minutes?).
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a string, got {type(text).__name__}")
    rest = text
    negative = rest[:1] == "-"
    if rest[:1] in ("-", "+"):
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise ValueError(f"invalid duration {_show(text)}")
    total = 0
    while rest:
        match = _DURATION_PART.match(rest)
        assert match is not None  # every group may be empty, so the pattern always matches
        whole, frac, unit = match.group(1), match.group(2), match.group(3)
        if not whole and not frac:
            raise ValueError(f"invalid duration {_show(text)}")
        if not unit:
            raise ValueError(f"missing unit in duration {_show(text)}")
        if unit not in _NS:
            raise ValueError(f"unknown unit {_show(unit)} in duration {_show(text)}")
        scale = _NS[unit]
        total += int(whole or "0") * scale
        if frac:
            total += int(frac) * scale // 10 ** len(frac)
        if total > _MAX_NS:
            raise ValueError(f"duration {_show(text)} is out of range")
        rest = rest[match.end() :]
    return (-total if negative else total) / 1e9


# --------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and keeps `a:b` digits as text.

    YAML 1.1 reads `auth: 12:34` as the base-60 integer 754; nobody means that in this file.
    A duplicate key silently overriding an earlier one (two `registries:`) hides mistakes in
    a file that carries credentials, so it is an error.
    """

    def _int_or_text(self, node: yaml.ScalarNode) -> int | str:
        if ":" in node.value:
            return str(node.value)
        try:
            return self.construct_yaml_int(node)
        except (ValueError, IndexError):  # `!!int x`, or more digits than Python converts
            raise ConstructorError(None, None, "not a valid integer", node.start_mark) from None

    def _float_or_text(self, node: yaml.ScalarNode) -> float | str:
        if ":" in node.value:
            return str(node.value)
        try:
            return self.construct_yaml_float(node)
        except (ValueError, IndexError):
            raise ConstructorError(None, None, "not a valid number", node.start_mark) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise ConstructorError(
                        None, None, f"duplicate key {_show(key_node.value)}", key_node.start_mark
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader._int_or_text)
_Loader.add_constructor("tag:yaml.org,2002:float", _Loader._float_or_text)


def load_yaml(text: str, path: str) -> object:
    """The document in `text`; every YAML failure becomes one line with its position."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        problem = err.problem or err.context or "invalid YAML"
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(path, None, f"invalid YAML{where}: {problem}") from None
    except ReaderError as err:
        char = f"#x{err.character:04x}" if isinstance(err.character, int) else "character"
        raise ConfigError(path, None, f"invalid YAML: unacceptable {char} at offset {err.position}") from None
    except yaml.YAMLError as err:
        raise ConfigError(path, None, f"invalid YAML: {type(err).__name__}") from None
    except RecursionError:
        raise ConfigError(path, None, "invalid YAML: nested too deeply") from None
    except Exception as err:  # PyYAML's constructors fail on odd explicit tags (`!!timestamp x`)
        # Only the type: the exception text may quote the value, which may be a secret.
        raise ConfigError(
            path, None, f"invalid YAML: a value cannot be read ({type(err).__name__})"
        ) from None


# --------------------------------------------------------------------------- messages


def _line(path: str, key: str | None, problem: str) -> str:
    return f"config {path}: {key}: {problem}" if key else f"config {path}: {problem}"


def _show(value: object) -> str:
    """A short one-line rendering of a (non-secret) value for messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value) if value.bit_length() <= 64 else "a very large number"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        text = value if len(value) <= 64 else value[:61] + "..."
        quoted = json.dumps(text, ensure_ascii=False)
        return quoted.encode("utf-8", "backslashreplace").decode("utf-8")
    return describe_kind(value)


def describe_kind(value: object) -> str:
    """What sort of value this is, without showing it (it may be a secret)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, bytes):
        return "binary data"
    if value is None:
        return "null"
    return "a " + type(value).__name__


def _key_name(key: object) -> str:
    if isinstance(key, str) and key.isprintable() and 0 < len(key) <= 64:
        return key
    return _show(key)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


class _Ctx:
    """Where messages go while one document is checked."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.warnings: list[str] = []

    def fail(self, key: str | None, problem: str) -> NoReturn:
        raise ConfigError(self.path, key, problem)

    def warn(self, key: str | None, problem: str) -> None:
        self.warnings.append(_line(self.path, key, problem))


# --------------------------------------------------------------------------- checks
#
# A check takes (ctx, key path, value) and returns the typed value or calls ctx.fail. It only
# sees values that are neither null nor "" (those mean "default", see `_read`).

Check = Callable[[_Ctx, str, Any], Any]


@dataclass(frozen=True)
class _Rule:
    """One key: how its value is checked, its default, and how the reference describes it.

    docs/configuration.md is generated from these (`make docs`; a test fails when it is stale):
    `kind` is the type column, `doc` the meaning (Markdown, one paragraph), `example` a value as
    it is written in YAML (the test checks that it passes this model), and `unset` says what an
    absent key means when its default is None. The default column is rendered from `default`.
    """

    check: Check
    default: Any = None
    _: KW_ONLY
    kind: str
    doc: str
    example: str
    unset: str = ""


def _bool(ctx: _Ctx, key: str, value: object) -> bool:
    if not isinstance(value, bool):
        ctx.fail(key, f"expected true or false, got {_show(value)}")
    return value


def _int(ctx: _Ctx, key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        ctx.fail(key, f"expected an integer, got {_show(value)}")
    return value


def _cache_size(ctx: _Ctx, key: str, value: object) -> int:
    """A negative size disables the cache, with a warning (the Go shim took it that way)."""
    number = _int(ctx, key, value)
    if number < 0:
        ctx.warn(key, f"{_show(number)} is negative: the decision cache is disabled")
        return 0
    return number


def _priority(zero_default: int | None, ctx: _Ctx, key: str, value: object) -> int:
    """An int clamped to 0..10000 with a warning; `zero_default` replaces a literal 0."""
    number = _int(ctx, key, value)
    if number == 0 and zero_default is not None:
        return zero_default
    clamped = min(max(number, PRIORITY_MIN), PRIORITY_MAX)
    if clamped != number:
        ctx.warn(key, f"{_show(number)} is outside {PRIORITY_MIN}..{PRIORITY_MAX}, using {clamped}")
    return clamped


def _duration(zero: float | None, ctx: _Ctx, key: str, value: object) -> float:
    """Seconds from a Go duration string; `zero` (when set) replaces a zero duration."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        ctx.fail(key, f'expected a duration with a unit, e.g. "30s" or "15m", got {_show(value)}')
    if not isinstance(value, str):
        ctx.fail(key, f'expected a duration such as "30s" or "1h30m", got {_show(value)}')
    try:
        seconds = parse_duration(value.strip())
    except ValueError as err:
        if value.strip().isdigit():
            ctx.fail(key, f'{_show(value)} has no unit: write e.g. "{value.strip()}s"')
        ctx.fail(key, f'{err}: expected e.g. "500ms", "30s", "15m" or "1h30m"')
    if seconds < 0:
        ctx.fail(key, f"must not be negative, got {_show(value)}")
    if seconds == 0 and zero is not None:
        return zero
    return seconds


def _text(ctx: _Ctx, key: str, value: object) -> str:
    if not isinstance(value, str):
        ctx.fail(key, f"expected a string, got {_show(value)}")
    return value


def _abs_path(ctx: _Ctx, key: str, value: object) -> str:
    text = _text(ctx, key, value).strip()
    if not text.startswith("/"):
        ctx.fail(key, f"expected an absolute path, got {_show(value)}")
    if "\0" in text:
        ctx.fail(key, "a path cannot contain a NUL character")
    return posixpath.normpath(text)


def _socket_path(ctx: _Ctx, key: str, value: object) -> str:
    """An absolute unix socket path; a `unix://` prefix (kubelet's spelling) is stripped."""
    text = _text(ctx, key, value).strip()
    if text.startswith("unix://"):
        text = text[len("unix://") :]
    elif "://" in text:
        ctx.fail(key, f"expected an absolute path or a unix:// URL, got {_show(value)}")
    path = _abs_path(ctx, key, text)
    if len(path.encode("utf-8", "surrogateescape")) > _MAX_SOCKET_PATH:
        ctx.fail(key, f"socket path is longer than {_MAX_SOCKET_PATH} bytes: {_show(path)}")
    return path


# The domain grammar of image references: a rewritten name must still parse.
_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"{_COMPONENT}(?:\.{_COMPONENT})*")


class _Bad(Exception):
    """A problem found by a helper that has no ctx; the caller adds the key path."""


def _host_port(text: str, *, host_optional: bool) -> tuple[str, int | None]:
    """Split and check `host[:port]` or `[v6]:port`; the host comes back lower-cased."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise _Bad(f"missing ']' after the IPv6 address in {_show(text)}")
        literal, rest = text[1:end], text[end + 1 :]
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            raise _Bad(f"{_show(literal)} is not an IPv6 address") from None
        host = f"[{literal.lower()}]"
        if rest and not rest.startswith(":"):
            raise _Bad(f"unexpected {_show(rest)} after the IPv6 address")
        port_text = rest[1:] if rest else None
    else:
        if text.count(":") > 1:
            raise _Bad(f"an IPv6 address must be written in brackets, e.g. [fd00::1]:5000, got {_show(text)}")
        host, colon, port_text_ = text.partition(":")
        port_text = port_text_ if colon else None
        host = host.lower()
        if not host and not host_optional:
            raise _Bad(f"no host in {_show(text)}")
        if host and not _DOMAIN.fullmatch(host):
            raise _Bad(f"{_show(host)} is not a valid host name")
    if port_text is None:
        return host, None
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise _Bad(f"port {_show(port_text)} is not a number from 1 to 65535")
    return host, int(port_text)


def _address(bare_ok: bool, ctx: _Ctx, key: str, value: object) -> tuple[str, str]:
    """(scheme, domain) of a registry root URL, or of a bare `host[:port]` when `bare_ok`."""
    want = "an http:// or https:// URL" + (' or "host[:port]"' if bare_ok else "")
    if not isinstance(value, str):
        ctx.fail(key, f"expected {want}, got {_show(value)}")
    text = value.strip()
    # A value with userinfo carries a password: never echo it.
    shown = "the value (not shown: it contains credentials)" if "@" in text else _show(text)
    scheme, sep, rest = text.partition("://")
    if not sep:
        if not bare_ok:
            ctx.fail(key, f"expected an http:// or https:// URL, got {shown}")
        scheme, rest = "https", text
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        ctx.fail(key, f"expected an http:// or https:// URL, got {shown}")
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
    tail = rest[len(netloc) :]
    if "@" in netloc:
        ctx.fail(key, "credentials in the URL are not allowed: put them in auth")
    if "?" in tail or "#" in tail:
        ctx.fail(key, f"a query or fragment is not allowed in a registry address, got {shown}")
    if tail not in ("", "/"):
        ctx.fail(key, f"a path is not allowed ({_show(tail)}): give the registry's root, got {shown}")
    if not netloc:
        ctx.fail(key, f"no host in {shown}")
    try:
        host, port = _host_port(netloc, host_optional=False)
    except _Bad as err:
        ctx.fail(key, str(err))
    return scheme, host if port is None else f"{host}:{port}"


def _auth(ctx: _Ctx, key: str, value: object) -> tuple[str, str]:
    """(user, password) from "user:password", split at the first colon. Never echoed."""
    if not isinstance(value, str):
        ctx.fail(key, f'expected a string "user:password", got {describe_kind(value)}')
    user, colon, password = value.partition(":")
    if not colon:
        ctx.fail(key, 'expected "user:password" (value not shown): there is no colon')
    if not user:
        ctx.fail(key, 'expected "user:password" (value not shown): the user name before the colon is empty')
    return user, password


def _metrics_address(ctx: _Ctx, key: str, value: object) -> str:
    """`host:port` (empty host = every interface) or an absolute unix socket path."""
    if not isinstance(value, str):
        hint = (
            f' (write e.g. "127.0.0.1:{value}")'
            if isinstance(value, int) and not isinstance(value, bool)
            else ""
        )
        ctx.fail(key, f'expected "host:port" or an absolute socket path, got {_show(value)}{hint}')
    text = value.strip()
    if text.startswith(("/", "unix://")):
        return _socket_path(ctx, key, text)
    if ":" not in text:
        ctx.fail(key, f'expected "host:port" or an absolute socket path, got {_show(value)}')
    try:
        host, port = _host_port(text, host_optional=True)
    except _Bad as err:
        ctx.fail(key, str(err))
    if port is None:
        ctx.fail(key, f"no port in {_show(value)}")
    return f"{host}:{port}"


def _pattern(regex: str, limit: int, what: str) -> Check:
    compiled = re.compile(regex)

    def check(ctx: _Ctx, key: str, value: object) -> str:
        text = _text(ctx, key, value)
        if len(text) > limit or not compiled.fullmatch(text) or text in (".", ".."):
            ctx.fail(key, f"expected {what}, got {_show(value)}")
        return text

    return check


_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"


def _mirrors(ctx: _Ctx, key: str, value: object) -> tuple[tuple[str, str], ...]:
    """Routing rules {source prefix: path prefix}, checked, longest prefix first (docs/routing.md).

    Each rule's key path quotes the source prefix (`mirrors."docker.io"`): prefixes contain dots.
    """
    if not isinstance(value, dict):
        ctx.fail(
            key,
            "expected a mapping of source prefix to path prefix, e.g. {docker.io: dockerhub},"
            f" got {_show(value)}",
        )
    rules: dict[str, str] = {}
    spelled: dict[str, object] = {}
    for source, target in value.items():
        where = f"{key}.{_show(source)}"
        prefix = _source_prefix(ctx, where, source)
        if prefix in rules:
            ctx.fail(where, f"the same source prefix as {_show(spelled[prefix])}: keep one")
        rules[prefix] = _path_prefix(ctx, where, target)
        spelled[prefix] = source
    return tuple(sorted(rules.items(), key=lambda rule: (-len(rule[0]), rule[0])))


def _source_prefix(ctx: _Ctx, key: str, value: object) -> str:
    if not isinstance(value, str):
        ctx.fail(key, f"expected a source prefix such as docker.io or quay.io/cilium, got {_show(value)}")
    try:
        return reference.normalize_prefix(value)
    except reference.ReferenceError as err:
        ctx.fail(key, str(err))


def _path_prefix(ctx: _Ctx, key: str, value: object) -> str:
    """The path prefix in the mirror; null or "" keeps the rest of the path as it is."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not reference.is_path_prefix(value):
        ctx.fail(
            key,
            'expected a repository path prefix in this registry, such as "dockerhub" or "mirrors/quay"'
            f' (or "" for none), got {_show(value)}',
        )
    return value


# --------------------------------------------------------------------------- schema

# Keys sealos' Go image-cri-shim wrote or read that mean nothing here: accepted, ignored.
#   version   CRI API version of old releases (v1 / v1alpha2): we serve both
#   image     image directory of old releases (already unused there)
#   sync      image sync period of the first releases
_LEGACY_TOP = frozenset({"version", "image", "sync"})
# The Go shim briefly read extra registries from files in this directory; they are not read here.
_REGISTRY_DIR_KEY = "registry.d"
_LEGACY_CACHE = frozenset({"domainCacheTTL"})  # the Go shim's domain cache; we have none

_REGISTRY: dict[str, _Rule] = {
    "address": _Rule(
        partial(_address, True),
        kind="URL or host[:port]",
        unset="required",
        doc="The registry's root: `https://host[:port]`, `http://host[:port]` for a plain-http registry, or a"
        " bare `host[:port]`, which means https. No path, no credentials in the URL. Two entries (or an"
        " entry and `address`) with the same host and port are an error.",
        example="backup.company.com:5000",
    ),
    "auth": _Rule(
        _auth,
        ("", ""),
        kind="user:password",
        doc="Credentials sent to this registry and to no other; split at the first colon, so the password"
        " may contain `:`. Empty: anonymous. In the ConfigMap also `{username: ..., password: ...}`.",
        example="puller:PASSWORD",
    ),
    # Zero means "not set", as in the Go shim (and as offlinePriority's zero does).
    "priority": _Rule(
        partial(_priority, DEFAULT_PRIORITY),
        DEFAULT_PRIORITY,
        kind="integer",
        doc=f"Higher is tried first (ties: `address` first, then by host). Clamped to"
        f" {PRIORITY_MIN}..{PRIORITY_MAX} with a warning.",
        example="800",
    ),
    "insecureSkipVerify": _Rule(
        _bool,
        False,
        kind="boolean",
        doc="Do not verify this registry's TLS certificate when probing it. Prefer `ca`. No effect on an"
        " `http://` registry. The runtime pulls, so it needs its own trust settings too (operations.md).",
        example="true",
    ),
    "ca": _Rule(
        _abs_path,
        kind="absolute path",
        unset="the system CAs",
        doc="A PEM file of the CA certificates to verify this registry's certificate with.",
        example="/etc/image-cri-shim/backup-ca.pem",
    ),
    "mirrors": _Rule(
        _mirrors,
        (),
        kind="mapping: source prefix → path prefix",
        doc="Routing rules ([routing.md](routing.md)). With rules, the registry is a candidate only for"
        " images whose normalized name starts with a source prefix (whole path components; the longest"
        ' wins), looked up at the path prefix followed by the rest of the name; `""` keeps the rest as'
        " it is. Without rules (or `{}`), a candidate for every image at the image's own path. Replaced"
        " as a whole by a ConfigMap that sets it.",
        example="{docker.io: dockerhub, quay.io: quay}",
    ),
}

_CACHE: dict[str, _Rule] = {
    "imageCacheSize": _Rule(
        _cache_size,
        CacheConfig.image_cache_size,
        kind="integer",
        doc="The most rewrite decisions kept (least recently used go first). `0` disables the cache: every"
        " PullImage asks the registries afresh; a negative value does too, with a warning.",
        example="2048",
    ),
    # Zero means "default" as in the Go shim, whose written files carry "0s" for unset TTLs.
    "imageCacheTTL": _Rule(
        partial(_duration, CacheConfig.image_cache_ttl),
        CacheConfig.image_cache_ttl,
        kind="duration",
        doc='How long a positive decision ("found in registry X") is kept.',
        example="1h",
    ),
    # Zero here means what it says: "nobody has it" is not remembered.
    "negativeCacheTTL": _Rule(
        partial(_duration, None),
        CacheConfig.negative_cache_ttl,
        kind="duration",
        doc='How long "no registry holds it" (and a refusal under `upstream: false`) is kept, so kubelet\'s'
        " retries cost no registry traffic. `0s`: not kept at all.",
        example="10s",
    ),
    "statsLogInterval": _Rule(
        partial(_duration, CacheConfig.stats_log_interval),
        CacheConfig.stats_log_interval,
        kind="duration",
        doc="Period of the cache-statistics log line (hits, misses, size).",
        example="5m",
    ),
    "disableStats": _Rule(
        _bool,
        False,
        kind="boolean",
        doc="Turn the cache-statistics log line off.",
        example="true",
    ),
}

_CONFIG_MAP: dict[str, _Rule] = {
    "enabled": _Rule(
        _bool,
        ConfigMapRef.enabled,
        kind="boolean",
        doc="`false`: the syncer stays idle and never contacts the API server.",
        example="false",
    ),
    "namespace": _Rule(
        _pattern(_DNS_LABEL, 63, "a namespace name (lower-case letters, digits, '-')"),
        ConfigMapRef.namespace,
        kind="namespace name",
        doc="Namespace of the ConfigMap (and of the Role and RoleBinding that let nodes read it).",
        example="infra",
    ),
    "name": _Rule(
        _pattern(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*", 253, "a ConfigMap name (lower-case DNS name)"),
        ConfigMapRef.name,
        kind="ConfigMap name",
        doc="Name of the ConfigMap; the Role's `resourceNames` must name it.",
        example="image-cri-shim-gpu",
    ),
    "key": _Rule(
        _pattern(r"[-._a-zA-Z0-9]+", 253, "a ConfigMap key (letters, digits, '-', '_', '.')"),
        ConfigMapRef.key,
        kind="ConfigMap key",
        doc="The key of the ConfigMap's `data` whose value is merged into this file.",
        example="gpu-nodes.yaml",
    ),
}


def _section(schema: dict[str, _Rule], legacy: frozenset[str] = frozenset()) -> Check:
    def check(ctx: _Ctx, key: str, value: object) -> dict[str, Any]:
        return _read(ctx, key, value, schema, legacy)

    return check


def _registries(ctx: _Ctx, key: str, value: object) -> list[Registry]:
    if not isinstance(value, list):
        ctx.fail(key, f"expected a list of registries, got {_show(value)}")
    found = []
    for index, item in enumerate(value):
        where = f"{key}[{index}]"
        if not isinstance(item, dict):
            ctx.fail(where, f"expected a mapping with an address, got {_show(item)}")
        entry = _read(ctx, where, item, _REGISTRY)
        if entry["address"] is None:
            ctx.fail(f"{where}.address", "missing: every registry needs an address")
        found.append(_registry(ctx, where, entry, offline=False))
    return found


_TOP: dict[str, _Rule] = {
    "shim": _Rule(
        _socket_path,
        DEFAULT_SHIM,
        kind="absolute path or unix:// URL",
        doc="The socket the shim serves on (mode 0660; its directory is created). kubelet's"
        " `imageServiceEndpoint` and crictl's `image-endpoint` point here.",
        example="/run/image-cri-shim.sock",
    ),
    "cri": _Rule(
        _socket_path,
        kind="absolute path or unix:// URL",
        unset="auto-detect",
        doc=f"The runtime's CRI socket. Unset: of {', '.join(f'`{p}`' for p in CRI_SOCKETS)}, the one that"
        " exists; several existing is an error naming them; none falls back to the first (with `force`,"
        " the shim waits for it).",
        example="unix:///run/containerd/containerd.sock",
    ),
    "address": _Rule(
        partial(_address, False),
        kind="http:// or https:// URL",
        unset="none",
        doc='The primary ("offline") registry, tried with priority `offlinePriority`. At least one of'
        " `address` and `registries` must be set, unless ConfigMap sync is on: a node file without"
        " either passes images through unchanged until the ConfigMap sets registries. ConfigMap:"
        " `sealos.address`.",
        example="https://registry.company.com",
    ),
    "auth": _Rule(
        _auth,
        ("", ""),
        kind="user:password",
        doc="Credentials of `address`, split at the first colon (the password may contain `:`); empty:"
        " anonymous. ConfigMap: `sealos.auth`, also as `{username: ..., password: ...}`.",
        example="admin:PASSWORD",
    ),
    "offlinePriority": _Rule(
        partial(_priority, DEFAULT_OFFLINE_PRIORITY),
        DEFAULT_OFFLINE_PRIORITY,
        kind="integer",
        doc=f"The priority of `address` among the registries. Clamped to {PRIORITY_MIN}..{PRIORITY_MAX}"
        " with a warning.",
        example="900",
    ),
    "insecureSkipVerify": _Rule(
        _bool,
        False,
        kind="boolean",
        doc="`registries[].insecureSkipVerify`, for `address`.",
        example="true",
    ),
    "ca": _Rule(
        _abs_path,
        kind="absolute path",
        unset="the system CAs",
        doc="`registries[].ca`, for `address`.",
        example="/etc/image-cri-shim/registry-ca.pem",
    ),
    "mirrors": _Rule(
        _mirrors,
        (),
        kind="mapping: source prefix → path prefix",
        doc="`registries[].mirrors`: the routing rules of `address`. ConfigMap: `sealos.mirrors`.",
        example="{docker.io: dockerhub, registry.k8s.io: k8s}",
    ),
    "upstream": _Rule(
        _bool,
        True,
        kind="boolean",
        doc="`false`: when no configured registry holds an image, PullImage fails with `NOT_FOUND` and a"
        " message listing each candidate's answer, instead of going to the image's own registry"
        " ([routing.md](routing.md)).",
        example="false",
    ),
    "registries": _Rule(
        _registries,
        [],
        kind="list of registries",
        doc="Further registries, each a mapping with the keys of the next table. Replaced as a whole by"
        " a ConfigMap that sets it.",
        example="[{address: backup.company.com, auth: 'puller:PASSWORD', priority: 800}]",
    ),
    "force": _Rule(
        _bool,
        False,
        kind="boolean",
        doc="Start even if the CRI socket does not exist yet, and wait for it: readiness is reported"
        " once the shim serves.",
        example="true",
    ),
    "debug": _Rule(
        _bool,
        False,
        kind="boolean",
        doc="Debug logging (every CRI call). Takes effect on reload.",
        example="true",
    ),
    # Zero means "default" for these too, as in the Go shim.
    "timeout": _Rule(
        partial(_duration, DEFAULT_TIMEOUT),
        DEFAULT_TIMEOUT,
        kind="duration",
        doc="The upper bound of any call to the runtime, PullImage included (the caller's deadline is"
        " capped by it), and the time a replaced worker gives the calls still running.",
        example="20m",
    ),
    "reloadInterval": _Rule(
        partial(_duration, DEFAULT_RELOAD_INTERVAL),
        DEFAULT_RELOAD_INTERVAL,
        kind="duration",
        doc="Period of the config-file poll (a fallback to the file watch), of the syncer's re-check of"
        " the file against the ConfigMap, and of its retries without cluster access.",
        example="60s",
    ),
    "cache": _Rule(
        _section(_CACHE, _LEGACY_CACHE),
        {},
        kind="mapping",
        doc="The rewrite-decision cache: the keys of the `cache` table. A ConfigMap that sets some of"
        " them keeps the others.",
        example="{imageCacheSize: 2048, imageCacheTTL: 1h}",
    ),
    "metricsAddress": _Rule(
        _metrics_address,
        kind="host:port or absolute socket path",
        unset="off",
        doc="Where the Prometheus text endpoint listens; an empty host means every interface.",
        example="127.0.0.1:9798",
    ),
    "configMap": _Rule(
        _section(_CONFIG_MAP),
        {},
        kind="mapping",
        doc="Which ConfigMap this node follows: the keys of the `configMap` table. Read from the node's"
        " own file only; the same key inside the ConfigMap is ignored.",
        example="{enabled: false}",
    ),
    "stateDir": _Rule(
        _abs_path,
        DEFAULT_STATE_DIR,
        kind="absolute path",
        doc="What the shim keeps across restarts: which caller name was pulled as which rewritten name."
        " Created with mode 0700.",
        example="/data/image-cri-shim",
    ),
}


def _read(
    ctx: _Ctx, prefix: str, raw: object, schema: dict[str, _Rule], legacy: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Check one mapping against its schema: {key: checked value or default}.

    Unknown keys are warned about (with the closest known key), legacy keys are skipped,
    null and "" mean the default. Keys are checked in schema order so the first error
    reported does not depend on the order of the file.
    """
    if not isinstance(raw, dict):
        ctx.fail(prefix or None, f"expected a mapping, got {_show(raw)}")
    for key in raw:
        if key in schema or key in legacy:
            continue
        name = _key_name(key)
        if prefix == "" and key == _REGISTRY_DIR_KEY:
            ctx.warn(name, "is not supported: list those registries under registries")
            continue
        ctx.warn(_join(prefix, name), "unknown key, ignored" + _did_you_mean(key, schema))
    values: dict[str, Any] = {}
    for key, rule in schema.items():
        value = raw.get(key)
        if value is None or (isinstance(value, str) and value == ""):
            values[key] = rule.default
        else:
            values[key] = rule.check(ctx, _join(prefix, key), value)
    return values


def _did_you_mean(key: object, known: Mapping[str, object]) -> str:
    if not isinstance(key, str):
        return ""
    by_lower = {name.lower(): name for name in known}
    import difflib  # only for a misspelled key: the master does not carry it otherwise

    close = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {_show(by_lower[close[0]])}?)" if close else ""


def _registry(ctx: _Ctx, key: str, entry: dict[str, Any], *, offline: bool) -> Registry:
    scheme, domain = entry["address"]
    user, password = entry["auth"]
    if scheme == "http":
        for name in ("insecureSkipVerify", "ca"):
            if entry[name]:
                ctx.warn(_join(key, name) if not offline else name, "has no effect on an http:// registry")
    _check_mirror_paths(ctx, "mirrors" if offline else _join(key, "mirrors"), domain, entry["mirrors"])
    return Registry(
        domain=domain,
        scheme=scheme,
        username=user,
        password=password,
        priority=entry["priority"],
        offline=offline,
        insecure_skip_verify=entry["insecureSkipVerify"],
        ca=entry["ca"],
        key=key,
        mirrors=entry["mirrors"],
    )


def _check_mirror_paths(ctx: _Ctx, key: str, domain: str, mirrors: tuple[tuple[str, str], ...]) -> None:
    """Warn about `docker.io: harbor.company.com/dockerhub`: valid, but the value is a path
    inside the registry, so the result would be harbor.company.com/harbor.company.com/..."""
    host = domain.split(":", 1)[0]  # a path component has no port: compare the host only
    for source, path in mirrors:
        if path.split("/", 1)[0] == host:
            ctx.warn(
                f"{key}.{_show(source)}",
                f"starts with the registry's own domain: give the path inside {domain}, e.g. dockerhub",
            )


# --------------------------------------------------------------------------- assembly


def parse(text: str, path: str) -> Config:
    """Check the YAML `text` (named `path` in messages) and build the Config, or raise ConfigError."""
    ctx = _Ctx(path)
    document = load_yaml(text, path)
    if document is None:
        ctx.fail(None, "the file is empty: at least address or registries must be set")
    if not isinstance(document, dict):
        ctx.fail(None, f"expected a mapping of settings at the top level, got {describe_kind(document)}")
    top = _read(ctx, "", document, _TOP, _LEGACY_TOP)

    registries: list[Registry] = []
    if top["address"] is not None:
        offline = {
            "address": top["address"],
            "auth": top["auth"],
            "priority": top["offlinePriority"],
            "insecureSkipVerify": top["insecureSkipVerify"],
            "ca": top["ca"],
            "mirrors": top["mirrors"],
        }
        registries.append(_registry(ctx, "address", offline, offline=True))
    else:
        for name in ("auth", "insecureSkipVerify", "ca", "mirrors"):
            if document.get(name) not in (None, "", False, {}):
                ctx.warn(name, "has no effect without address")
    registries.extend(top["registries"])
    config_map = top["configMap"]
    if not registries:
        if not config_map.get("enabled", ConfigMapRef.enabled):
            ctx.fail(None, "no registry configured: set address or registries")
        ctx.warn(None, PASSTHROUGH)
    _check_unique(ctx, registries)

    shim = top["shim"]
    for name in ("cri", "metricsAddress"):
        if top[name] == shim:
            ctx.fail(name, f"is the same socket as shim ({_show(shim)})")
    cache = top["cache"]
    return Config(
        path=path,
        shim=shim,
        cri=top["cri"],
        registries=tuple(sorted(registries, key=lambda r: (-r.priority, not r.offline, r.domain))),
        force=top["force"],
        debug=top["debug"],
        timeout=top["timeout"],
        reload_interval=top["reloadInterval"],
        cache=CacheConfig(
            image_cache_size=cache.get("imageCacheSize", CacheConfig.image_cache_size),
            image_cache_ttl=cache.get("imageCacheTTL", CacheConfig.image_cache_ttl),
            negative_cache_ttl=cache.get("negativeCacheTTL", CacheConfig.negative_cache_ttl),
            stats_log_interval=cache.get("statsLogInterval", CacheConfig.stats_log_interval),
            disable_stats=cache.get("disableStats", CacheConfig.disable_stats),
        ),
        metrics_address=top["metricsAddress"],
        config_map=ConfigMapRef(
            enabled=config_map.get("enabled", ConfigMapRef.enabled),
            namespace=config_map.get("namespace", ConfigMapRef.namespace),
            name=config_map.get("name", ConfigMapRef.name),
            key=config_map.get("key", ConfigMapRef.key),
        ),
        state_dir=top["stateDir"],
        upstream=top["upstream"],
        warnings=tuple(ctx.warnings),
    )


def _check_unique(ctx: _Ctx, registries: list[Registry]) -> None:
    """Two entries for one domain would make priority and credentials ambiguous."""
    first: dict[str, Registry] = {}
    for registry in registries:
        earlier = first.setdefault(registry.domain, registry)
        if earlier is not registry:
            ctx.fail(
                _join(registry.key, "address"),
                f"registry {_show(registry.domain)} is already configured at {_address_key(earlier)}",
            )


def _address_key(registry: Registry) -> str:
    return "address" if registry.offline else f"{registry.key}.address"


def load(path: str) -> Config:
    """Read the file at `path` and parse it; any failure is a ConfigError naming the file."""
    return parse_bytes(read(path), path)


def read(path: str) -> bytes:
    """The bytes of the config file at `path` (bounded), or a ConfigError naming the file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(path, None, "no such file") from None
    except PermissionError:
        raise ConfigError(path, None, "permission denied") from None
    except OSError as err:
        raise ConfigError(path, None, f"cannot open: {err.strerror or type(err).__name__}") from None
    try:
        with os.fdopen(fd, "rb") as handle:
            # O_NONBLOCK keeps a FIFO from blocking the open; only regular files are read.
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise ConfigError(path, None, "not a regular file")
            data = handle.read(_MAX_FILE_BYTES + 1)
    except OSError as err:
        raise ConfigError(path, None, f"cannot read: {err.strerror or type(err).__name__}") from None
    if len(data) > _MAX_FILE_BYTES:
        raise ConfigError(path, None, f"larger than {_MAX_FILE_BYTES} bytes: not a config file")
    return data


def parse_bytes(data: bytes, path: str) -> Config:
    """`parse` for the bytes of a file: NUL bytes and other encodings are refused in one line."""
    if b"\0" in data:
        raise ConfigError(path, None, "binary data, not YAML text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(
            path, None, f"not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})"
        ) from None
    return parse(text, path)


def resolve_cri(config: Config, candidates: tuple[str, ...] = CRI_SOCKETS) -> str:
    """The upstream CRI socket: the configured one, else the single existing candidate.

    Guessing between two runtimes would proxy kubelet to the wrong one, so several existing
    candidates is an error; none existing falls back to containerd's path (with `force` the
    shim waits for it).
    """
    if config.cri:
        return config.cri
    existing: list[str] = []
    seen: set[str] = {os.path.realpath(config.shim)}  # never proxy to ourselves
    for candidate in candidates:
        real = os.path.realpath(candidate)
        if os.path.exists(candidate) and real not in seen:
            seen.add(real)
            existing.append(candidate)
    if len(existing) > 1:
        raise ConfigError(
            config.path,
            "cri",
            f"several CRI sockets exist ({', '.join(existing)}): set cri to the one to use",
        )
    if existing:
        return existing[0]
    return candidates[0] if candidates else CRI_SOCKETS[0]

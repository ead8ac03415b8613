"""The checks of single values: each takes (ctx, key path, value) and returns the typed value or
calls `ctx.fail` with the one-line problem.

A check only sees values that are neither null nor "" (those mean "default", see `reading.py`).
Values that may be secrets (`auth`, a URL with credentials) are never echoed.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections.abc import Callable
from typing import Any

from image_cri_shim import reference
from image_cri_shim.config.durations import parse_duration
from image_cri_shim.config.errors import Ctx
from image_cri_shim.config.model import PRIORITY_MAX, PRIORITY_MIN
from image_cri_shim.config.yamlio import describe_kind, show

Check = Callable[[Ctx, str, Any], Any]

# sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


def boolean(ctx: Ctx, key: str, value: object) -> bool:
    if not isinstance(value, bool):
        ctx.fail(key, f"expected true or false, got {show(value)}")
    return value


def integer(ctx: Ctx, key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        ctx.fail(key, f"expected an integer, got {show(value)}")
    return value


def cache_size(ctx: Ctx, key: str, value: object) -> int:
    """A negative size disables the cache, with a warning (the Go shim took it that way)."""
    number = integer(ctx, key, value)
    if number < 0:
        ctx.warn(key, f"{show(number)} is negative: the decision cache is disabled")
        return 0
    return number


def priority(zero_default: int | None, ctx: Ctx, key: str, value: object) -> int:
    """An int clamped to 0..10000 with a warning; `zero_default` replaces a literal 0."""
    number = integer(ctx, key, value)
    if number == 0 and zero_default is not None:
        return zero_default
    clamped = min(max(number, PRIORITY_MIN), PRIORITY_MAX)
    if clamped != number:
        ctx.warn(key, f"{show(number)} is outside {PRIORITY_MIN}..{PRIORITY_MAX}, using {clamped}")
    return clamped


def duration(zero: float | None, ctx: Ctx, key: str, value: object) -> float:
    """Seconds from a Go duration string; `zero` (when set) replaces a zero duration."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        ctx.fail(key, f'expected a duration with a unit, e.g. "30s" or "15m", got {show(value)}')
    if not isinstance(value, str):
        ctx.fail(key, f'expected a duration such as "30s" or "1h30m", got {show(value)}')
    try:
        seconds = parse_duration(value.strip())
    except ValueError as err:
        if value.strip().isdigit():
            ctx.fail(key, f'{show(value)} has no unit: write e.g. "{value.strip()}s"')
        ctx.fail(key, f'{err}: expected e.g. "500ms", "30s", "15m" or "1h30m"')
    if seconds < 0:
        ctx.fail(key, f"must not be negative, got {show(value)}")
    if seconds == 0 and zero is not None:
        return zero
    return seconds


def string(ctx: Ctx, key: str, value: object) -> str:
    if not isinstance(value, str):
        ctx.fail(key, f"expected a string, got {show(value)}")
    return value


def abs_path(ctx: Ctx, key: str, value: object) -> str:
    text = string(ctx, key, value).strip()
    if not text.startswith("/"):
        ctx.fail(key, f"expected an absolute path, got {show(value)}")
    if "\0" in text:
        ctx.fail(key, "a path cannot contain a NUL character")
    return posixpath.normpath(text)


def socket_path(ctx: Ctx, key: str, value: object) -> str:
    """An absolute unix socket path; a `unix://` prefix (kubelet's spelling) is stripped."""
    text = string(ctx, key, value).strip()
    if text.startswith("unix://"):
        text = text[len("unix://") :]
    elif "://" in text:
        ctx.fail(key, f"expected an absolute path or a unix:// URL, got {show(value)}")
    path = abs_path(ctx, key, text)
    if len(path.encode("utf-8", "surrogateescape")) > MAX_SOCKET_PATH:
        ctx.fail(key, f"socket path is longer than {MAX_SOCKET_PATH} bytes: {show(path)}")
    return path


class _Bad(Exception):
    """A problem found by a helper that has no ctx; the caller adds the key path."""


def _host_port(text: str, *, host_optional: bool) -> tuple[str, int | None]:
    """Split and check `host[:port]` or `[v6]:port`; the host comes back lower-cased."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise _Bad(f"missing ']' after the IPv6 address in {show(text)}")
        literal, rest = text[1:end], text[end + 1 :]
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            raise _Bad(f"{show(literal)} is not an IPv6 address") from None
        host = f"[{literal.lower()}]"
        if rest and not rest.startswith(":"):
            raise _Bad(f"unexpected {show(rest)} after the IPv6 address")
        port_text = rest[1:] if rest else None
    else:
        if text.count(":") > 1:
            raise _Bad(f"an IPv6 address must be written in brackets, e.g. [fd00::1]:5000, got {show(text)}")
        host, colon, port_text_ = text.partition(":")
        port_text = port_text_ if colon else None
        host = host.lower()
        if not host and not host_optional:
            raise _Bad(f"no host in {show(text)}")
        if host and not reference.is_host_name(host):
            raise _Bad(f"{show(host)} is not a valid host name")
    if port_text is None:
        return host, None
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise _Bad(f"port {show(port_text)} is not a number from 1 to 65535")
    return host, int(port_text)


def address(bare_ok: bool, ctx: Ctx, key: str, value: object) -> tuple[str, str]:
    """(scheme, domain) of a registry root URL, or of a bare `host[:port]` when `bare_ok`."""
    want = "an http:// or https:// URL" + (' or "host[:port]"' if bare_ok else "")
    if not isinstance(value, str):
        ctx.fail(key, f"expected {want}, got {show(value)}")
    text = value.strip()
    # A value with userinfo carries a password: never echo it.
    shown = "the value (not shown: it contains credentials)" if "@" in text else show(text)
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
        ctx.fail(key, f"a path is not allowed ({show(tail)}): give the registry's root, got {shown}")
    if not netloc:
        ctx.fail(key, f"no host in {shown}")
    try:
        host, port = _host_port(netloc, host_optional=False)
    except _Bad as err:
        ctx.fail(key, str(err))
    return scheme, host if port is None else f"{host}:{port}"


def auth(ctx: Ctx, key: str, value: object) -> tuple[str, str]:
    """(user, password) from "user:password", split at the first colon. Never echoed."""
    if not isinstance(value, str):
        ctx.fail(key, f'expected a string "user:password", got {describe_kind(value)}')
    user, colon, password = value.partition(":")
    if not colon:
        ctx.fail(key, 'expected "user:password" (value not shown): there is no colon')
    if not user:
        ctx.fail(key, 'expected "user:password" (value not shown): the user name before the colon is empty')
    return user, password


def metrics_address(ctx: Ctx, key: str, value: object) -> str:
    """`host:port` (empty host = every interface) or an absolute unix socket path."""
    if not isinstance(value, str):
        hint = (
            f' (write e.g. "127.0.0.1:{value}")'
            if isinstance(value, int) and not isinstance(value, bool)
            else ""
        )
        ctx.fail(key, f'expected "host:port" or an absolute socket path, got {show(value)}{hint}')
    text = value.strip()
    if text.startswith(("/", "unix://")):
        return socket_path(ctx, key, text)
    if ":" not in text:
        ctx.fail(key, f'expected "host:port" or an absolute socket path, got {show(value)}')
    try:
        host, port = _host_port(text, host_optional=True)
    except _Bad as err:
        ctx.fail(key, str(err))
    if port is None:
        ctx.fail(key, f"no port in {show(value)}")
    return f"{host}:{port}"


def pattern(regex: str, limit: int, what: str) -> Check:
    compiled = re.compile(regex)

    def check(ctx: Ctx, key: str, value: object) -> str:
        text = string(ctx, key, value)
        if len(text) > limit or not compiled.fullmatch(text) or text in (".", ".."):
            ctx.fail(key, f"expected {what}, got {show(value)}")
        return text

    return check


def image(ctx: Ctx, key: str, value: object) -> str:
    """An image reference (not an image ID), normalized as the runtime names it."""
    text = string(ctx, key, value).strip()
    if reference.is_image_id(text):
        ctx.fail(key, f"expected an image name, got the image ID {show(value)}")
    try:
        return str(reference.parse(text))
    except reference.ReferenceError as err:
        ctx.fail(key, f"{show(value)} is not an image reference: {err}")


DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"


def mirrors(ctx: Ctx, key: str, value: object) -> tuple[tuple[str, str], ...]:
    """Routing rules {source prefix: path prefix}, checked, longest prefix first (docs/routing.md).

    Each rule's key path quotes the source prefix (`mirrors."docker.io"`): prefixes contain dots.
    """
    if not isinstance(value, dict):
        ctx.fail(
            key,
            "expected a mapping of source prefix to path prefix, e.g. {docker.io: dockerhub},"
            f" got {show(value)}",
        )
    rules: dict[str, str] = {}
    spelled: dict[str, object] = {}
    for source, target in value.items():
        where = f"{key}.{show(source)}"
        prefix = _source_prefix(ctx, where, source)
        if prefix in rules:
            ctx.fail(where, f"the same source prefix as {show(spelled[prefix])}: keep one")
        rules[prefix] = _path_prefix(ctx, where, target)
        spelled[prefix] = source
    return tuple(sorted(rules.items(), key=lambda rule: (-len(rule[0]), rule[0])))


def _source_prefix(ctx: Ctx, key: str, value: object) -> str:
    if not isinstance(value, str):
        ctx.fail(key, f"expected a source prefix such as docker.io or quay.io/cilium, got {show(value)}")
    try:
        return reference.normalize_prefix(value)
    except reference.ReferenceError as err:
        ctx.fail(key, str(err))


def _path_prefix(ctx: Ctx, key: str, value: object) -> str:
    """The path prefix in the mirror; null or "" keeps the rest of the path as it is."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not reference.is_path_prefix(value):
        ctx.fail(
            key,
            'expected a repository path prefix in this registry, such as "dockerhub" or "mirrors/quay"'
            f' (or "" for none), got {show(value)}',
        )
    return value

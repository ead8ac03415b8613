"""A document becomes a `Config`: the top-level table is read, the `address` keys become the
offline registry, and the rules that span keys are checked (at least one registry, no domain
twice, no socket used twice)."""

from __future__ import annotations

from typing import Any

from image_cri_shim.config.errors import ConfigError, Ctx
from image_cri_shim.config.model import PASSTHROUGH, Config, Registry
from image_cri_shim.config.reading import field_values, read_section
from image_cri_shim.config.registries import check_unique, registry
from image_cri_shim.config.schema import LEGACY_TOP, REGISTRY, TOP
from image_cri_shim.config.yamlio import describe_kind, load_yaml, show

__all__ = ["parse", "parse_bytes"]

# The keys of `address` besides itself and its priority, which mean nothing without it.
_WITH_ADDRESS = ("auth", "insecureSkipVerify", "ca", "mirrors")


def parse(text: str, path: str, source: bytes = b"") -> Config:
    """Check the YAML `text` (named `path` in messages) and build the Config, or raise ConfigError."""
    ctx = Ctx(path)
    document = load_yaml(text, path)
    if document is None:
        ctx.fail(None, "the file is empty: at least address or registries must be set")
    if not isinstance(document, dict):
        ctx.fail(None, f"expected a mapping of settings at the top level, got {describe_kind(document)}")
    top = read_section(ctx, "", document, TOP, LEGACY_TOP)
    registries = _offline(ctx, document, top) + top["registries"]
    if not registries:
        if not top["configMap"].enabled:
            ctx.fail(None, "no registry configured: set address or registries")
        ctx.warn(None, PASSTHROUGH)
    check_unique(ctx, registries)
    for name in ("cri", "metricsAddress"):
        if top[name] == top["shim"]:
            ctx.fail(name, f"is the same socket as shim ({show(top['shim'])})")
    return Config(
        path=path,
        registries=tuple(sorted(registries, key=lambda r: (-r.priority, not r.offline, r.domain))),
        warnings=tuple(ctx.warnings),
        source=source,
        **field_values(TOP, top),
    )


def _offline(ctx: Ctx, document: dict[Any, Any], top: dict[str, Any]) -> list[Registry]:
    """The registry of the top-level `address` keys, if `address` is set."""
    if top["address"] is None:
        for name in _WITH_ADDRESS:
            if document.get(name) not in (None, "", False, {}):
                ctx.warn(name, "has no effect without address")
        return []
    entry = {rule.registry_key: top[key] for key, rule in TOP.items() if rule.registry_key}
    return [registry(ctx, "address", REGISTRY, entry, offline=True)]


def parse_bytes(data: bytes, path: str) -> Config:
    """`parse` for the bytes of a file: NUL bytes and other encodings are refused in one line.

    The Config keeps `data` as its `source`, so what is compared later is what was applied.
    """
    if b"\0" in data:
        raise ConfigError(path, None, "binary data, not YAML text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(
            path, None, f"not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})"
        ) from None
    return parse(text, path, data)

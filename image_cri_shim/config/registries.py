"""Registry entries: one checked entry becomes a `Registry`, and a list of them must not repeat a
domain (two entries for one domain would make priority and credentials ambiguous)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from image_cri_shim.config.errors import Ctx
from image_cri_shim.config.model import Registry
from image_cri_shim.config.reading import Table, field_values, join, read_section
from image_cri_shim.config.yamlio import show

__all__ = ["Registries", "check_unique", "registry"]


def registry(ctx: Ctx, key: str, schema: Table, entry: Mapping[str, Any], *, offline: bool) -> Registry:
    """The Registry of one checked entry (`key` is where it is in the file: `registries[1]`, `address`)."""
    made = Registry(**field_values(schema, entry), offline=offline, key=key)
    if made.scheme == "http":
        for name in ("insecureSkipVerify", "ca"):
            if entry[name]:
                ctx.warn(join(key, name) if not offline else name, "has no effect on an http:// registry")
    _check_mirror_paths(ctx, "mirrors" if offline else join(key, "mirrors"), made.domain, made.mirrors)
    return made


def _check_mirror_paths(ctx: Ctx, key: str, domain: str, mirrors: tuple[tuple[str, str], ...]) -> None:
    """Warn about `docker.io: harbor.company.com/dockerhub`: valid, but the value is a path
    inside the registry, so the result would be harbor.company.com/harbor.company.com/..."""
    host = domain.split(":", 1)[0]  # a path component has no port: compare the host only
    for source, path in mirrors:
        if path.split("/", 1)[0] == host:
            ctx.warn(
                f"{key}.{show(source)}",
                f"starts with the registry's own domain: give the path inside {domain}, e.g. dockerhub",
            )


@dataclass(frozen=True)
class Registries:
    """The check of `registries`: a list of entries, each read with `table`."""

    table: Table

    def __call__(self, ctx: Ctx, key: str, value: object) -> list[Registry]:
        if not isinstance(value, list):
            ctx.fail(key, f"expected a list of registries, got {show(value)}")
        found = []
        for index, item in enumerate(value):
            where = f"{key}[{index}]"
            if not isinstance(item, dict):
                ctx.fail(where, f"expected a mapping with an address, got {show(item)}")
            entry = read_section(ctx, where, item, self.table)
            if entry["address"] is None:
                ctx.fail(f"{where}.address", "missing: every registry needs an address")
            found.append(registry(ctx, where, self.table, entry, offline=False))
        return found


def check_unique(ctx: Ctx, registries: list[Registry]) -> None:
    """Fail on the second entry for a domain, naming where the first is."""
    first: dict[str, Registry] = {}
    for entry in registries:
        earlier = first.setdefault(entry.domain, entry)
        if earlier is not entry:
            ctx.fail(
                join(entry.key, "address"),
                f"registry {show(entry.domain)} is already configured at {_address_key(earlier)}",
            )


def _address_key(entry: Registry) -> str:
    return "address" if entry.offline else f"{entry.key}.address"

"""The generic walk over a schema table: one mapping of the file checked key by key.

Two rules hold for every key: an absent key, a YAML null and an empty string all mean "use the
default" (files written by sealos' Go shim carry `cri: ""` and `registries: null`), and an
unknown key is a warning, never an error, so a newer file still starts an older shim.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any

from image_cri_shim.config.checks import Check
from image_cri_shim.config.errors import Ctx
from image_cri_shim.config.yamlio import key_name, show

__all__ = ["Rule", "Section", "Table", "field_values", "join", "read_section"]

# The Go shim briefly read extra registries from files in this directory; they are not read here.
_REGISTRY_DIR_KEY = "registry.d"


@dataclass(frozen=True)
class Rule:
    """One key: how its value is checked, its default, the field it fills, and its reference entry.

    docs/configuration.md is generated from these (`make docs`; a test fails when it is stale):
    `kind` is the type column, `doc` the meaning (Markdown, one paragraph), `example` a value as
    it is written in YAML (the test checks that it passes this model), and `unset` says what an
    absent key means when its default is None. The default column is rendered from `default`.

    `field` names the dataclass field the checked value fills; a tuple spreads a tuple value over
    several fields (`address` -> scheme, domain), and None leaves the value to the assembly in
    `build.py`. `registry_key`: the `registries[]` key a top-level key stands for in `address`.
    """

    check: Check
    default: Any = None
    _: KW_ONLY
    field: str | tuple[str, ...] | None
    kind: str
    doc: str
    example: str
    unset: str = ""
    registry_key: str | None = None


Table = Mapping[str, Rule]


def join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def read_section(
    ctx: Ctx, prefix: str, raw: object, schema: Table, legacy: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Check one mapping against its schema: {key: checked value or default}.

    Unknown keys are warned about (with the closest known key), legacy keys are skipped,
    null and "" mean the default. Keys are checked in schema order so the first error
    reported does not depend on the order of the file.
    """
    if not isinstance(raw, dict):
        ctx.fail(prefix or None, f"expected a mapping, got {show(raw)}")
    for key in raw:
        if key in schema or key in legacy:
            continue
        name = key_name(key)
        if prefix == "" and key == _REGISTRY_DIR_KEY:
            ctx.warn(name, "is not supported: list those registries under registries")
            continue
        ctx.warn(join(prefix, name), "unknown key, ignored" + _did_you_mean(key, schema))
    values: dict[str, Any] = {}
    for key, rule in schema.items():
        value = raw.get(key)
        if value is None or (isinstance(value, str) and value == ""):
            values[key] = rule.default
        else:
            values[key] = rule.check(ctx, join(prefix, key), value)
    return values


def _did_you_mean(key: object, known: Mapping[str, object]) -> str:
    if not isinstance(key, str):
        return ""
    by_lower = {name.lower(): name for name in known}
    import difflib  # only for a misspelled key: the master does not carry it otherwise

    close = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {show(by_lower[close[0]])}?)" if close else ""


def field_values(schema: Table, values: Mapping[str, Any]) -> dict[str, Any]:
    """The dataclass fields that the checked `values` of `schema` fill, by each rule's `field`."""
    found: dict[str, Any] = {}
    for key, rule in schema.items():
        if isinstance(rule.field, tuple):
            found.update(zip(rule.field, values[key], strict=True))
        elif rule.field is not None:
            found[rule.field] = values[key]
    return found


@dataclass(frozen=True)
class Section:
    """The check of a nested mapping (`cache`, `configMap`): its table, read into its dataclass."""

    table: Table
    make: Callable[..., Any]
    legacy: frozenset[str] = frozenset()

    def __call__(self, ctx: Ctx, key: str, value: object) -> Any:
        return self.make(**field_values(self.table, read_section(ctx, key, value, self.table, self.legacy)))

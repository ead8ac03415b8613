"""docs/configuration.md is what tools/configdoc.py writes from the config model, and the model's
descriptions are complete and true: every key documented, every example accepted by the model."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from image_cri_shim import config
from image_cri_shim.config import parse, parse_duration
from image_cri_shim.config import schema as config_schema
from image_cri_shim.config.errors import Ctx
from image_cri_shim.config.reading import Rule
from tools import configdoc

KEYS = [(prefix, key, rule) for _, prefix, schema, _ in configdoc.SECTIONS for key, rule in schema.items()]
BASE = "https://base.company.com"

# The keys docs/configuration.md, docs/configmap.md and docs/routing.md document, as key paths.
# The model may have more; it must not have fewer.
DOCUMENTED_KEYS = [
    "shim",
    "cri",
    "address",
    "auth",
    "registries",
    "registries[].address",
    "registries[].auth",
    "registries[].priority",
    "offlinePriority",
    "force",
    "debug",
    "timeout",
    "reloadInterval",
    "cache.imageCacheSize",
    "cache.imageCacheTTL",
    "cache.negativeCacheTTL",
    "cache.statsLogInterval",
    "cache.disableStats",
    "registries[].insecureSkipVerify",
    "registries[].ca",
    "insecureSkipVerify",
    "ca",
    "metricsAddress",
    "configMap",
    "configMap.enabled",
    "configMap.namespace",
    "configMap.name",
    "configMap.key",
    "stateDir",
    "mirrors",
    "registries[].mirrors",
    "upstream",
]


def test_the_reference_is_up_to_date() -> None:
    assert configdoc.TARGET.read_text() == configdoc.render(), (
        "docs/configuration.md is stale: run `make docs` and commit the result"
    )


def test_every_schema_of_the_model_has_a_section() -> None:
    schemas = [
        value
        for value in vars(config_schema).values()
        if isinstance(value, dict) and value and all(isinstance(rule, Rule) for rule in value.values())
    ]
    documented = [schema for _, _, schema, _ in configdoc.SECTIONS]
    assert sorted(map(id, schemas)) == sorted(map(id, documented))


def test_every_contract_key_is_documented() -> None:
    text = configdoc.TARGET.read_text()
    paths = {prefix + key for prefix, key, _ in KEYS}
    assert set(DOCUMENTED_KEYS) <= paths, set(DOCUMENTED_KEYS) - paths
    for path in paths:
        assert f"| `{path}` |" in text, f"{path} has no row"
    for spelling in ("sealos.address", "sealos.auth", "sealos.mirrors"):
        assert f"`{spelling}`" in text, spelling


@pytest.mark.parametrize(("prefix", "key", "rule"), KEYS, ids=[p + k for p, k, _ in KEYS])
def test_every_key_is_described(prefix: str, key: str, rule: Rule) -> None:
    assert rule.kind.strip() and rule.doc.strip() and rule.example.strip()
    assert rule.doc.rstrip().endswith((".", ")")), "a description is a sentence"
    if rule.default is None:
        assert rule.unset, "what an absent key means must be said when it has no default value"
    else:
        assert not rule.unset, "`unset` is for keys without a default value"
    assert "|" not in rule.example, "an example must fit a table cell"


def document(prefix: str, key: str, value: Any) -> dict[str, Any]:
    """A config that sets only `key` (with the one registry any config needs)."""
    if prefix == "registries[].":
        entry = {key: value} if key == "address" else {"address": "mirror.company.com", key: value}
        return {"registries": [entry]}
    if prefix:
        return {"address": BASE, prefix.rstrip("."): {key: value}}
    return {key: value} if key in ("address", "registries") else {"address": BASE, key: value}


@pytest.mark.parametrize(("prefix", "key", "rule"), KEYS, ids=[p + k for p, k, _ in KEYS])
def test_every_example_is_accepted_and_not_the_default(prefix: str, key: str, rule: Rule) -> None:
    value = yaml.safe_load(rule.example)
    parsed = parse(yaml.safe_dump(document(prefix, key, value)), "example.yaml")
    assert not parsed.warnings, parsed.warnings
    assert rule.check(Ctx("example.yaml"), prefix + key, value) != rule.default, (
        "an example should show something other than the default"
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (0.5, "500ms"),
        (15.0, "15s"),
        (60.0, "1m"),
        (900.0, "15m"),
        (5400.0, "1h30m"),
        (90061.5, "25h1m1s500ms"),
    ],
)
def test_durations_are_written_as_go_writes_them(seconds: float, text: str) -> None:
    assert configdoc.format_duration(seconds) == text
    assert parse_duration(text) == seconds


def test_every_duration_default_reads_back_as_itself() -> None:
    durations = [rule for _, _, rule in KEYS if rule.kind == "duration"]
    assert durations
    for rule in durations:
        assert parse_duration(configdoc.format_duration(rule.default)) == rule.default


def test_defaults_come_from_the_model() -> None:
    """Spot checks that the rendered defaults are the model's values, not copies of them."""
    text = configdoc.TARGET.read_text()
    assert f"| `shim` | absolute path or unix:// URL | `{config.DEFAULT_SHIM}` |" in text
    assert f"| `registries[].priority` | integer | `{config.DEFAULT_PRIORITY}` |" in text
    assert f"| `cache.imageCacheSize` | integer | `{config.CacheConfig.image_cache_size}` |" in text
    for socket in config.CRI_SOCKETS:
        assert f"`{socket}`" in text


def test_the_configmap_table_is_what_merge_does() -> None:
    """The forms shown all merge; an ignored key leaves the node's file as it was."""
    for text, _ in configdoc.CONFIGMAP_FORMS:
        changed = configdoc.changed_keys(text + "\n", configdoc.LOCAL)
        if text.startswith(("version:", "configMap:", "debug: null")):
            assert changed == [], text
        else:
            assert changed, text

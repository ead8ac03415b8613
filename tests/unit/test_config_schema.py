"""The config package's shape: every field of the model is filled by a schema row, changed keys are
named as the file spells them, a parsed file keeps the bytes it came from, and the modules stay
small and import no private name of another."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from image_cri_shim.changes import changed_keys
from image_cri_shim.config import CacheConfig, Config, ConfigMapRef, Registry, load, parse, parse_bytes
from image_cri_shim.config.reading import Table
from image_cri_shim.config.schema import CACHE, CONFIG_MAP, REGISTRY, TOP
from image_cri_shim.supervisor.machine import Machine

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = [ROOT / "image_cri_shim", ROOT / "supervisor", ROOT / "syncer", ROOT / "workers"]
MIN = "address: http://sealos.hub:5000\n"


def filled(table: Table) -> set[str]:
    names: set[str] = set()
    for rule in table.values():
        names.update(rule.field if isinstance(rule.field, tuple) else (rule.field,) if rule.field else ())
    return names


@pytest.mark.parametrize(
    ("model", "table", "assembled"),
    [
        (Config, TOP, {"path", "registries", "warnings", "source"}),
        (Registry, REGISTRY, {"offline", "key"}),
        (CacheConfig, CACHE, set()),
        (ConfigMapRef, CONFIG_MAP, set()),
    ],
)
def test_every_field_is_filled_by_one_row(model: type, table: Table, assembled: set[str]) -> None:
    """A field without a row would silently keep its dataclass default."""
    fields = {f.name for f in dataclasses.fields(model)}
    assert filled(table) == fields - assembled


def test_every_address_key_stands_for_a_registry_key() -> None:
    offline = {rule.registry_key for rule in TOP.values() if rule.registry_key}
    assert offline <= set(REGISTRY)
    assert {"address", "auth", "priority"} <= offline


def test_changed_keys_are_spelled_as_in_the_file() -> None:
    old = parse(MIN, "a.yaml")
    new = parse(
        MIN + "cache: {imageCacheTTL: 1h, negativeCacheTTL: 1s}\nconfigMap: {name: other}\n", "a.yaml"
    )
    assert changed_keys(old, new) == ["cache.imageCacheTTL", "cache.negativeCacheTTL", "configMap.name"]


def test_a_loaded_config_keeps_the_bytes_it_was_parsed_from(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(MIN.encode())
    config = load(str(path))
    assert config.source == MIN.encode()
    assert "source" not in repr(config)  # it holds the passwords
    assert parse(MIN, "x").source == b""
    assert parse_bytes(MIN.encode(), "x") == parse(MIN, "x")  # the source takes no part in equality


def test_the_master_compares_with_what_it_applied_not_with_a_second_read(tmp_path: Path) -> None:
    """A file rewritten between start-up's parse and the watch's set-up is still a change."""
    path = tmp_path / "config.yaml"
    path.write_bytes(MIN.encode())
    applied = load(str(path))
    path.write_bytes(MIN.encode() + b"debug: true\n")
    assert Machine(str(path), applied, None, 0.0).loaded == MIN.encode()


def product_modules() -> list[Path]:
    return sorted({p for top in PRODUCT for p in top.resolve().rglob("*.py") if "protos" not in p.parts})


def test_no_product_module_imports_a_private_name_of_another() -> None:
    found = []
    for path in product_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("image_cri_shim"):
                found += [
                    f"{path.name}: {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert found == []


def test_the_config_modules_stay_small() -> None:
    sizes = {
        p.name: len(p.read_text().splitlines()) for p in (ROOT / "image_cri_shim" / "config").glob("*.py")
    }
    assert max(sizes.values()) <= 400, sizes

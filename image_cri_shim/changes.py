"""Which config keys differ between two configs, by name and never by value.

A reload line that says `changed=timeout,registries[backup.company.com].auth` tells the
operator what took effect without writing a password or a changed value into the journal.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from image_cri_shim.config import Config, Registry

# Config fields that are not keys of the file, or are compared on their own.
_SKIP = {"path", "warnings", "registries"}
# A registry's fields as the keys an operator writes.
_REGISTRY_KEYS = {
    "scheme": "address",
    "username": "auth",
    "password": "auth",
    "priority": "priority",
    "insecure_skip_verify": "insecureSkipVerify",
    "ca": "ca",
    "mirrors": "mirrors",
}


def yaml_key(field: str) -> str:
    """`reload_interval` -> `reloadInterval`."""
    head, *rest = field.split("_")
    return head + "".join(part.title() for part in rest)


def changed_keys(old: Config, new: Config) -> list[str]:
    keys: list[str] = []
    for field in dataclasses.fields(Config):
        if field.name in _SKIP:
            continue
        keys.extend(_differences(yaml_key(field.name), getattr(old, field.name), getattr(new, field.name)))
    keys.extend(_registry_changes(old.registries, new.registries))
    return keys


def _differences(key: str, old: Any, new: Any) -> list[str]:
    if old == new:
        return []
    if dataclasses.is_dataclass(old) and dataclasses.is_dataclass(new):
        return [
            f"{key}.{yaml_key(f.name)}"
            for f in dataclasses.fields(old)
            if getattr(old, f.name) != getattr(new, f.name)
        ]
    return [key]


def _registry_changes(old: tuple[Registry, ...], new: tuple[Registry, ...]) -> list[str]:
    before = {r.domain: r for r in old}
    after = {r.domain: r for r in new}
    keys: list[str] = []
    for domain in sorted(before.keys() | after.keys()):
        name = f"registries[{domain}]"
        a, b = before.get(domain), after.get(domain)
        if a is None:
            keys.append(f"{name} added")
        elif b is None:
            keys.append(f"{name} removed")
        else:
            if a.offline != b.offline:
                keys.append(f"{name} moved {'to' if b.offline else 'from'} address")
            fields = dict.fromkeys(k for f, k in _REGISTRY_KEYS.items() if getattr(a, f) != getattr(b, f))
            keys.extend(f"{name}.{k}" for k in fields)
    return keys

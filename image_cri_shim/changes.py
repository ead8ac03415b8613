"""Which config keys differ between two configs, by name and never by value.

A reload line that says `changed=timeout,registries[backup.company.com].auth` tells the
operator what took effect without writing a password or a changed value into the journal.
The names come from the schema's rows, so a key is named as the operator writes it.
"""

from __future__ import annotations

from image_cri_shim.config import Config, Registry
from image_cri_shim.config.reading import Rule, Section, Table
from image_cri_shim.config.schema import REGISTRY, TOP


def _field_keys(table: Table) -> dict[str, str]:
    """{dataclass field: the key that fills it} (`username` and `password` are both `auth`)."""
    keys: dict[str, str] = {}
    for key, rule in table.items():
        names = rule.field if isinstance(rule.field, tuple) else (rule.field,)
        keys.update((name, key) for name in names if name is not None)
    return keys


# A registry is known by its domain: what else differs is named by the key that sets it.
_REGISTRY_KEYS = {name: key for name, key in _field_keys(REGISTRY).items() if name != "domain"}


def changed_keys(old: Config, new: Config) -> list[str]:
    keys: list[str] = []
    for key, rule in TOP.items():
        if isinstance(rule.field, str):
            keys.extend(_differences(key, rule, getattr(old, rule.field), getattr(new, rule.field)))
    keys.extend(_registry_changes(old.registries, new.registries))
    return keys


def _differences(key: str, rule: Rule, old: object, new: object) -> list[str]:
    if old == new:
        return []
    if isinstance(rule.check, Section):
        fields = _field_keys(rule.check.table)
        return [f"{key}.{fields[name]}" for name in fields if getattr(old, name) != getattr(new, name)]
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

"""Merge the ConfigMap's `registries.yaml` into the local config text: a pure decision.

    merge(configmap_text, local_text, path) -> Merged(text, config, ...) | Rejected(reason, ...)

The rules (docs/configmap.md, "How it is merged") and why they are these:

- A key the ConfigMap sets overrides the local value; a key it does not set keeps the local
  value, so node-local settings (`shim`, `cri`, `stateDir`, ...) survive a cluster-wide map.
- A key set to null or "" counts as not set, as in the config file itself (docs/configuration.md): maps
  generated from Go structs carry `auth: ""` for fields nobody filled in, and those must not
  wipe a node's credentials.
- `registries` replaces the local list as a whole: merging lists entry by entry would leave
  registries on a node that the operator removed from the map.
- `cache` merges per sub-key: it holds independent tunables, and setting one size in the map
  should not reset a node's TTLs.
- `sealos.address` / `sealos.auth` / `sealos.mirrors` become `address` / `auth` / `mirrors`; an
  `auth` written as `{username, password}` becomes the `user:password` string the config file uses.
- `mirrors` (top level, or in a `registries` entry, docs/routing.md) replaces the local rules as a
  whole, like `registries`: merging rule by rule would keep routes the operator removed, and an
  air-gapped node must not keep pulling through a rule nobody sees in the map any more.
  `upstream` is an ordinary key.
- `version` is legacy and ignored. `configMap` is ignored too (and said so): where the syncer
  reads from is each node's own choice, and a map that could disable or redirect its own
  syncer would cut every node off from the next correction.
- Other keys, unknown ones included, are copied: a newer map reaches a newer worker.

The result keeps the local key order (new keys are appended) and must pass `config.parse`, the
same validation the worker uses; otherwise nothing is to be written and `Rejected.reason` says
why in one line that never contains a secret. When the merged document equals the local one
the local text comes back unchanged (comments included), which makes merging idempotent on
bytes: "write only when the content differs" never rewrites a file for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

# The same YAML reading as the config model (duplicate keys refused, `a:b` kept as text, one-line
# errors), so a map and a config file are read by one set of rules.
from image_cri_shim.config import Config, ConfigError, parse
from image_cri_shim.config.yamlio import describe_kind, load_yaml

__all__ = ["HEADER", "Merged", "Rejected", "merge"]

# The first line of every file the syncer writes, so an operator editing it knows why a value
# comes back.
HEADER = "# Written by the image-cri-shim ConfigMap syncer: keys the ConfigMap sets override this file.\n"

_IGNORED = frozenset({"version"})  # the CRI API version of old releases: both are served
_NODE_ONLY = frozenset({"configMap"})
_AUTH_KEYS = frozenset({"username", "password"})
_MAX_REASON = 300


@dataclass(frozen=True)
class Merged:
    """The text to have in the config file (maybe the local text unchanged) and its Config."""

    text: str
    config: Config
    notes: tuple[str, ...] = ()  # ConfigMap keys that were ignored, one line each
    passwords: tuple[str, ...] = ()  # found in the ConfigMap: for the log redaction


@dataclass(frozen=True)
class Rejected:
    """Nothing is to be written; `reason` is one line without any secret."""

    reason: str
    passwords: tuple[str, ...] = ()


class _Bad(Exception):
    """A problem with the ConfigMap's document; the message is the reason."""


def merge(configmap_text: str, local_text: str, path: str) -> Merged | Rejected:
    """The config text after applying the ConfigMap to `local_text` (named `path` in messages)."""
    try:
        wanted = _document(configmap_text, "registries.yaml", empty="is empty")
    except _Bad as bad:
        return Rejected(_one_line(str(bad)))
    passwords = tuple(_passwords(wanted))
    try:
        local = _document(local_text, "the local config", empty=None)
        overrides, notes = _overrides(wanted)
        merged = _apply(local, overrides)
        before, after = _dump(local, "the local config"), _dump(merged, "the merged config")
    except _Bad as bad:
        return Rejected(_one_line(str(bad)), passwords)
    text = local_text if after == before else HEADER + after
    try:
        config = parse(text, path)
    except ConfigError as err:
        where = f"{err.key}: {err.problem}" if err.key else err.problem
        return Rejected(_one_line(f"the merged config is invalid: {where}"), passwords)
    return Merged(text, config, tuple(notes), passwords)


# --------------------------------------------------------------------------- reading


def _document(text: str, what: str, *, empty: str | None) -> dict[Any, Any]:
    """The top-level mapping of `text`; `empty` is the problem an empty document is (None: fine)."""
    try:
        document = load_yaml(text, what)
    except ConfigError as err:
        raise _Bad(f"{what}: {err.problem}") from None
    if document is None:
        if empty is not None:
            raise _Bad(f"{what} {empty}")
        return {}
    if not isinstance(document, dict):
        raise _Bad(f"{what}: expected a mapping of settings, got {describe_kind(document)}")
    return document


def _unset(value: object) -> bool:
    return value is None or (isinstance(value, str) and value == "")


def _overrides(wanted: dict[Any, Any]) -> tuple[dict[Any, Any], list[str]]:
    """{local key: value} for every key the ConfigMap sets, in its order, translated."""
    out: dict[Any, Any] = {}
    notes: list[str] = []
    origin: dict[str, str] = {}  # "address" -> "sealos.address", to name a conflict
    for key, value in wanted.items():
        if key in _IGNORED or _unset(value):
            continue
        if key in _NODE_ONLY:
            notes.append(f"{key}: set in each node's own config only, ignored")
        elif key == "sealos":
            for local_key, (source, translated) in _sealos(value, notes).items():
                _set(out, origin, local_key, source, translated)
        elif key == "registries":
            _set(out, origin, key, key, _registries(value))
        elif key == "auth":
            _set(out, origin, key, key, _auth(value, "auth"))
        elif key == "cache" and isinstance(value, dict):
            subkeys = {k: v for k, v in value.items() if not _unset(v)}
            if subkeys:
                out[key] = subkeys
        else:
            _set(out, origin, key, _name(key), value)
    return out, notes


def _set(out: dict[Any, Any], origin: dict[str, str], key: Any, source: str, value: object) -> None:
    if key in origin and origin[key] != source:
        raise _Bad(f"both {origin[key]} and {source} are set: keep one")
    if isinstance(key, str):
        origin[key] = source
    out[key] = value


def _sealos(value: object, notes: list[str]) -> dict[str, tuple[str, object]]:
    if not isinstance(value, dict):
        raise _Bad(f"sealos: expected a mapping with address, auth and mirrors, got {describe_kind(value)}")
    found: dict[str, tuple[str, object]] = {}
    for key, item in value.items():
        if key == "address":
            if not _unset(item):
                found["address"] = ("sealos.address", item)
        elif key == "auth":
            if not _unset(item):
                found["auth"] = ("sealos.auth", _auth(item, "sealos.auth"))
        elif key == "mirrors":
            if not _unset(item):
                found["mirrors"] = ("sealos.mirrors", item)
        else:
            notes.append(f"sealos.{_name(key)}: unknown key, ignored (sealos has address, auth and mirrors)")
    return found


def _registries(value: object) -> object:
    """Each entry with its auth translated; anything odd is left for `config.parse` to name."""
    if not isinstance(value, list):
        return value
    entries: list[object] = []
    for index, entry in enumerate(value):
        if isinstance(entry, dict) and not _unset(entry.get("auth")):
            entry = {**entry, "auth": _auth(entry["auth"], f"registries[{index}].auth")}
        entries.append(entry)
    return entries


def _auth(value: object, where: str) -> str:
    """`user:password` from either spelling. Messages name the key, never the value."""
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        raise _Bad(f'{where}: expected {{username, password}} or "user:password", got {describe_kind(value)}')
    for key in value:
        if key not in _AUTH_KEYS:
            raise _Bad(f"{where}.{_name(key)}: unknown key (auth has username and password)")
    user = _credential(value.get("username"), f"{where}.username")
    password = _credential(value.get("password"), f"{where}.password")
    if ":" in user:
        raise _Bad(f"{where}.username: must not contain ':'")
    if not user and password:
        raise _Bad(f"{where}: a password without a username")
    return f"{user}:{password}" if user else ""


def _credential(value: object, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        # A YAML number loses leading zeros (and 0123 is octal): only a quoted string is exact.
        raise _Bad(f"{where}: expected a string (quote it), got {describe_kind(value)}")
    return value


def _passwords(wanted: dict[Any, Any]) -> list[str]:
    """Every password the ConfigMap carries, however malformed, so the log can mask it."""
    auths: list[object] = [wanted.get("auth")]
    sealos = wanted.get("sealos")
    if isinstance(sealos, dict):
        auths.append(sealos.get("auth"))
    registries = wanted.get("registries")
    if isinstance(registries, list):
        auths.extend(entry.get("auth") for entry in registries if isinstance(entry, dict))
    found: list[str] = []
    for auth in auths:
        if isinstance(auth, str) and ":" in auth:
            found.append(auth.partition(":")[2])
        elif isinstance(auth, dict):
            password = auth.get("password")
            if isinstance(password, str | int | float) and not isinstance(password, bool):
                found.append(str(password))
    return [p for p in found if p]


# --------------------------------------------------------------------------- writing


def _apply(local: dict[Any, Any], overrides: dict[Any, Any]) -> dict[Any, Any]:
    """The local document with the overrides: same key order, new keys appended."""
    merged = dict(local)
    for key, value in overrides.items():
        current = merged.get(key)
        if key == "cache" and isinstance(value, dict) and isinstance(current, dict):
            merged[key] = {**current, **value}
        else:
            merged[key] = value
    return merged


class _Dumper(yaml.SafeDumper):
    """Block style, no anchors: the file is read by people as well as by the shim."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


# YAML reads these as line breaks; PyYAML may write them raw inside a single-quoted scalar, which
# then reads back folded into a space (another key, another value): such text is double-quoted,
# where they are escaped.
_BREAKS = ("\x85", "\u2028", "\u2029")


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = '"' if any(c in data for c in _BREAKS) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)


def _dump(document: dict[Any, Any], what: str) -> str:
    try:
        return yaml.dump(
            document,
            Dumper=_Dumper,
            sort_keys=False,
            allow_unicode=True,
            default_flow_style=False,
            width=4096,
        )
    except RecursionError:
        raise _Bad(f"{what} refers to itself (YAML alias loop)") from None
    except Exception as err:  # RepresenterError for values SafeDumper cannot write (!!omap...)
        raise _Bad(f"{what} cannot be written back as YAML ({type(err).__name__})") from None


# --------------------------------------------------------------------------- messages


def _name(key: object) -> str:
    """A key as a message shows it (keys are names, not secrets, but may be odd)."""
    if isinstance(key, str) and key.isprintable() and 0 < len(key) <= 64:
        return key
    return repr(key)[:64]


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _MAX_REASON else line[: _MAX_REASON - 3] + "..."

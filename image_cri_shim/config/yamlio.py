"""The YAML reading every config text goes through (the node's file and the ConfigMap's value),
and the renderings of YAML values that messages use.

Every failure becomes one `ConfigError` line with its position; a value is shown only when it
cannot be a secret, otherwise only its kind is named.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.reader import ReaderError

from image_cri_shim.config.errors import ConfigError

__all__ = ["describe_kind", "key_name", "load_yaml", "show"]


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
                        None, None, f"duplicate key {show(key_node.value)}", key_node.start_mark
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


def show(value: object) -> str:
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


def key_name(key: object) -> str:
    """A mapping key as a message names it: plain when it is short printable text."""
    if isinstance(key, str) and key.isprintable() and 0 < len(key) <= 64:
        return key
    return show(key)

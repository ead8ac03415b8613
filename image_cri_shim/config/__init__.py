"""The one config model shared by the master, the proxy worker, the ConfigMap syncer and the CLI.

`read(path)` takes the file's bytes (bounded), `parse_bytes(data, path)` or `parse(text, path)`
turns them into a frozen `Config`, and `load(path)` does both; anything wrong raises
`ConfigError`, whose text is the single line the operator sees:

    config /etc/image-cri-shim/config.yaml: registries[1].priority: expected an integer, got "high"

Nothing else escapes: YAML syntax errors, wrong types and unreadable files all become that
one line. Secrets (`auth` values, passwords, credentials inside a URL) never appear in a
message, a warning or `repr(Config)`.

The parts: `model` (the frozen values), `schema` (one row per key: check, default, field and
reference text), `checks` (single values), `reading` (the walk over a table), `registries`,
`build` (the whole document), `files` (the read), `yamlio` (the hardened YAML loader) and
`durations` (Go's duration syntax).
"""

from __future__ import annotations

from image_cri_shim.config.build import parse, parse_bytes
from image_cri_shim.config.durations import parse_duration
from image_cri_shim.config.errors import ConfigError
from image_cri_shim.config.files import load, read
from image_cri_shim.config.model import (
    CRI_SOCKETS,
    DEFAULT_PATH,
    DEFAULT_PRIORITY,
    DEFAULT_SHIM,
    PASSTHROUGH,
    CacheConfig,
    Config,
    ConfigMapRef,
    Registry,
)

__all__ = [
    "CRI_SOCKETS",
    "DEFAULT_PATH",
    "DEFAULT_PRIORITY",
    "DEFAULT_SHIM",
    "PASSTHROUGH",
    "CacheConfig",
    "Config",
    "ConfigError",
    "ConfigMapRef",
    "Registry",
    "load",
    "parse",
    "parse_bytes",
    "parse_duration",
    "read",
]

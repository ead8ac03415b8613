"""One `key=value` line per event on stderr, and the one place where secrets are redacted.

journald adds the time, the unit and the pid, so a line carries only the level, the
process role, the message and its fields. Every value passes through `redact` before it is
written: the passwords of the config and the tokens the registry client obtains are
registered here as they become known, and anything that looks like an Authorization header
value is masked as well. That makes "no secret in any log line" a property of this module
rather than a rule every call site must remember.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from typing import Any

_MASK = "***"
_AUTH_VALUE = re.compile(r"(?i)\b(basic|bearer)\s+[A-Za-z0-9._~+/=-]+")
_BARE = re.compile(r"^[A-Za-z0-9._:/@+\-\[\]]+$")

_secrets: set[str] = set()
_prefix = "proc=shim"


def register_secret(*values: str) -> None:
    """Remember values that must never be written (passwords, tokens)."""
    for value in values:
        # Very short values would mask innocent text everywhere; they are still never logged
        # on purpose, this is only the safety net.
        if value and len(value) >= 4:
            _secrets.add(value)


def forget_secrets() -> None:
    """Drop registered secrets (a reload brings a new set)."""
    _secrets.clear()


def redact(text: str) -> str:
    """Mask registered secrets and Authorization-style values in `text`."""
    text = _AUTH_VALUE.sub(lambda m: f"{m.group(1)} {_MASK}", text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, _MASK)
    return text


def _quote(value: object) -> str:
    text = redact(str(value))
    if text and _BARE.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [f"level={record.levelname.lower()}", _prefix, f"msg={_quote(record.getMessage())}"]
        fields: dict[str, object] = getattr(record, "fields", {})
        parts.extend(f"{key}={_quote(value)}" for key, value in fields.items())
        if record.exc_info and record.exc_info[1] is not None:
            parts.append(f"error={_quote(record.exc_info[1])}")
        return " ".join(parts)


class Log:
    """A logger whose calls take the message and its fields: `log.info("pulled", image=ref)`."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def debug_enabled(self) -> bool:
        return self._logger.isEnabledFor(logging.DEBUG)

    def debug(self, msg: str, **fields: Any) -> None:
        if self._logger.isEnabledFor(logging.DEBUG):
            self._logger.debug(msg, extra={"fields": fields})

    def info(self, msg: str, **fields: Any) -> None:
        self._logger.info(msg, extra={"fields": fields})

    def warning(self, msg: str, **fields: Any) -> None:
        self._logger.warning(msg, extra={"fields": fields})

    def error(self, msg: str, **fields: Any) -> None:
        self._logger.error(msg, extra={"fields": fields})


def get(name: str) -> Log:
    return Log(logging.getLogger(f"image_cri_shim.{name}"))


def setup(role: str, debug: bool = False, **static: object) -> None:
    """Send this process's lines to stderr; `role` (and `static` fields) lead every line."""
    global _prefix
    _prefix = " ".join([f"proc={role}", *(f"{k}={_quote(v)}" for k, v in static.items())])
    root = logging.getLogger("image_cri_shim")
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root.addHandler(handler)
    root.propagate = False
    # Libraries (urllib3, httpx, the kubernetes client) log and warn on their own; their lines
    # are not key=value and could carry request details. Our own lines say what matters.
    logging.captureWarnings(True)
    if not logging.getLogger().handlers:
        logging.getLogger().addHandler(logging.NullHandler())
    set_debug(debug)


def set_debug(debug: bool) -> None:
    logging.getLogger("image_cri_shim").setLevel(logging.DEBUG if debug else logging.INFO)


def register_config_secrets(passwords: Iterable[str]) -> None:
    """Replace the registered secrets with those of a freshly loaded config."""
    forget_secrets()
    register_secret(*passwords)

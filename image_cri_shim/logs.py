"""One `key=value` line per event on stderr, and the one place where secrets are redacted.

journald adds the time, the unit and the pid, so under journald a line carries only the
level, the process role, the message and its fields. Anywhere else (a terminal, a file, a
container runtime's log) a line starts with its own `time=` field, RFC 3339 in UTC with
milliseconds. Whether stderr is the journal is decided as systemd documents it: `$JOURNAL_STREAM`
holds the device and inode of the stream systemd connected, and only when stderr is that very
stream is the time left out (a process that inherited the variable but writes elsewhere keeps
its own). Into the journal a line starts with its syslog priority instead (`<4>` for a warning,
sd-daemon(3)): journald takes it as the entry's priority and strips it, so `journalctl -p warning`
shows warnings and errors. Every value passes through `redact` before it is
written: the passwords of the config and the tokens the registry client obtains are
registered here as they become known, and anything that looks like an Authorization header
value is masked as well. That makes "no secret in any log line" a property of this module
rather than a rule every call site must remember.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from typing import Any, TextIO

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


def to_journal(stream: TextIO) -> bool:
    """True when `stream` is the journal stream systemd connected to the service."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    device, colon, inode = expected.partition(":")
    if not colon or not device.isdigit() or not inode.isdigit():
        return False
    try:
        info = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


def timestamp(created: float) -> str:
    """`created` (seconds since the epoch) as RFC 3339 in UTC with milliseconds: 2026-11-29T18:02:03.123Z."""
    whole = int(created)
    millis = min(int((created - whole) * 1000), 999)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


# Syslog priorities by logging level, as sd-daemon(3) prefixes them.
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _Formatter(logging.Formatter):
    def __init__(self, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        parts = [f"level={record.levelname.lower()}", _prefix, f"msg={_quote(record.getMessage())}"]
        if self.journal:
            parts[0] = f"<{_PRIORITY.get(record.levelno, 6)}>{parts[0]}"
        else:
            parts.insert(0, f"time={timestamp(record.created)}")
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
    handler.setFormatter(_Formatter(journal=to_journal(sys.stderr)))
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

"""Durations written as Go writes them: "1h30m", "500ms", "0".

Go syntax rather than bare numbers because sealos' config files already use it and because
"timeout: 30" is ambiguous (seconds? minutes?).
"""

from __future__ import annotations

import re

from image_cri_shim.config.yamlio import show

__all__ = ["parse_duration"]

_NS = {
    "ns": 1,
    "us": 10**3,
    "µs": 10**3,
    "μs": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_DURATION_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")
_MAX_NS = 2**63 - 1  # Go's time.Duration is an int64 of nanoseconds


def parse_duration(text: str) -> float:
    """Seconds in `text`, written as Go's time.ParseDuration wants it ("1h30m", "500ms", "0")."""
    if not isinstance(text, str):
        raise ValueError(f"expected a string, got {type(text).__name__}")
    rest = text
    negative = rest[:1] == "-"
    if rest[:1] in ("-", "+"):
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise ValueError(f"invalid duration {show(text)}")
    total = 0
    while rest:
        match = _DURATION_PART.match(rest)
        assert match is not None  # every group may be empty, so the pattern always matches
        whole, frac, unit = match.group(1), match.group(2), match.group(3)
        if not whole and not frac:
            raise ValueError(f"invalid duration {show(text)}")
        if not unit:
            raise ValueError(f"missing unit in duration {show(text)}")
        if unit not in _NS:
            raise ValueError(f"unknown unit {show(unit)} in duration {show(text)}")
        scale = _NS[unit]
        total += int(whole or "0") * scale
        if frac:
            total += int(frac) * scale // 10 ** len(frac)
        if total > _MAX_NS:
            raise ValueError(f"duration {show(text)} is out of range")
        rest = rest[match.end() :]
    return (-total if negative else total) / 1e9

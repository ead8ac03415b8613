"""Pure: whether a place the service reads from or writes to is open to other users, and how to
say so in one line (the start-up checks of `startup.exposures` and `--dry-run`; the worker's
state directory, `workers/naming/store.py`).

The service runs as root. A directory another user owns or may write to can hold files that
user planted (a `names.json` that remaps images, a symbolic link where root creates a file), or
can have the socket renamed away; a config file others may read gives them its passwords.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Place:
    """What the service found at a path: its owner and permission bits (st_uid, st_mode)."""

    path: str
    owner: int
    mode: int


def _who(uid: int) -> str:
    return "root" if uid == 0 else f"uid {uid}"


def directory_exposure(what: str, place: Place, owner: int) -> str | None:
    """Why the directory `place` (named `what`, e.g. "stateDir") may hold files another user
    planted, as one line; None when only `owner` (the service's user) may change it."""
    reasons = []
    if place.owner != owner:
        reasons.append(f"owned by {_who(place.owner)}, not {_who(owner)}")
    writable = [who for who, bit in (("group", 0o020), ("others", 0o002)) if place.mode & bit]
    if writable:
        reasons.append(f"writable by {' and '.join(writable)}")
    if not reasons:
        return None
    return f"{what} {place.path} is mode {place.mode & 0o7777:04o}: {', '.join(reasons)}"


def secret_exposure(place: Place, holds_secret: bool) -> str | None:
    """Why the config file `place` gives its passwords away, as one line (never the secret);
    None when it holds none or only its owner may read it."""
    readable = [who for who, bit in (("group", 0o040), ("others", 0o004)) if place.mode & bit]
    if not holds_secret or not readable:
        return None
    return (
        f"config {place.path} is mode {place.mode & 0o7777:04o}: it holds passwords and is readable by "
        f"{' and '.join(readable)} (chmod 0600)"
    )

"""The pull faults the classifier knows, each with the cause it must find in the runtime's answer,
and what each containerd version answered when it was provoked (tests/pull-messages.json)."""

from __future__ import annotations

import json
from pathlib import Path

from image_cri_shim.workers.pull.failures import Cause

#: What each runtime version answered to each fault, written by `python -m tools.pullmessages`.
FILE = Path(__file__).resolve().parents[1] / "pull-messages.json"

# fault (see PullFaults) -> what the classifier must make of the runtime's answer
FAULTS = {
    "manifest-missing": Cause.NOT_FOUND,
    "blob-missing": Cause.NOT_FOUND,
    "platform-missing": Cause.NOT_FOUND,
    "refused": Cause.CONNECTION,
    "status:blob-500": Cause.SERVER_ERROR,
    "status:blob-502": Cause.SERVER_ERROR,
    "status:manifest-503": Cause.SERVER_ERROR,
    "status:blob-401": Cause.DENIED,
    "status:blob-403": Cause.DENIED,
    "status:manifest-403": Cause.DENIED,
    "status:blob-429": Cause.THROTTLED,
    "status:manifest-429": Cause.THROTTLED,
    "denied": Cause.DENIED,
    "killed-mid-pull": Cause.CONNECTION,
    "digest-mismatch": Cause.BAD_CONTENT,
    "deadline": Cause.DEADLINE,
    "unpack": Cause.UNPACK,
    "invalid-reference": Cause.INVALID_REFERENCE,
    "disk-full": Cause.DISK_FULL,
}


def load() -> dict[str, list[dict[str, str]]]:
    """runtime version -> [{fault, code, message, cause}]"""
    if not FILE.exists():
        return {}
    table: dict[str, list[dict[str, str]]] = json.loads(FILE.read_text())
    return table

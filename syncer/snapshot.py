"""What the API server last said about the one ConfigMap: its data at a version, or that it is absent.

The follower (a thread doing network I/O) produces snapshots; the process applies them. Being a
plain value, a snapshot also says when two observations are the same version, which is what
"log once per ConfigMap version" needs after a re-list or a reconnect.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Snapshot:
    version: str  # the object's metadata.resourceVersion; "" when absent
    data: Mapping[str, str] | None  # None: the ConfigMap does not exist

    @property
    def present(self) -> bool:
        return self.data is not None

    @property
    def identity(self) -> str:
        """Equal for two observations of the same state (every absence is the same state)."""
        return f"version {self.version}" if self.data is not None else "absent"


ABSENT = Snapshot("", None)


def from_object(obj: Any) -> Snapshot:
    """A snapshot from a ConfigMap as the API serves it (JSON). Binary data is not config text."""
    if not isinstance(obj, dict):
        raise ValueError("a ConfigMap must be a JSON object")
    metadata = obj.get("metadata")
    version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
    if not isinstance(version, str) or not version:
        raise ValueError("a ConfigMap without metadata.resourceVersion")
    data = obj.get("data")
    if data is None:
        data = {}  # a ConfigMap with no data at all
    if not isinstance(data, dict):
        raise ValueError("a ConfigMap whose data is not an object")
    return Snapshot(version, {str(k): v for k, v in data.items() if isinstance(v, str)})

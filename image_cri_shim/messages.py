"""What a worker tells the master, as typed values (no grpc, no I/O).

On its readiness pipe, `Serving`, `RuntimeUp` and `Sandbox`: one JSON object per line. The worker encodes,
the master decodes; both import this module, so a field is spelled in one place. A line the
master cannot read (a newer or broken worker) is dropped, never fatal: the worker's exit status
and its heartbeat page still tell the master what it needs. On its heartbeat page
(`heartbeat.py`), the times a `Reading` holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TypeAlias


@dataclass(frozen=True)
class Serving:
    """The worker's socket is in place at the shim path and answers calls. `runtime` is the
    runtime's `name version (api)` when it answered Version, else None (READY=1 waits for it,
    unless `force`); `cri` is the runtime socket the worker forwards to."""

    socket: str
    cri: str
    runtime: str | None = None


@dataclass(frozen=True)
class RuntimeUp:
    """The runtime answered for the first time after a worker started serving without it."""

    runtime: str


@dataclass(frozen=True)
class Sandbox:
    """What the worker knows of the runtime's sandbox image (`workers/serve/keeper.py`): `problem` is
    why it cannot be had (the master puts it in STATUS= and /healthz), empty once it is on the node."""

    image: str
    problem: str = ""


Message: TypeAlias = Serving | RuntimeUp | Sandbox


@dataclass(frozen=True)
class Reading:
    served: float
    runtime_ok: float
    runtime_failed: float

    @property
    def runtime_down(self) -> bool:
        """The runtime's last word was a failure (unreachable, or silent past a deadline)."""
        return self.runtime_failed > self.runtime_ok


def encode(message: Message) -> str:
    """One line, newline included."""
    if isinstance(message, Serving):
        fields: dict[str, object] = {
            "event": "serving",
            "socket": message.socket,
            "cri": message.cri,
            "runtime": message.runtime,
        }
    elif isinstance(message, Sandbox):
        fields = {"event": "sandbox", "image": message.image, "problem": message.problem}
    else:
        fields = {"event": "runtime", "runtime": message.runtime}
    return json.dumps(fields) + "\n"


def decode(line: str) -> Message | None:
    """The message on `line`, or None when it is not one this master knows."""
    try:
        fields = json.loads(line)
    except ValueError:
        return None
    if not isinstance(fields, dict):
        return None
    runtime = fields.get("runtime")
    runtime = str(runtime) if runtime else None
    if fields.get("event") == "serving":
        return Serving(str(fields.get("socket") or ""), str(fields.get("cri") or ""), runtime)
    if fields.get("event") == "runtime" and runtime is not None:
        return RuntimeUp(runtime)
    if fields.get("event") == "sandbox":
        return Sandbox(str(fields.get("image") or ""), str(fields.get("problem") or ""))
    return None

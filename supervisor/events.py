"""The master's vocabulary: what happens to it (events) and what it asks its loop to do (actions).

Values only. `machine.Machine` turns an event into a list of actions without any I/O; `arbiter`
feeds it the events it sees (signals, pipe reports, exits, file changes, deadlines) and carries
the actions out. A test drives the machine with events and reads the actions it returns.

Named tuples, and plain classes for the markers without fields: two dozen frozen dataclasses
would cost the master about 0.1 MiB more for the same values.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, TypeAlias

from image_cri_shim.config import Config
from image_cri_shim.messages import Message, Reading

Trigger = Literal["signal", "command", "file", "poll"]
Kind = Literal["worker", "syncer"]
Result = Literal["ok", "failed", "invalid"]
Level = Literal["info", "warning", "error"]


class Ref(NamedTuple):
    """A child: a worker by its generation, the syncer by how many times it was started."""

    kind: Kind
    number: int


# -- events -----------------------------------------------------------------------------------------


class Hangup:
    """SIGHUP: reload, always."""


class Terminate:
    """SIGTERM or SIGINT: stop the service."""


class FileChanged:
    """The directory watch saw the config file written, replaced, created or removed."""


class ReloadAsked(NamedTuple):
    """`--reload` on the control socket; `token` names the client to answer."""

    token: int


class Reported(NamedTuple):
    """A line from worker `generation`'s pipe (`message` None: the pipe closed)."""

    generation: int
    message: Message | None


class Exited(NamedTuple):
    child: Ref
    code: int


class FileRead(NamedTuple):
    """The answer to `ReadFile`: the file's bytes, or why there are none (`gone`: no file)."""

    trigger: Trigger
    load: bool
    data: bytes | None
    error: str = ""
    gone: bool = False


class Tick(NamedTuple):
    """The loop woke (an event, or a deadline): `reading` is the serving worker's heartbeat page."""

    reading: Reading | None


Event: TypeAlias = Hangup | Terminate | FileChanged | ReloadAsked | Reported | Exited | FileRead | Tick


# -- actions ----------------------------------------------------------------------------------------


class SpawnWorker(NamedTuple):
    """Start worker `generation`, proving it serves at least every `prove_every` seconds."""

    generation: int
    prove_every: float


class SpawnSyncer(NamedTuple):
    number: int


class Kill(NamedTuple):
    """Send `signal` (by name: the machine needs no signal module) to `child`."""

    child: Ref
    signal: Literal["SIGTERM", "SIGINT", "SIGKILL"]


class Notify(NamedTuple):
    """A systemd notification (`notify.Notifier`'s method of that name)."""

    what: Literal["ready", "reloading", "status", "watchdog", "stopping"]
    status: str = ""


class Say(NamedTuple):
    """A log line of the master."""

    level: Level
    text: str
    fields: dict[str, object]


class CountReload(NamedTuple):
    trigger: Trigger
    result: Result


class CountRestart(NamedTuple):
    kind: Kind


class SetGeneration(NamedTuple):
    generation: int


class Answer(NamedTuple):
    """The reply to the `--reload` client `token`."""

    token: int
    reply: dict[str, object]


class Apply(NamedTuple):
    """A new config is in force: its log level and its secrets (`lifecycle.use_config`)."""

    config: Config


class ServeMetrics(NamedTuple):
    """(Re)start the metrics endpoint for the config in force; `old_address`: the previous one."""

    old_address: str | None


class ReadFile(NamedTuple):
    """Read the config file and hand back a `FileRead` with the same fields. `load`: for a
    reload (the bytes are applied); else to see whether the content changed."""

    trigger: Trigger
    load: bool = False


class TrimHeap:
    """Start-up or a reload is over: hand freed heap pages back."""


Action: TypeAlias = (
    SpawnWorker
    | SpawnSyncer
    | Kill
    | Notify
    | Say
    | CountReload
    | CountRestart
    | SetGeneration
    | Answer
    | Apply
    | ServeMetrics
    | ReadFile
    | TrimHeap
)

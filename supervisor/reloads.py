"""The reload half of the master's state machine (`machine.Machine` is the rest).

What starts a new worker: SIGHUP and `--reload` always do; a change the watch or the poll sees
does only when the bytes parse to other settings than those in force. The bytes examined are
the bytes applied: the loop reads the file once per `ReadFile` and hands them back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from image_cri_shim.changes import changed_keys
from image_cri_shim.config import Config, ConfigError, parse_bytes
from image_cri_shim.supervisor.events import (
    Action,
    Answer,
    Apply,
    CountReload,
    FileChanged,
    FileRead,
    Hangup,
    Level,
    Notify,
    ReadFile,
    ReloadAsked,
    Result,
    Say,
    ServeMetrics,
    Trigger,
)

if TYPE_CHECKING:
    from image_cri_shim.supervisor.machine import Gen

DEBOUNCE = 0.1  # editors write in bursts; the syncer renames once


class Reloads:
    """Reload state and decisions; `Machine` supplies the worker side (`spawn_worker`, `pending`)."""

    now: float
    out: list[Action]
    pending: Gen | None
    stopping_since: float | None

    def __init__(self, path: str, config: Config) -> None:
        self.path = path
        self.config = config
        self.loaded = config.source or None  # the file content last examined: what was applied
        self.file_missing = False
        self.debounce_at: float | None = None
        self.poll_saw_change = False  # the debounced read confirms what a poll saw
        # `--reload` clients wait as (reloads started when they asked, token): each is answered
        # by the end of the first reload that started after it asked.
        self.waiters: list[tuple[int, int]] = []
        self.reloads_started = 0
        self.reload_trigger: Trigger = "signal"
        self.reload_started = 0.0
        self.reload_again: Trigger | None = None  # a reload asked for during one
        self.last_reload = "none yet"

    def spawn_worker(self) -> None:
        raise NotImplementedError

    def status_line(self) -> str:
        raise NotImplementedError

    def say(self, level: Level, text: str, **fields: object) -> None:
        self.out.append(Say(level, text, fields))

    # -- events ------------------------------------------------------------------------------------

    def on_hangup(self, _event: Hangup) -> None:
        self.say("info", "SIGHUP: reloading")
        self.reload("signal")

    def on_reload_asked(self, event: ReloadAsked) -> None:
        self.say("info", "reload asked for on the control socket")
        self.waiters.append((self.reloads_started, event.token))
        if self.stopping_since is not None:
            self.answer_waiters(ok=False, reason="the service is stopping")
        else:
            self.reload("command")

    def on_file_changed(self, _event: FileChanged) -> None:
        self.debounce_at = self.debounce_at or self.now + DEBOUNCE

    def on_file_read(self, event: FileRead) -> None:
        if event.load:
            self.load(event)
        else:
            self.check(event)

    # -- decisions ---------------------------------------------------------------------------------

    def check(self, event: FileRead) -> None:
        """The watch or the poll: reload if the content changed. Content that parses to the
        settings in force keeps the worker; a deleted file keeps it too (said once)."""
        if event.gone:
            if not self.file_missing:
                self.file_missing = True
                self.say("warning", "config file is gone, the running worker stays", config=self.path)
            return
        self.file_missing = False
        data = event.data
        if data is None or data == self.loaded:
            self.poll_saw_change = False
            return
        if event.trigger == "poll" and not self.poll_saw_change:
            # A change the watch missed, maybe caught mid-write (an editor truncates, then
            # writes): read again after the debounce, as after a file event.
            self.poll_saw_change = True
            self.debounce_at = self.debounce_at or self.now + DEBOUNCE
            return
        self.poll_saw_change = False
        if self.pending is None and self.same_settings(data):
            self.loaded = data
            self.say("info", "config file rewritten with the same settings: the running worker stays")
            return
        poll = " (poll)" if event.trigger == "poll" else ""
        self.say("info", f"config file changed{poll}: reloading")
        self.reload(event.trigger, event)

    def same_settings(self, data: bytes) -> bool:
        try:
            config = parse_bytes(data, self.path)
        except ConfigError:
            return False  # the reload says why
        return not changed_keys(self.config, config)

    def reload(self, trigger: Trigger, read: FileRead | None = None) -> None:
        """SIGHUP, --reload and a changed file: a new worker with the file's settings, always."""
        if self.stopping_since is not None:
            return
        if self.pending is not None:
            self.reload_again = trigger
            return
        self.reloads_started += 1
        self.reload_trigger = trigger
        self.reload_started = self.now
        self.out.append(Notify("reloading"))
        if read is None:
            self.out.append(ReadFile(trigger, load=True))  # the loop hands back a FileRead
        else:
            self.load(read)

    def load(self, event: FileRead) -> None:
        """The second half of a reload: these bytes are the config the new worker gets."""
        if event.data is None:
            self.reload_failed(event.error, "invalid")
            return
        self.loaded = event.data  # the same bad content is not retried until it changes
        try:
            config = parse_bytes(event.data, self.path)
        except ConfigError as err:
            self.reload_failed(str(err), "invalid")
            return
        changed = changed_keys(self.config, config)
        old, self.config = self.config, config
        self.out.append(Apply(config))
        for warning in config.warnings:
            self.say("warning", warning)
        self.say("info", "config loaded, starting a new worker", changed=",".join(changed) or "nothing")
        if config.metrics_address != old.metrics_address:
            self.out.append(ServeMetrics(old.metrics_address))
        self.spawn_worker()

    def reload_failed(self, reason: str, result: Result = "failed") -> None:
        self.last_reload = f"failed: {reason}"
        self.say("error", "reload failed, the running worker stays", reason=reason)
        self.out += [Notify("ready", self.status_line()), CountReload(self.reload_trigger, result)]
        self.answer_waiters(ok=False, reason=reason)
        self.reload_queued()

    def reload_queued(self) -> None:
        """A reload asked for while one was under way starts once that one has ended, either way."""
        if self.reload_again is not None and self.pending is None:
            trigger, self.reload_again = self.reload_again, None
            self.reload(trigger)

    def answer_waiters(self, **reply: object) -> None:
        """Answer the `--reload` clients whose reload has now ended (or never will)."""
        ended = self.reloads_started if self.stopping_since is None else float("inf")
        self.out += [Answer(token, reply) for asked, token in self.waiters if asked < ended]
        self.waiters = [(asked, token) for asked, token in self.waiters if asked >= ended]

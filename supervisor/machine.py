"""The master's decisions: its generations of workers, its syncer and its timers, without any I/O.

`Machine.handle(event, now)` returns the actions the event calls for (`events.py`); the loop in
`arbiter.py` carries them out and feeds back what it sees. Time is an argument, the heartbeat
page arrives as a value read by the loop, the config file as bytes: a test drives a reload, a
crash loop or a wedged worker in microseconds.

There is one current worker, at most one starting for a reload (`pending`), any number
draining, and one syncer. Every timer is a deadline (`deadline`): the loop sleeps until the
earliest is due or an event arrives.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from image_cri_shim.config import Config
from image_cri_shim.messages import Reading, RuntimeUp, Sandbox, Serving
from image_cri_shim.supervisor.events import (
    Action,
    CountReload,
    CountRestart,
    Event,
    Exited,
    FileChanged,
    FileRead,
    Hangup,
    Kill,
    Notify,
    ReadFile,
    Ref,
    ReloadAsked,
    Reported,
    ServeMetrics,
    SetGeneration,
    SpawnSyncer,
    SpawnWorker,
    Terminate,
    Tick,
    TrimHeap,
)
from image_cri_shim.supervisor.reloads import Reloads

READY_TIMEOUT = 30.0  # a new worker that does not serve by then is given up
WORKER_CRASH_WINDOW = 30.0  # more than 3 worker deaths within this window: back off
SYNCER_BACKOFF_MAX = 60.0
# A serving worker whose heartbeat is older than this is killed and replaced: with a start of a
# second or two, calls are answered again well within 15 s of the moment it stopped serving.
HEARTBEAT_STALE = 8.0
PROVE_EVERY = 4.0  # an idle worker proves it serves this often (and twice per watchdog period)
STOP_GRACE = 5.0  # beyond `timeout`, before the children of a stopping master get SIGKILL


@dataclass
class Gen:
    """One worker generation as the master knows it."""

    generation: int
    started: float
    serving: bool = False
    cri: str = ""  # the runtime socket it forwards to, as it reported
    sandbox: str = ""  # why the runtime's sandbox image cannot be had, as it reported ("": it can)

    @property
    def ref(self) -> Ref:
        return Ref("worker", self.generation)


def wall_clock() -> str:
    return time.strftime("%H:%M:%S")


class Machine(Reloads):
    """`watchdog`: the interval at which systemd wants WATCHDOG=1 (None: no watchdog)."""

    def __init__(
        self,
        path: str,
        config: Config,
        watchdog: float | None,
        now: float,
        clock: Callable[[], str] = wall_clock,
    ) -> None:
        super().__init__(path, config)
        self.watchdog = watchdog
        self.clock = clock
        self.now = now
        self.out: list[Action] = []
        self.generation = 0
        self.worker: Gen | None = None  # the one serving (or starting after a crash)
        self.pending: Gen | None = None  # a new generation starting for a reload
        self.draining: list[Gen] = []
        self.syncer: Ref | None = None
        self.syncer_started = now
        self.syncer_starts = 0
        self.syncer_failures = 0
        self.worker_deaths: collections.deque[float] = collections.deque(maxlen=8)
        self.ready_sent = False
        self.last_ping = 0.0  # WATCHDOG=1 certifies that a worker served since the previous one
        self.last_wedge = ""  # the last worker replaced for not answering, for STATUS=
        self.runtime_down = False  # what STATUS= last said about the runtime
        self.stopping_since: float | None = None
        self.kill_at: float | None = None  # while stopping: SIGKILL to whoever is left
        self.exit_code = 0
        # timers (monotonic deadlines, None = off)
        self.worker_restart_at: float | None = None
        self.syncer_restart_at: float | None = None
        self.poll_at = now + config.reload_interval
        self.watchdog_at = now

    # -- the interface -------------------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        self.now, self.out = now, [ServeMetrics(None)]
        self.spawn_worker()
        self.spawn_syncer()
        return self.out

    def handle(self, event: Event, now: float) -> list[Action]:
        self.now, self.out = now, []
        _HANDLERS[type(event)](self, event)
        return self.out

    @property
    def finished(self) -> bool:
        return self.stopping_since is not None and not self.children()

    def deadline(self, reading: Reading | None) -> float:
        """When the loop must wake at the latest (`reading`: the page of `serving()`)."""
        if self.kill_at is not None:
            return self.kill_at
        found = [self.poll_at]
        if self.watchdog is not None:
            found.append(self.watchdog_at)
        if self.pending is not None:
            found.append(self.pending.started + READY_TIMEOUT)
        if self.serving() is not None and reading is not None:
            found.append(reading.served + HEARTBEAT_STALE)
        timers = (self.worker_restart_at, self.syncer_restart_at, self.debounce_at)
        found.extend(t for t in timers if t is not None)
        return min(found)

    def serving(self) -> Ref | None:
        """The worker whose heartbeat page the loop reads: the current one, once it serves."""
        return self.worker.ref if self.worker is not None and self.worker.serving else None

    def children(self) -> list[Ref]:
        gens = [g for g in (self.worker, self.pending) if g is not None] + self.draining
        return [g.ref for g in gens] + ([self.syncer] if self.syncer is not None else [])

    # -- events ------------------------------------------------------------------------------------

    def on_terminate(self, _event: Terminate | None = None) -> None:
        if self.stopping_since is not None:
            return
        self.stopping_since = self.now
        self.kill_at = self.now + self.config.timeout + STOP_GRACE
        self.say("info", "stopping: draining the worker", grace=f"{self.config.timeout:g}s")
        self.out.append(Notify("stopping"))
        self.answer_waiters(ok=False, reason="the service is stopping")
        # Workers: SIGINT drains at once (there is no successor to hand clients over to).
        for ref in self.children():
            self.out.append(Kill(ref, "SIGINT" if ref.kind == "worker" else "SIGTERM"))

    def on_reported(self, event: Reported) -> None:
        gen = next((g for g in (self.worker, self.pending) if g and g.generation == event.generation), None)
        message = event.message
        if gen is None:
            return
        if isinstance(message, Serving):
            self.on_serving(gen, message)
        elif isinstance(message, RuntimeUp):
            self.announce_ready()
        elif isinstance(message, Sandbox):
            self.on_sandbox(gen, message)

    def on_exited(self, event: Exited) -> None:
        ref, code = event.child, event.code
        if ref == self.syncer:
            self.syncer = None
            if self.stopping_since is None:
                self.on_syncer_died(code)
        elif self.worker is not None and ref == self.worker.ref:
            gen, self.worker = self.worker, None
            if self.stopping_since is None:
                self.on_worker_died(gen, code)
        elif self.pending is not None and ref == self.pending.ref:
            self.pending = None
            if self.stopping_since is None:
                self.reload_failed(f"worker gen={ref.number} exited with code {code} before serving")
                if self.worker is None:
                    self.spawn_worker()
        elif any(g.ref == ref for g in self.draining):
            self.draining = [g for g in self.draining if g.ref != ref]
            self.say("info", "old worker exited", gen=ref.number, code=code)

    def on_tick(self, event: Tick) -> None:
        now, reading = self.now, event.reading
        if self.stopping_since is not None:
            self.enforce_stop_deadline()
            return
        if self.debounce_at is not None and now >= self.debounce_at:
            self.debounce_at = None
            self.out.append(ReadFile("poll" if self.poll_saw_change else "file"))
        if now >= self.poll_at - self.config.reload_interval / 2:  # rides on an earlier wake-up too
            self.poll_at = now + self.config.reload_interval
            self.out.append(ReadFile("poll"))
        if self.worker_restart_at is not None and now >= self.worker_restart_at:
            self.worker_restart_at = None
            self.spawn_worker()
        if self.syncer_restart_at is not None and now >= self.syncer_restart_at:
            self.syncer_restart_at = None
            self.spawn_syncer()
        if self.pending is not None and now - self.pending.started > READY_TIMEOUT:
            stuck, self.pending = self.pending, None
            self.out.append(Kill(stuck.ref, "SIGKILL"))
            self.draining.append(stuck)
            self.reload_failed(f"worker gen={stuck.generation} did not serve within {READY_TIMEOUT:g}s")
        self.heartbeat(reading)

    # -- workers -----------------------------------------------------------------------------------

    def spawn_worker(self) -> None:
        self.generation += 1
        every = PROVE_EVERY if self.watchdog is None else min(PROVE_EVERY, self.watchdog / 2)
        gen = Gen(self.generation, self.now)
        if self.worker is None:
            self.worker = gen
        else:
            self.pending = gen
        self.out.append(SpawnWorker(gen.generation, every))

    def on_serving(self, gen: Gen, message: Serving) -> None:
        gen.serving, gen.cri = True, message.cri
        if gen is self.pending:
            self.finish_swap(gen)
        else:
            self.out.append(SetGeneration(gen.generation))
            runtime = message.runtime or "not answering yet"
            self.say("info", "worker serving", gen=gen.generation, runtime=runtime)
            if self.ready_sent:
                self.out.append(Notify("status", self.status_line()))
        if message.runtime or self.config.force:
            self.announce_ready()
        else:
            self.out.append(Notify("status", f"{self.status_line()}; waiting for the container runtime"))

    def on_sandbox(self, gen: Gen, message: Sandbox) -> None:
        """The worker logged it already; STATUS= and /healthz say it while it lasts."""
        problem = f"sandbox image {message.image} unavailable: {message.problem}" if message.problem else ""
        changed, gen.sandbox = gen.sandbox != problem, problem
        if changed and gen is self.worker and gen.serving and self.ready_sent:
            self.out.append(Notify("status", self.status_line()))

    def finish_swap(self, new: Gen) -> None:
        old, self.worker, self.pending = self.worker, new, None
        if old is not None:
            self.out.append(Kill(old.ref, "SIGTERM"))  # renamed over already: it now drains
            self.draining.append(old)
        took = self.now - self.reload_started
        self.last_reload = f"ok at {self.clock()}"
        self.say("info", "reload complete", gen=new.generation, took=f"{took * 1000:.0f}ms")
        self.out += [
            Notify("ready", self.status_line()),
            SetGeneration(new.generation),
            CountReload(self.reload_trigger, "ok"),
        ]
        self.answer_waiters(ok=True, generation=new.generation, took_ms=round(took * 1000))
        self.out.append(TrimHeap())
        self.reload_queued()

    def announce_ready(self) -> None:
        if not self.ready_sent:
            self.ready_sent = True
            self.out.append(Notify("ready", self.status_line()))
            self.say("info", "ready", gen=self.generation)
            self.out.append(TrimHeap())

    def on_worker_died(self, gen: Gen, code: int) -> None:
        self.worker_deaths.append(self.now)
        if not self.ready_sent and not gen.serving:
            self.say("error", "the first worker exited before serving: giving up", code=code)
            self.exit_code = 1
            self.on_terminate()
            return
        self.out.append(CountRestart("worker"))
        recent = sum(1 for t in self.worker_deaths if self.now - t < WORKER_CRASH_WINDOW)
        delay = 0.0 if recent <= 3 else min(2.0 ** (recent - 3), 30.0)
        self.say("error", "worker died", gen=gen.generation, code=code, restart_in=f"{delay:g}s")
        if self.pending is not None:  # a reload is under way: its worker takes over
            return
        if delay:
            self.worker_restart_at = self.now + delay
        else:
            self.spawn_worker()

    # -- the heartbeat -------------------------------------------------------------------------------

    def heartbeat(self, reading: Reading | None) -> None:
        """Replace a worker that stopped proving it serves; WATCHDOG=1 only for one that proved it
        since the previous ping; STATUS= follows the runtime's state as the page records it."""
        if self.serving() is None:
            reading = None
        if reading is not None and self.worker is not None and self.now - reading.served > HEARTBEAT_STALE:
            self.replace_wedged(self.worker, self.now - reading.served)
            reading = None
        # A ping rides on any wake-up in the second half of its period (the heartbeat's come
        # every few seconds), so at rest the watchdog costs the loop no wake-up of its own;
        # `watchdog_at` only bounds it.
        if self.watchdog is not None and self.now >= self.watchdog_at - self.watchdog / 2:
            if reading is not None and reading.served > self.last_ping:
                self.out.append(Notify("watchdog"))
                self.last_ping = self.now
                self.watchdog_at = self.now + self.watchdog
            elif self.now >= self.watchdog_at:
                self.watchdog_at = self.now + self.watchdog  # no proof: systemd's watchdog sees it
        down = reading is not None and reading.runtime_down
        if down != self.runtime_down:
            self.runtime_down = down
            if down and self.worker is not None:
                self.say("warning", "the container runtime does not answer", cri=self.worker.cri)
            self.out.append(Notify("status", self.status_line()))

    def replace_wedged(self, gen: Gen, silent: float) -> None:
        """SIGKILL, and a new worker at once (its exit is then that of a replaced worker)."""
        self.say(
            "error",
            "worker is not answering: killing it, starting a new one",
            gen=gen.generation,
            silent=f"{silent:.1f}s",
        )
        self.last_wedge = (
            f"worker gen={gen.generation} did not answer for {silent:.0f}s, replaced at {self.clock()}"
        )
        self.out += [Kill(gen.ref, "SIGKILL"), CountRestart("worker")]
        self.draining.append(gen)
        self.worker = None
        if self.pending is None:  # a reload under way: its worker takes over
            self.spawn_worker()
        self.out.append(Notify("status", self.status_line()))

    # -- the syncer and stopping -------------------------------------------------------------------

    def spawn_syncer(self) -> None:
        self.syncer_starts += 1
        self.syncer, self.syncer_started = Ref("syncer", self.syncer_starts), self.now
        self.out.append(SpawnSyncer(self.syncer_starts))

    def on_syncer_died(self, code: int) -> None:
        ran = self.now - self.syncer_started
        self.syncer_failures = 0 if ran > SYNCER_BACKOFF_MAX else self.syncer_failures + 1
        failures = self.syncer_failures
        delay = min(2.0 ** max(failures - 1, 0), SYNCER_BACKOFF_MAX) if failures else 0.5
        self.say("warning", "syncer exited", code=code, restart_in=f"{delay:g}s")
        self.out.append(CountRestart("syncer"))
        self.syncer_restart_at = self.now + delay

    def enforce_stop_deadline(self) -> None:
        if self.kill_at is not None and self.now >= self.kill_at:
            self.kill_at = self.now + 1.0  # again, until every child has been reaped
            self.out += [Kill(ref, "SIGKILL") for ref in self.children()]

    # -- what it says --------------------------------------------------------------------------------

    def status_line(self) -> str:
        serving = f"serving gen={self.worker.generation}" if self.worker is not None else "no worker"
        if self.runtime_down and self.worker is not None:
            serving += f"; container runtime at {self.worker.cri or 'its socket'} not answering"
        registries = ", ".join(r.domain for r in self.config.registries) or "none (passthrough)"
        line = f"{serving}; registries: {registries}; last reload: {self.last_reload}"
        if self.worker is not None and self.worker.sandbox:
            line += f"; {self.worker.sandbox}"
        return f"{line}; {self.last_wedge}" if self.last_wedge else line

    def health(self, now: float, reading: Reading | None) -> tuple[bool, str]:
        """For /healthz: healthy while a worker proves it serves. A runtime that does not answer
        is said, but the shim itself is healthy then."""
        if self.stopping_since is not None:
            return False, "stopping"
        worker = self.worker
        if worker is None or not worker.serving or reading is None:
            return False, "no worker serving" + (f" ({self.last_wedge})" if self.last_wedge else "")
        silent = now - reading.served
        if silent > HEARTBEAT_STALE:
            return False, f"worker gen={worker.generation} not answering for {silent:.0f}s: being replaced"
        text = f"ok: worker gen={worker.generation} serving"
        if reading.runtime_down:
            text += f"; container runtime at {worker.cri or 'its socket'} not answering"
        if worker.sandbox:
            text += f"; {worker.sandbox}"
        return True, text


_HANDLERS: dict[type, Callable[[Machine, Any], None]] = {
    Hangup: Machine.on_hangup,
    Terminate: Machine.on_terminate,
    FileChanged: Machine.on_file_changed,
    ReloadAsked: Machine.on_reload_asked,
    Reported: Machine.on_reported,
    Exited: Machine.on_exited,
    FileRead: Machine.on_file_read,
    Tick: Machine.on_tick,
}

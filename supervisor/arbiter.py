"""The master: one loop that owns the lifecycle of the proxy worker and the ConfigMap syncer.

Signals, readiness reports, child exits and config-file events all become events in one
queue; the loop takes them one at a time and each kind has a small `handle_*` method. Timers
(debounce, poll fallback, restarts with backoff, the systemd watchdog, the worker's heartbeat)
are deadlines: the loop sleeps until the next one is due or an event arrives, and wakes for
nothing else. Nothing here imports grpc or kubernetes: the master stays small and fork-free.
"""

from __future__ import annotations

import collections
import os
import queue
import signal
import time
from typing import TYPE_CHECKING, Any

from image_cri_shim import logs
from image_cri_shim.changes import changed_keys
from image_cri_shim.config import Config, ConfigError, parse_bytes, read
from image_cri_shim.heartbeat import Reading
from image_cri_shim.lifecycle import trim_heap
from image_cri_shim.messages import Message, RuntimeUp, Serving
from image_cri_shim.metrics import MasterMetrics, active
from image_cri_shim.startup import remove_socket
from image_cri_shim.supervisor import samples
from image_cri_shim.supervisor.children import Child, start_syncer, start_worker
from image_cri_shim.supervisor.control import ControlServer, Request, control_path
from image_cri_shim.supervisor.notify import Notifier
from image_cri_shim.supervisor.watch import ConfigFile, DirectoryWatch

if TYPE_CHECKING:
    from image_cri_shim.supervisor.endpoint import Endpoint

log = logs.get("master")

DEBOUNCE = 0.1  # editors write in bursts; the syncer renames once
READY_TIMEOUT = 30.0  # a new worker that does not serve by then is given up
WORKER_CRASH_WINDOW = 30.0  # more than 3 worker deaths within this window: back off
SYNCER_BACKOFF_MAX = 60.0
# A serving worker whose heartbeat is older than this is killed and replaced: with a start of a
# second or two, calls are answered again well within 15 s of the moment it stopped serving.
HEARTBEAT_STALE = 8.0
PROVE_EVERY = 4.0  # an idle worker proves it serves this often (and twice per watchdog period)
Event = tuple[Any, ...]


class Master:
    def __init__(self, config_path: str, config: Config, metrics_dir: str | None = None) -> None:
        self.path = config_path
        self.config = config
        self.metrics_dir = metrics_dir
        self.metrics = MasterMetrics(active(config.metrics_address))
        self.endpoint: Endpoint | None = None
        self.control: ControlServer | None = None
        # `--reload` clients: (reloads started when they asked, request); each is answered by
        # the end of the first reload that started after it asked.
        self.reload_waiters: list[tuple[int, Request]] = []
        self.reloads_started = 0
        self.reload_trigger = "signal"
        self.events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.notifier = Notifier()
        self.file = ConfigFile(config_path, config.source)  # what was applied, not a second read
        self.watch = DirectoryWatch(config_path, lambda: self.events.put(("file",)))
        self.generation = 0
        self.worker: Child | None = None  # the one serving (or starting after a crash)
        self.pending: Child | None = None  # a new generation starting for a reload
        self.draining: list[Child] = []
        self.syncer: Child | None = None
        self.ready_sent = False
        self.last_ping = 0.0  # WATCHDOG=1 certifies that a worker served since the previous one
        self.last_wedge = ""  # the last worker replaced for not answering, for STATUS=
        self.runtime_down = False  # what STATUS= last said about the runtime
        self.reload_again: str | None = None  # the trigger of a reload asked for during one
        self.reload_started = 0.0
        self.last_reload = "none yet"
        self.stopping_since: float | None = None
        self.worker_deaths: collections.deque[float] = collections.deque(maxlen=8)
        self.syncer_failures = 0
        self.file_missing = False
        # timers (monotonic deadlines, None = off)
        self.worker_restart_at: float | None = None
        self.syncer_restart_at: float | None = None
        self.debounce_at: float | None = None
        self.poll_at = time.monotonic() + config.reload_interval
        self.watchdog_at = time.monotonic()

    # -- the loop -----------------------------------------------------------------------------------

    def run(self) -> int:
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(signum, lambda n, _frame: self.events.put(("signal", n)))
        if not self.watch.start():
            log.warning(
                "no inotify watch on the config directory: changes are noticed by the poll",
                every=f"{self.config.reload_interval:g}s",
            )
        log.info("starting", config=self.path, pid=os.getpid())
        self.start_control()
        self.serve_metrics(None)
        self.spawn_worker()
        self.syncer = start_syncer(self.path)
        try:
            while not self.finished():
                try:
                    event = self.events.get(timeout=self.wait_time())
                except queue.Empty:
                    event = None
                if event is not None:
                    self.dispatch(event)
                self.handle_timers()
        finally:
            self.watch.stop()
            if self.control is not None:
                self.control.close()
            if self.endpoint is not None:
                self.endpoint.close()
        self.cleanup()
        return self.exit_code

    exit_code = 0

    def dispatch(self, event: Event) -> None:
        kind = event[0]
        if kind == "signal":
            signum = event[1]
            if signum == signal.SIGHUP:
                self.handle_hup()
            elif signum in (signal.SIGTERM, signal.SIGINT):
                self.handle_term()
            elif signum == signal.SIGCHLD:
                self.handle_child_exit()
        elif kind == "file":
            self.debounce_at = self.debounce_at or time.monotonic() + DEBOUNCE
        elif kind == "report":
            self.handle_report(event[1], event[2])
        elif kind == "control":
            self.handle_control(event[1])

    def wait_time(self) -> float:
        """Until the next deadline: the loop has nothing to do before it (or an event)."""
        return max(0.0, min(self.deadlines()) - time.monotonic())

    def deadlines(self) -> list[float]:
        if self.stopping_since is not None:
            return [self.stopping_since + self.config.timeout + 5]
        found = [self.poll_at]
        if self.notifier.watchdog_interval is not None:
            found.append(self.watchdog_at)
        if self.pending is not None:
            found.append(self.pending.started + READY_TIMEOUT)
        if (proof := self.proof()) is not None:
            found.append(proof[1].served + HEARTBEAT_STALE)
        found.extend(
            d for d in (self.worker_restart_at, self.syncer_restart_at, self.debounce_at) if d is not None
        )
        return found

    def finished(self) -> bool:
        if self.stopping_since is None:
            return False
        return not any(c is not None and c.exited() is None for c in self.children())

    def children(self) -> list[Child | None]:
        return [self.worker, self.pending, self.syncer, *self.draining]

    # -- events ---------------------------------------------------------------------------------------

    def handle_hup(self) -> None:
        log.info("SIGHUP: reloading")
        self.reload("signal")

    def handle_control(self, request: Request) -> None:
        if request.command == "reload":
            log.info("reload asked for on the control socket")
            self.reload_waiters.append((self.reloads_started, request))
            if self.stopping_since is not None:
                self.answer_waiters(ok=False, reason="the service is stopping")
            else:
                self.reload("command")
        else:
            request.answer(ok=False, reason=f"unknown command {request.command!r}")

    def handle_term(self) -> None:
        if self.stopping_since is not None:
            return
        self.stopping_since = time.monotonic()
        log.info("stopping: draining the worker", grace=f"{self.config.timeout:g}s")
        self.notifier.stopping()
        self.answer_waiters(ok=False, reason="the service is stopping")
        # Workers: SIGINT drains at once (there is no successor to hand clients over to).
        for child in self.children():
            if child is not None:
                child.signal(signal.SIGINT if child.kind == "worker" else signal.SIGTERM)

    def handle_report(self, generation: int, message: Message | None) -> None:
        child = self.worker_of(generation)
        if child is None or message is None:
            return
        if isinstance(message, Serving):
            child.serving = True
            child.cri = message.cri
            if child is self.pending:
                self.finish_swap(child)
            else:
                self.metrics.generation.set(generation)
                log.info("worker serving", gen=generation, runtime=message.runtime or "not answering yet")
                if self.ready_sent:
                    self.notifier.status(self.status_line())
            if message.runtime or self.config.force:
                self.announce_ready()
            else:
                self.notifier.status(f"{self.status_line()}; waiting for the container runtime")
        elif isinstance(message, RuntimeUp):
            self.announce_ready()

    def handle_child_exit(self) -> None:
        if self.stopping_since is not None:
            return  # `finished` notices; nothing is restarted while stopping
        for child in self.children():
            if child is None or (code := child.exited()) is None:
                continue
            if self.metrics_dir is not None:
                samples.retire(self.metrics_dir, child.pid)
            child.release()
            if child is self.worker:
                self.on_worker_died(child, code)
            elif child is self.pending:
                self.pending = None
                self.reload_failed(f"worker gen={child.generation} exited with code {code} before serving")
                if self.worker is None:
                    self.spawn_worker()
            elif child is self.syncer:
                self.on_syncer_died(child, code)
            elif child in self.draining:
                self.draining.remove(child)
                log.info("old worker exited", gen=child.generation, code=code)

    def handle_timers(self) -> None:
        now = time.monotonic()
        if self.stopping_since is not None:
            self.enforce_stop_deadline(now)
            return
        if self.debounce_at is not None and now >= self.debounce_at:
            self.debounce_at = None
            self.check_file("config file changed: reloading", "file")
        if now >= self.poll_at:
            self.poll_at = now + self.config.reload_interval
            self.check_file("config file changed (poll): reloading", "poll")
        if self.worker_restart_at is not None and now >= self.worker_restart_at:
            self.worker_restart_at = None
            self.spawn_worker()
        if self.syncer_restart_at is not None and now >= self.syncer_restart_at:
            self.syncer_restart_at = None
            self.syncer = start_syncer(self.path)
        if self.pending is not None and now - self.pending.started > READY_TIMEOUT:
            stuck, self.pending = self.pending, None
            stuck.signal(signal.SIGKILL)
            self.draining.append(stuck)
            self.reload_failed(f"worker gen={stuck.generation} did not serve within {READY_TIMEOUT:g}s")
        if (proof := self.proof()) is not None and now - proof[1].served > HEARTBEAT_STALE:
            self.replace_wedged(proof[0], now - proof[1].served)
        if self.notifier.watchdog_interval is not None and now >= self.watchdog_at:
            self.watchdog_at = now + self.notifier.watchdog_interval
            proof = self.proof()
            if proof is not None and proof[1].served > self.last_ping:
                self.notifier.watchdog()
                self.last_ping = now
        self.say_runtime()

    # -- workers -------------------------------------------------------------------------------------

    def spawn_worker(self) -> Child:
        self.generation += 1
        interval = self.notifier.watchdog_interval
        every = PROVE_EVERY if interval is None else min(PROVE_EVERY, interval / 2)
        child = start_worker(self.path, self.generation, self.on_report, every)
        if self.worker is None or self.worker.exited() is not None:
            self.worker = child
        else:
            self.pending = child
        return child

    def on_report(self, generation: int, message: Message | None) -> None:
        """Called from a pipe-reader thread: hand over to the loop."""
        self.events.put(("report", generation, message))

    def worker_of(self, generation: int) -> Child | None:
        for child in (self.worker, self.pending):
            if child is not None and child.generation == generation:
                return child
        return None

    def finish_swap(self, new: Child) -> None:
        old, self.worker, self.pending = self.worker, new, None
        if old is not None:
            old.signal(signal.SIGTERM)  # renamed over already: the old one now drains
            self.draining.append(old)
        took = time.monotonic() - self.reload_started
        self.last_reload = f"ok at {time.strftime('%H:%M:%S')}"
        log.info("reload complete", gen=new.generation, took=f"{took * 1000:.0f}ms")
        self.notifier.ready(self.status_line())
        self.metrics.generation.set(new.generation)
        self.metrics.reloads.labels(self.reload_trigger, "ok").inc()
        self.metrics.last_reload_ok.set(1)
        self.answer_waiters(ok=True, generation=new.generation, took_ms=round(took * 1000))
        trim_heap()
        self.reload_queued()

    # -- the heartbeat --------------------------------------------------------------------------------

    def proof(self) -> tuple[Child, Reading] | None:
        """The serving worker and its heartbeat page (None while no worker serves)."""
        worker = self.worker
        if worker is None or not worker.serving or worker.beat is None or worker.exited() is not None:
            return None
        return worker, worker.beat.read()

    def replace_wedged(self, child: Child, silent: float) -> None:
        """A worker that stopped proving it serves: SIGKILL, and a new one at once."""
        log.error(
            "worker is not answering: killing it, starting a new one",
            gen=child.generation,
            silent=f"{silent:.1f}s",
        )
        self.last_wedge = (
            f"worker gen={child.generation} did not answer for {silent:.0f}s,"
            f" replaced at {time.strftime('%H:%M:%S')}"
        )
        child.signal(signal.SIGKILL)
        self.draining.append(child)  # its exit is then that of a replaced worker
        self.worker = None
        self.metrics.restarts.labels("worker").inc()
        if self.pending is None:  # a reload under way: its worker takes over
            self.spawn_worker()
        self.notifier.status(self.status_line())

    def say_runtime(self) -> None:
        """STATUS= follows the runtime's state as the worker's page records it."""
        proof = self.proof()
        down = proof is not None and proof[1].runtime_down
        if down != self.runtime_down:
            self.runtime_down = down
            if down:
                log.warning("the container runtime does not answer", cri=proof[0].cri if proof else "")
            self.notifier.status(self.status_line())

    def announce_ready(self) -> None:
        if not self.ready_sent:
            self.ready_sent = True
            self.notifier.ready(self.status_line())
            log.info("ready", gen=self.generation)
            trim_heap()

    def on_worker_died(self, child: Child, code: int) -> None:
        now = time.monotonic()
        self.worker_deaths.append(now)
        if not self.ready_sent and not child.serving:
            log.error("the first worker exited before serving: giving up", code=code)
            self.exit_code = 1
            self.handle_term()
            return
        self.metrics.restarts.labels("worker").inc()
        recent = sum(1 for t in self.worker_deaths if now - t < WORKER_CRASH_WINDOW)
        delay = 0.0 if recent <= 3 else min(2.0 ** (recent - 3), 30.0)
        log.error("worker died", gen=child.generation, code=code, restart_in=f"{delay:g}s")
        if self.pending is not None:  # a reload is under way: its worker takes over
            self.worker = None
            return
        self.worker = None
        if delay:
            self.worker_restart_at = now + delay
        else:
            self.spawn_worker()

    # -- reloads -------------------------------------------------------------------------------------

    def check_file(self, why: str, trigger: str) -> None:
        """Reload if the file's content changed; a deleted file keeps the worker (said once)."""
        if not os.path.exists(self.path):
            if not self.file_missing:
                self.file_missing = True
                log.warning("config file is gone, the running worker stays", config=self.path)
            return
        self.file_missing = False
        data = self.file.read()
        if data is None or data == self.file.loaded:
            return
        if self.pending is None and self.same_settings(data):
            self.file.remember(data)
            log.info("config file rewritten with the same settings: the running worker stays")
            return
        log.info(why)
        self.reload(trigger)

    def same_settings(self, data: bytes) -> bool:
        """Whether `data` parses to the settings in force (a re-serialization, an unchanged save)."""
        try:
            config = parse_bytes(data, self.path)
        except ConfigError:
            return False  # the reload says why
        return not changed_keys(self.config, config)

    def reload(self, trigger: str) -> None:
        """SIGHUP, --reload and a changed file: a new worker with the file's settings, always."""
        if self.stopping_since is not None:
            return
        if self.pending is not None:
            self.reload_again = trigger
            return
        self.reloads_started += 1
        self.reload_trigger = trigger
        self.reload_started = time.monotonic()
        self.notifier.reloading()
        try:
            data = read(self.path)
            self.file.remember(data)  # the same bad content is not retried until it changes
            config = parse_bytes(data, self.path)
        except ConfigError as err:
            self.reload_failed(str(err), "invalid")
            return
        changed = changed_keys(self.config, config)
        old, self.config = self.config, config
        logs.set_debug(config.debug)
        logs.register_config_secrets(r.password for r in config.registries)
        for warning in config.warnings:
            log.warning(warning)
        log.info("config loaded, starting a new worker", changed=",".join(changed) or "nothing")
        if config.metrics_address != old.metrics_address:
            self.serve_metrics(old.metrics_address)
        self.spawn_worker()

    def reload_failed(self, reason: str, result: str = "failed") -> None:
        self.last_reload = f"failed: {reason}"
        log.error("reload failed, the running worker stays", reason=reason)
        self.notifier.ready(self.status_line())
        self.metrics.reloads.labels(self.reload_trigger, result).inc()
        self.metrics.last_reload_ok.set(0)
        self.answer_waiters(ok=False, reason=logs.redact(reason))
        self.reload_queued()

    def reload_queued(self) -> None:
        """A reload asked for while one was under way starts once that one has ended, either way."""
        if self.reload_again is not None and self.pending is None:
            trigger, self.reload_again = self.reload_again, None
            self.reload(trigger)

    def answer_waiters(self, **reply: Any) -> None:
        """Answer the `--reload` clients whose reload has now ended (or never will)."""
        ended = self.reloads_started if self.stopping_since is None else float("inf")
        done = [request for asked, request in self.reload_waiters if asked < ended]
        self.reload_waiters = [(asked, r) for asked, r in self.reload_waiters if asked >= ended]
        for request in done:
            request.answer(**reply)

    def start_control(self) -> None:
        """The socket `--reload` talks to; without it (an unusable directory, which the worker
        reports in its own words) the service still runs and reloads on SIGHUP."""
        path = control_path(self.config.shim)
        try:
            self.control = ControlServer(path, lambda r: self.events.put(("control", r)))
        except OSError as err:
            log.warning(
                "control socket unavailable: --reload cannot reach this service",
                path=path,
                error=err.strerror,
            )

    # -- metrics -------------------------------------------------------------------------------------

    def serve_metrics(self, old_address: str | None) -> None:
        """(Re)start the endpoint for the current `metricsAddress`; a failure is said, not fatal:
        metrics must never keep the image service from running."""
        if self.endpoint is not None:
            self.endpoint.close()
            self.endpoint = None
        address = self.config.metrics_address
        if address is None or self.metrics_dir is None:
            if old_address is not None:
                log.info("metrics endpoint closed", address=old_address)
            return
        if not self.metrics.recording:
            self.metrics = MasterMetrics(active(address))
        from image_cri_shim.supervisor.endpoint import Endpoint, EndpointError  # only when configured

        try:
            self.endpoint = Endpoint(address, self.metrics_dir, self.health)
        except EndpointError as err:
            log.error("metrics endpoint unavailable, the image service is not affected", reason=str(err))
            return
        log.info("metrics endpoint", address=address, paths="/metrics,/healthz")

    def health(self) -> tuple[bool, str]:
        """For /healthz, from the endpoint's thread: healthy while a worker proves it serves.
        A runtime that does not answer is said, but the shim itself is healthy then."""
        if self.stopping_since is not None:
            return False, "stopping"
        try:
            proof = self.proof()
        except ValueError:  # the page was released in between: the worker just exited
            proof = None
        if proof is None:
            return False, "no worker serving" + (f" ({self.last_wedge})" if self.last_wedge else "")
        worker, reading = proof
        silent = time.monotonic() - reading.served
        if silent > HEARTBEAT_STALE:
            return False, f"worker gen={worker.generation} not answering for {silent:.0f}s: being replaced"
        text = f"ok: worker gen={worker.generation} serving"
        if reading.runtime_down:
            text += f"; container runtime at {worker.cri or 'its socket'} not answering"
        return True, text

    def status_line(self) -> str:
        serving = f"serving gen={self.worker.generation}" if self.worker is not None else "no worker"
        if self.runtime_down and self.worker is not None:
            serving += f"; container runtime at {self.worker.cri or 'its socket'} not answering"
        registries = ", ".join(r.domain for r in self.config.registries) or "none (passthrough)"
        line = f"{serving}; registries: {registries}; last reload: {self.last_reload}"
        return f"{line}; {self.last_wedge}" if self.last_wedge else line

    # -- syncer and shutdown -------------------------------------------------------------------------------

    def on_syncer_died(self, child: Child, code: int) -> None:
        ran = time.monotonic() - child.started
        self.syncer_failures = 0 if ran > SYNCER_BACKOFF_MAX else self.syncer_failures + 1
        delay = (
            min(2.0 ** max(self.syncer_failures - 1, 0), SYNCER_BACKOFF_MAX) if self.syncer_failures else 0.5
        )
        log.warning("syncer exited", code=code, restart_in=f"{delay:g}s")
        self.metrics.restarts.labels("syncer").inc()
        self.syncer = None
        self.syncer_restart_at = time.monotonic() + delay

    def enforce_stop_deadline(self, now: float) -> None:
        assert self.stopping_since is not None
        if now - self.stopping_since > self.config.timeout + 5:
            for child in self.children():
                if child is not None:
                    child.signal(signal.SIGKILL)

    def cleanup(self) -> None:
        """After the children are gone: remove a socket a killed worker may have left."""
        remove_socket(self.config.shim)
        log.info("stopped")

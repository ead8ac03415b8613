"""The master's loop: the I/O around `machine.Machine`, which makes every decision.

Signals, readiness reports, child exits, config-file events and `--reload` requests all become
events in one inbox (`inbox.py`), which wakes the loop at once whichever thread took a signal;
the loop takes them one at a time, hands each to the machine and carries out the actions it
returns: start or signal a child, notify systemd, log, count, answer. After
each wake-up it reaps the children that exited and lets the machine look at its deadlines,
with the serving worker's heartbeat page in hand. It sleeps until the machine's next deadline
or the next event, and wakes for nothing else. Nothing here imports grpc or kubernetes: the
master stays small and fork-free.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from image_cri_shim import logs
from image_cri_shim.config import Config, ConfigError, read
from image_cri_shim.inbox import Inbox
from image_cri_shim.lifecycle import trim_heap
from image_cri_shim.messages import Message, Reading
from image_cri_shim.metrics import MasterMetrics, active
from image_cri_shim.startup import remove_socket, use_config
from image_cri_shim.supervisor import events as ev
from image_cri_shim.supervisor import samples
from image_cri_shim.supervisor.children import Child, start_syncer, start_worker
from image_cri_shim.supervisor.control import ControlServer, Request, control_path
from image_cri_shim.supervisor.machine import Machine
from image_cri_shim.supervisor.notify import Notifier
from image_cri_shim.supervisor.watch import DirectoryWatch

if TYPE_CHECKING:
    from image_cri_shim.supervisor.endpoint import Endpoint

log = logs.get("master")

# What each signal the master listens for means; SIGCHLD only wakes the loop, which reaps.
_SIGNALS: dict[int, ev.Event | None] = {
    signal.SIGTERM: ev.Terminate(),
    signal.SIGINT: ev.Terminate(),
    signal.SIGHUP: ev.Hangup(),
    signal.SIGCHLD: None,
}


class Master:
    def __init__(self, config_path: str, config: Config, metrics_dir: str | None = None) -> None:
        self.path = config_path
        self.metrics_dir = metrics_dir
        self.metrics = MasterMetrics(active(config.metrics_address))
        self.endpoint: Endpoint | None = None
        self.control: ControlServer | None = None
        self.requests: dict[int, Request] = {}  # `--reload` clients waiting, by token
        self.tokens = itertools.count(1)
        self.inbox: Inbox[ev.Event | None]  # made by `run`, in the main thread
        self.notifier = Notifier()
        self.watch = DirectoryWatch(config_path, lambda: self.inbox.put(ev.FileChanged()))
        self.children: dict[ev.Ref, Child] = {}
        self.machine = Machine(config_path, config, self.notifier.watchdog_interval, time.monotonic())

    def run(self) -> int:
        self.inbox = Inbox(_SIGNALS)
        if not self.watch.start():
            log.warning(
                "no inotify watch on the config directory: changes are noticed by the poll",
                every=f"{self.machine.config.reload_interval:g}s",
            )
        log.info("starting", config=self.path, pid=os.getpid())
        self.start_control()
        self.carry_out(self.machine.start(time.monotonic()))
        try:
            while not self.machine.finished:
                wait = max(0.0, self.machine.deadline(self.reading()) - time.monotonic())
                for event in self.inbox.get(timeout=wait):
                    if event is not None:
                        self.feed(event)
                self.reap()
                self.feed(ev.Tick(self.reading()))
        finally:
            self.watch.stop()  # the inbox stays: a late signal is read by no one, and kills no one
            if self.control is not None:
                self.control.close()
            if self.endpoint is not None:
                self.endpoint.close()
        remove_socket(self.machine.config.shim)  # a killed worker may have left it
        log.info("stopped")
        return self.machine.exit_code

    def feed(self, event: ev.Event) -> None:
        self.carry_out(self.machine.handle(event, time.monotonic()))

    def reap(self) -> None:
        """Each child that exited becomes an `Exited` event, once its page and samples are put away."""
        for ref, child in list(self.children.items()):
            if (code := child.exited()) is None:
                continue
            if self.metrics_dir is not None:
                samples.retire(self.metrics_dir, child.pid)
            child.release()
            del self.children[ref]
            self.feed(ev.Exited(ref, code))

    def reading(self) -> Reading | None:
        """The serving worker's heartbeat page, as the machine asks for it."""
        ref = self.machine.serving()
        child = self.children.get(ref) if ref is not None else None
        return child.beat.read() if child is not None and child.beat is not None else None

    def on_report(self, generation: int, message: Message | None) -> None:
        """Called from a pipe-reader thread: hand over to the loop."""
        self.inbox.put(ev.Reported(generation, message))

    def on_request(self, request: Request) -> None:
        """Called from the control socket's thread."""
        if request.command != "reload":
            request.answer(ok=False, reason=f"unknown command {request.command!r}")
            return
        token = next(self.tokens)
        self.requests[token] = request
        self.inbox.put(ev.ReloadAsked(token))

    # -- actions -------------------------------------------------------------------------------------

    def carry_out(self, actions: list[ev.Action]) -> None:
        for action in actions:
            _ACTIONS[type(action)](self, action)

    def spawn_worker(self, action: ev.SpawnWorker) -> None:
        child = start_worker(self.path, action.generation, self.on_report, action.prove_every)
        self.children[ev.Ref("worker", action.generation)] = child

    def spawn_syncer(self, action: ev.SpawnSyncer) -> None:
        self.children[ev.Ref("syncer", action.number)] = start_syncer(self.path)

    def kill(self, action: ev.Kill) -> None:
        if (child := self.children.get(action.child)) is not None:
            child.signal(getattr(signal, action.signal))

    def notify(self, action: ev.Notify) -> None:
        if action.what in ("ready", "status"):
            getattr(self.notifier, action.what)(action.status)
        else:
            getattr(self.notifier, action.what)()

    def say(self, action: ev.Say) -> None:
        getattr(log, action.level)(action.text, **action.fields)

    def count_reload(self, action: ev.CountReload) -> None:
        self.metrics.reloads.labels(action.trigger, action.result).inc()
        self.metrics.last_reload_ok.set(1 if action.result == "ok" else 0)

    def count_restart(self, action: ev.CountRestart) -> None:
        self.metrics.restarts.labels(action.kind).inc()

    def set_generation(self, action: ev.SetGeneration) -> None:
        self.metrics.generation.set(action.generation)

    def answer(self, action: ev.Answer) -> None:
        reply = {k: logs.redact(v) if isinstance(v, str) else v for k, v in action.reply.items()}
        if (request := self.requests.pop(action.token, None)) is not None:
            request.answer(**reply)

    def apply(self, action: ev.Apply) -> None:
        use_config(action.config)

    def read_file(self, action: ev.ReadFile) -> None:
        try:
            read_back = ev.FileRead(action.trigger, action.load, read(self.path))
        except ConfigError as err:
            gone = not os.path.exists(self.path)
            read_back = ev.FileRead(action.trigger, action.load, None, str(err), gone)
        self.feed(read_back)

    def trim_heap(self, _action: ev.TrimHeap) -> None:
        trim_heap()

    def start_control(self) -> None:
        """The socket `--reload` talks to; without it (an unusable directory, which the worker
        reports in its own words) the service still runs and reloads on SIGHUP."""
        path = control_path(self.machine.config.shim)
        try:
            self.control = ControlServer(path, self.on_request)
        except OSError as err:
            log.warning(
                "control socket unavailable: --reload cannot reach this service",
                path=path,
                error=err.strerror,
            )

    # -- metrics -------------------------------------------------------------------------------------

    def serve_metrics(self, action: ev.ServeMetrics) -> None:
        """(Re)start the endpoint for the current `metricsAddress`; a failure is said, not fatal:
        metrics must never keep the image service from running."""
        if self.endpoint is not None:
            self.endpoint.close()
            self.endpoint = None
        address = self.machine.config.metrics_address
        if address is None or self.metrics_dir is None:
            if action.old_address is not None:
                log.info("metrics endpoint closed", address=action.old_address)
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
        """For /healthz, from the endpoint's thread."""
        try:
            reading = self.reading()
        except ValueError:  # the page was released in between: the worker just exited
            reading = None
        return self.machine.health(time.monotonic(), reading)


_ACTIONS: dict[type, Any] = {
    ev.SpawnWorker: Master.spawn_worker,
    ev.SpawnSyncer: Master.spawn_syncer,
    ev.Kill: Master.kill,
    ev.Notify: Master.notify,
    ev.Say: Master.say,
    ev.CountReload: Master.count_reload,
    ev.CountRestart: Master.count_restart,
    ev.SetGeneration: Master.set_generation,
    ev.Answer: Master.answer,
    ev.Apply: Master.apply,
    ev.ServeMetrics: Master.serve_metrics,
    ev.ReadFile: Master.read_file,
    ev.TrimHeap: Master.trim_heap,
}

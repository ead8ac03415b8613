"""The master's generations and timers, driven as a state machine: no process, socket or sleep.

Each test feeds events at chosen times and reads the actions back; `Driver` plays the loop's
part for the config file (a `ReadFile` is answered at once with the bytes in `Driver.file`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import pytest

from image_cri_shim.config import parse_bytes
from image_cri_shim.messages import Reading, RuntimeUp, Sandbox, Serving
from image_cri_shim.supervisor import events as ev
from image_cri_shim.supervisor.machine import (
    HEARTBEAT_STALE,
    READY_TIMEOUT,
    STOP_GRACE,
    SYNCER_BACKOFF_MAX,
    Machine,
)
from image_cri_shim.supervisor.reloads import DEBOUNCE

PATH = "/etc/image-cri-shim/config.yaml"
BASE = b"shim: /run/t/shim.sock\ncri: /run/t/cri.sock\naddress: http://sealos.hub:5000\n"
OTHER = BASE + b"timeout: 30s\n"
SAME = b"# saved again by an editor\n" + BASE
WATCHDOG = 10.0
FRESH = -1.0  # a heartbeat page stamped at the tick's own time
A = TypeVar("A")


def worker(number: int) -> ev.Ref:
    return ev.Ref("worker", number)


class Driver:
    """The machine with a clock, a config file and the actions of the last events."""

    def __init__(self, data: bytes = BASE, watchdog: float | None = WATCHDOG) -> None:
        self.now = 1000.0
        self.file: bytes | None = data
        self.machine = Machine(PATH, parse_bytes(data, PATH), watchdog, self.now, clock=lambda: "12:00:00")
        self.actions = self.machine.start(self.now)

    def feed(self, *events: ev.Event, at: float | None = None) -> list[ev.Action]:
        self.now = self.now if at is None else at
        self.actions = []
        for event in events:
            self.actions += self.carry(self.machine.handle(event, self.now))
        return self.actions

    def carry(self, actions: Iterable[ev.Action]) -> list[ev.Action]:
        done: list[ev.Action] = []
        for action in actions:
            done.append(action)
            if isinstance(action, ev.ReadFile):
                read = ev.FileRead(action.trigger, action.load, self.file, "", self.file is None)
                done += self.carry(self.machine.handle(read, self.now))
        return done

    def tick(self, at: float, served: float | None = FRESH, runtime_down: bool = False) -> list[ev.Action]:
        """The loop's wake-up at `at`, with the serving worker's page stamped at `served` (by
        default just now; None: no page)."""
        reading = None
        if served is not None:
            reading = Reading(at if served == FRESH else served, 0.0, 1.0 if runtime_down else 0.0)
        return self.feed(ev.Tick(reading), at=at)

    def serve(self, generation: int, runtime: str | None = "containerd 1.6.20 (v1)") -> list[ev.Action]:
        return self.feed(
            ev.Reported(generation, Serving("/run/t/shim.sock", "unix:///run/t/cri.sock", runtime))
        )

    def of(self, kind: type[A]) -> list[A]:
        return [a for a in self.actions if isinstance(a, kind)]

    def said(self) -> list[str]:
        return [a.text for a in self.of(ev.Say)]

    def notified(self) -> list[str]:
        return [a.what for a in self.of(ev.Notify)]


def serving() -> Driver:
    """A service whose first worker serves, READY=1 sent."""
    d = Driver()
    d.serve(1)
    return d


# -- start -------------------------------------------------------------------------------------------


def test_start_spawns_the_first_worker_and_the_syncer() -> None:
    d = Driver()
    assert d.of(ev.SpawnWorker) == [ev.SpawnWorker(1, 4.0)]
    assert d.of(ev.SpawnSyncer) == [ev.SpawnSyncer(1)]
    assert d.machine.children() == [worker(1), ev.Ref("syncer", 1)]


def test_ready_once_the_first_worker_serves_and_the_runtime_answers() -> None:
    d = Driver()
    d.serve(1, runtime=None)
    assert "ready" not in d.notified(), "READY=1 waits for the runtime"
    assert d.of(ev.Notify)[-1].status.endswith("waiting for the container runtime")
    d.feed(ev.Reported(1, RuntimeUp("containerd 1.6.20 (v1)")))
    assert d.notified() == ["ready"]
    assert d.of(ev.TrimHeap)


def test_force_announces_ready_without_the_runtime() -> None:
    d = Driver(BASE + b"force: true\n")
    d.serve(1, runtime=None)
    assert "ready" in d.notified()


def test_a_first_worker_that_exits_before_serving_stops_the_service() -> None:
    d = Driver()
    d.feed(ev.Exited(worker(1), 1))
    assert d.machine.exit_code == 1
    assert d.of(ev.Kill) == [ev.Kill(ev.Ref("syncer", 1), "SIGTERM")]
    assert not d.of(ev.SpawnWorker)
    d.feed(ev.Exited(ev.Ref("syncer", 1), 0))
    assert d.machine.finished


# -- reloads -----------------------------------------------------------------------------------------

RELOADS: list[tuple[str, list[ev.Event], bytes, bool]] = [
    # (case, events, the file's content, whether a new worker starts)
    ("SIGHUP, same content", [ev.Hangup()], BASE, True),
    ("SIGHUP, other settings", [ev.Hangup()], OTHER, True),
    ("--reload, same content", [ev.ReloadAsked(7)], BASE, True),
    ("file event, same bytes", [ev.FileChanged()], BASE, False),
    ("file event, same settings", [ev.FileChanged()], SAME, False),
    ("file event, other settings", [ev.FileChanged()], OTHER, True),
]


@pytest.mark.parametrize(("case", "events", "content", "swaps"), RELOADS, ids=[r[0] for r in RELOADS])
def test_what_starts_a_new_worker(case: str, events: list[ev.Event], content: bytes, swaps: bool) -> None:
    d = serving()
    d.file = content
    started = d.feed(*events)
    started += d.tick(d.now + DEBOUNCE, served=d.now)  # the debounce of a file event is due
    assert [a.generation for a in started if isinstance(a, ev.SpawnWorker)] == ([2] if swaps else [])


def test_the_poll_notices_a_change_the_watch_missed() -> None:
    d = serving()
    d.file = OTHER
    d.tick(d.now + 1.0, served=d.now)
    assert not d.of(ev.SpawnWorker)
    d.tick(d.now + d.machine.config.reload_interval)
    assert not d.of(ev.SpawnWorker), "what the poll saw is read again after the debounce"
    d.tick(d.now + DEBOUNCE)
    assert d.of(ev.SpawnWorker) == [ev.SpawnWorker(2, 4.0)]
    assert "config file changed (poll): reloading" in d.said()


def test_a_poll_that_catches_the_file_mid_write_waits_for_the_whole_of_it() -> None:
    d = serving()
    d.file = b""  # truncated by an editor that writes in place
    d.tick(d.now + d.machine.config.reload_interval)
    d.file = OTHER  # the write completes
    d.tick(d.now + DEBOUNCE)
    assert d.of(ev.SpawnWorker) == [ev.SpawnWorker(2, 4.0)]
    assert not [line for line in d.said() if "failed" in line]


def test_a_reload_swaps_once_the_new_worker_serves() -> None:
    d = serving()
    d.file = OTHER
    d.feed(ev.ReloadAsked(7))
    assert d.notified() == ["reloading"]
    assert d.of(ev.Apply)[0].config.timeout == 30.0
    assert "config loaded, starting a new worker" in d.said()
    assert d.machine.children() == [worker(1), worker(2), ev.Ref("syncer", 1)]
    d.serve(2)
    assert d.of(ev.Kill) == [ev.Kill(worker(1), "SIGTERM")]
    assert d.of(ev.CountReload) == [ev.CountReload("command", "ok")]
    assert d.of(ev.Answer)[0].token == 7 and d.of(ev.Answer)[0].reply["generation"] == 2
    assert d.of(ev.SetGeneration) == [ev.SetGeneration(2)]
    d.feed(ev.Exited(worker(1), 0))
    assert d.said() == ["old worker exited"]
    assert d.machine.children() == [worker(2), ev.Ref("syncer", 1)]


def test_an_invalid_file_keeps_the_worker_and_is_not_retried_until_it_changes() -> None:
    d = serving()
    d.file = BASE + b"timeout: soon\n"
    d.feed(ev.Hangup())
    assert not d.of(ev.SpawnWorker)
    assert d.of(ev.CountReload) == [ev.CountReload("signal", "invalid")]
    assert d.notified() == ["reloading", "ready"]
    assert "failed: config" in d.of(ev.Notify)[-1].status
    d.feed(ev.FileChanged())
    d.tick(d.now + DEBOUNCE)
    assert "reloading" not in d.notified(), "the same bad content is examined once"


def test_a_new_worker_that_exits_before_serving_fails_the_reload() -> None:
    d = serving()
    d.feed(ev.ReloadAsked(3))
    d.feed(ev.Exited(worker(2), 1))
    assert d.of(ev.CountReload) == [ev.CountReload("command", "failed")]
    assert d.of(ev.Answer) == [
        ev.Answer(3, {"ok": False, "reason": "worker gen=2 exited with code 1 before serving"})
    ]
    assert not d.of(ev.SpawnWorker), "the running worker stays"


def test_a_new_worker_that_never_serves_is_killed() -> None:
    d = serving()
    d.feed(ev.Hangup())
    assert d.machine.deadline(None) <= d.now + READY_TIMEOUT
    d.tick(d.now + READY_TIMEOUT + 0.1, served=d.now + READY_TIMEOUT)
    assert d.of(ev.Kill) == [ev.Kill(worker(2), "SIGKILL")]
    assert "did not serve within 30s" in d.of(ev.Say)[0].fields["reason"]  # type: ignore[operator]


def test_a_reload_asked_for_during_one_runs_after_it() -> None:
    d = serving()
    d.feed(ev.ReloadAsked(1))
    d.feed(ev.ReloadAsked(2))
    assert not d.of(ev.SpawnWorker), "one new worker at a time"
    d.serve(2)
    assert [a.token for a in d.of(ev.Answer)] == [1]
    assert d.of(ev.SpawnWorker) == [ev.SpawnWorker(3, 4.0)], "the queued reload starts now"
    d.serve(3)
    assert [a.token for a in d.of(ev.Answer)] == [2]


def test_metrics_address_change_restarts_the_endpoint() -> None:
    d = serving()
    d.file = BASE + b"metricsAddress: 127.0.0.1:9100\n"
    d.feed(ev.Hangup())
    assert d.of(ev.ServeMetrics) == [ev.ServeMetrics(None)]


def test_a_deleted_file_keeps_the_worker_and_is_said_once() -> None:
    d = serving()
    d.file = None
    for _ in range(2):
        d.feed(ev.FileChanged())
        d.tick(d.now + DEBOUNCE, served=d.now)
    assert not d.of(ev.SpawnWorker)
    d.file = None
    d.feed(ev.FileChanged())
    assert d.machine.file_missing


# -- a worker dying ------------------------------------------------------------------------------------


def test_a_dead_worker_is_replaced_at_once_then_with_backoff() -> None:
    d = serving()
    delays = []
    for number in range(1, 7):
        d.feed(ev.Exited(worker(number), -9), at=d.now + 1.0)
        restart = d.machine.worker_restart_at
        delays.append(0.0 if restart is None else restart - d.now)
        if restart is not None:
            d.tick(restart)
        assert d.of(ev.SpawnWorker) == [ev.SpawnWorker(number + 1, 4.0)]
        assert ev.CountRestart("worker") in d.actions or number > 1
        d.serve(number + 1)
    assert delays == [0.0, 0.0, 0.0, 2.0, 4.0, 8.0]


def test_a_worker_dying_during_a_reload_leaves_the_new_one_to_take_over() -> None:
    d = serving()
    d.feed(ev.Hangup())
    d.feed(ev.Exited(worker(1), -9))
    assert not d.of(ev.SpawnWorker)
    d.serve(2)
    assert d.machine.worker is not None and d.machine.worker.generation == 2


# -- the heartbeat and the watchdog ---------------------------------------------------------------------


def test_a_stale_heartbeat_kills_the_worker_and_starts_a_new_generation() -> None:
    d = serving()
    start = d.now
    assert d.machine.deadline(Reading(start, 0, 0)) <= start + HEARTBEAT_STALE
    d.tick(start + HEARTBEAT_STALE - 0.1, served=start)
    assert not d.of(ev.Kill)
    d.tick(start + HEARTBEAT_STALE + 0.1, served=start)
    assert d.of(ev.Kill) == [ev.Kill(worker(1), "SIGKILL")]
    assert d.of(ev.SpawnWorker) == [ev.SpawnWorker(2, 4.0)]
    assert "did not answer for 8s, replaced at 12:00:00" in d.of(ev.Notify)[-1].status
    d.feed(ev.Exited(worker(1), -9))
    assert not d.of(ev.SpawnWorker), "its exit is that of a replaced worker"


def test_watchdog_is_pinged_only_when_the_worker_served_since_the_last_ping() -> None:
    d = Driver(watchdog=6.0)
    d.serve(1)
    start = d.now
    d.tick(start + 0.5, served=start + 0.4)
    assert d.notified() == ["watchdog"]
    d.tick(start + 6.5, served=start + 0.4)
    assert d.notified() == [], "no proof since the last ping, though not stale yet"
    d.tick(start + 12.5, served=start + 11.5)
    assert d.notified() == ["watchdog"]


@pytest.mark.parametrize("phase", [0.0, 0.37, 1.9, 3.3])
def test_at_rest_the_loop_wakes_for_the_heartbeat_and_the_pings_ride_on_it(phase: float) -> None:
    d = Driver(watchdog=15.0)  # WatchdogSec=30
    d.serve(1)
    start, every, late = d.now, 4.0, 0.002  # the worker's loop proves itself every 4 s between calls

    def served(at: float) -> float:
        return start + phase + every * ((at - start - phase) // every)

    wakes, gaps, last_ping = 0, [], start
    at = d.machine.deadline(Reading(served(start), 0, 0)) + late
    while at < start + 600:
        d.tick(at, served=served(at))
        wakes += 1
        if d.notified() == ["watchdog"]:
            gaps.append(at - last_ping)
            last_ping = at
        at = d.machine.deadline(Reading(served(at), 0, 0)) + late
    assert not d.of(ev.Kill)
    assert wakes <= 10 * 10, f"{wakes} wake-ups in 10 minutes"
    assert gaps and max(gaps) <= 15.0 + late, "a ping at least every watchdog period"


def test_without_a_watchdog_idle_workers_prove_every_four_seconds_and_the_deadline_is_the_heartbeat() -> None:
    d = Driver(watchdog=None)
    d.serve(1)
    assert d.machine.deadline(Reading(d.now, 0, 0)) == d.now + HEARTBEAT_STALE
    d = Driver(watchdog=3.0)
    assert d.of(ev.SpawnWorker) == [ev.SpawnWorker(1, 1.5)]


def test_a_runtime_that_stops_answering_is_said_in_status_not_restarted() -> None:
    d = serving()
    d.tick(d.now + 1, served=d.now + 1, runtime_down=True)
    assert "not answering" in d.of(ev.Notify)[-1].status
    assert not d.of(ev.Kill)
    assert d.machine.health(d.now, Reading(d.now, 0, 1))[0]
    d.tick(d.now + 1, served=d.now + 1)
    assert "not answering" not in d.of(ev.Notify)[-1].status


PAUSE = "registry.k8s.io/pause:3.10"


def test_a_sandbox_image_that_cannot_be_had_is_said_in_status_and_healthz_while_it_serves() -> None:
    d = serving()
    d.feed(ev.Reported(1, Sandbox(PAUSE, "no configured registry holds it")))
    assert d.of(ev.Notify) == [
        ev.Notify("status", f"{d.machine.status_line()}"),
    ]
    assert f"sandbox image {PAUSE} unavailable: no configured registry holds it" in d.of(ev.Notify)[0].status
    healthy, text = d.machine.health(d.now, Reading(d.now, 0, 0))
    assert healthy and "sandbox image" in text and "no configured registry holds it" in text
    d.feed(ev.Reported(1, Sandbox(PAUSE, "no configured registry holds it")))
    assert not d.of(ev.Notify), "the same problem again changes nothing"
    d.feed(ev.Reported(1, Sandbox(PAUSE)))
    assert "sandbox" not in d.of(ev.Notify)[0].status
    assert "sandbox" not in d.machine.health(d.now, Reading(d.now, 0, 0))[1]


@pytest.mark.parametrize(
    ("new", "after"),
    [(Sandbox(PAUSE), ""), (Sandbox(PAUSE, "registry down"), "registry down")],
)
def test_a_new_generation_s_sandbox_word_replaces_the_old_one_at_the_swap(new: Sandbox, after: str) -> None:
    d = serving()
    d.feed(ev.Reported(1, Sandbox(PAUSE, "old problem")))
    d.file = OTHER
    d.feed(ev.Hangup())
    d.feed(ev.Reported(2, new))
    assert not d.of(ev.Notify), "a worker not serving yet changes nothing"
    d.serve(2)
    ready = [n.status for n in d.of(ev.Notify) if n.what == "ready"]
    assert len(ready) == 1 and "old problem" not in ready[0]
    assert (after in ready[0]) if after else "sandbox" not in ready[0]
    d.feed(ev.Reported(1, Sandbox(PAUSE, "the draining one")))
    assert not d.of(ev.Notify) and "draining" not in d.machine.status_line()


# -- the syncer -------------------------------------------------------------------------------------------


def test_a_syncer_that_keeps_dying_is_restarted_with_backoff() -> None:
    d = serving()
    delays = []
    for number in range(1, 6):
        d.feed(ev.Exited(ev.Ref("syncer", number), 1), at=d.now + 0.1)
        assert d.of(ev.CountRestart) == [ev.CountRestart("syncer")]
        restart = d.machine.syncer_restart_at
        assert restart is not None
        delays.append(restart - d.now)
        d.tick(restart, served=restart)
        assert d.of(ev.SpawnSyncer) == [ev.SpawnSyncer(number + 1)]
    assert delays == pytest.approx([1.0, 2.0, 4.0, 8.0, 16.0])
    d.feed(ev.Exited(ev.Ref("syncer", 6), 0), at=d.now + SYNCER_BACKOFF_MAX + 1)
    assert d.machine.syncer_restart_at == d.now + 0.5, "a syncer that ran a while restarts at once"


# -- stopping ---------------------------------------------------------------------------------------------


def test_sigterm_drains_workers_at_once_stops_the_syncer_and_answers_waiters() -> None:
    d = serving()
    d.feed(ev.ReloadAsked(5))
    d.feed(ev.Terminate())
    assert d.notified() == ["stopping"]
    assert d.of(ev.Answer) == [ev.Answer(5, {"ok": False, "reason": "the service is stopping"})]
    assert d.of(ev.Kill) == [
        ev.Kill(worker(1), "SIGINT"),
        ev.Kill(worker(2), "SIGINT"),
        ev.Kill(ev.Ref("syncer", 1), "SIGTERM"),
    ]
    d.feed(ev.Hangup(), ev.FileChanged(), ev.Exited(worker(1), 0), ev.Exited(ev.Ref("syncer", 1), 0))
    assert not d.of(ev.SpawnWorker) and not d.of(ev.SpawnSyncer), "nothing starts while stopping"
    assert not d.machine.finished
    d.feed(ev.Exited(worker(2), 0))
    assert d.machine.finished and d.machine.exit_code == 0


def test_children_that_outlive_the_stop_grace_get_sigkill() -> None:
    d = serving()
    d.feed(ev.Terminate())
    grace = d.machine.config.timeout + STOP_GRACE
    assert d.machine.deadline(None) == d.now + grace
    d.tick(d.now + grace + 0.1)
    assert {a.signal for a in d.of(ev.Kill)} == {"SIGKILL"}
    assert d.machine.deadline(None) == d.now + 1.0, "again each second, never a busy loop"


# -- what the machine never does --------------------------------------------------------------------------


def test_an_idle_service_sleeps_until_its_next_deadline() -> None:
    d = serving()
    d.tick(d.now)  # the first watchdog ping
    assert d.machine.deadline(Reading(d.now, 0, 0)) == d.now + HEARTBEAT_STALE
    assert d.tick(d.now + 1.0, served=d.now) == [], "nothing to do before a deadline"


def test_unknown_generations_and_closed_pipes_are_ignored() -> None:
    d = serving()
    assert d.feed(ev.Reported(9, RuntimeUp("x")), ev.Reported(1, None), ev.Exited(worker(9), 0)) == []


def _replies(actions: list[ev.Action]) -> list[dict[str, Any]]:
    return [a.reply for a in actions if isinstance(a, ev.Answer)]

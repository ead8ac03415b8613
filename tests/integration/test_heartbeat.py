"""The master judges its worker by the worker's heartbeat, not by its pid.

Real processes throughout: the service as systemd runs it, a containerd of its own per test
(frozen with SIGSTOP), clients calling through the shim socket the whole time. A worker that
stops serving (SIGSTOP) is killed and replaced and gets no WATCHDOG=1 meanwhile; a runtime
that stops answering is not the worker's fault and replaces nothing, also when every call
thread of the worker is waiting on it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import pytest

from image_cri_shim.heartbeat import RUNTIME_OK, Heartbeat
from image_cri_shim.supervisor.machine import HEARTBEAT_STALE
from tests.harness import Containerd, RegistryFactory, wait_for
from tests.harness.cri import CriClient
from tests.harness.evidence import record
from tests.harness.service import Service, alive

PING_USEC = 2_000_000  # WATCHDOG_USEC: a ping every second
RECOVERY_BOUND = 15.0
FROZEN_SECONDS = 20.0


@dataclass
class Calls:
    """A client calling Version every 50 ms with a short deadline; outcomes with their times."""

    socket: str
    deadline: float = 1.0
    outcomes: list[tuple[float, float, grpc.StatusCode]] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Calls:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        with CriClient(self.socket) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    client.version(timeout=self.deadline)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as err:
                    code = err.code()
                    self.details.append(f"{code.name}: {err.details()}")
                self.outcomes.append((started, time.monotonic(), code))
                time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)

    def answered_after(self, moment: float) -> float | None:
        """When the first call started after `moment` was answered."""
        return next(
            (end for start, end, code in self.outcomes if start > moment and code == grpc.StatusCode.OK), None
        )

    def failed(self, since: float) -> list[grpc.StatusCode]:
        return [code for start, _, code in self.outcomes if start >= since and code != grpc.StatusCode.OK]


def start_on(
    runtime: Containerd, registry_factory: RegistryFactory, service_factory: Callable[..., Service]
) -> tuple[Service, int]:
    """The service on `runtime`, pinging systemd every second; and its first worker's pid."""
    config = {"cri": runtime.address, "address": registry_factory().url, "configMap": {"enabled": False}}
    service = service_factory(config, env={"WATCHDOG_USEC": str(PING_USEC)})
    return service, worker_pid(service, 1)


def pings(service: Service, start: float, end: float) -> int:
    with service.notify._lock:
        return sum(1 for at, m in service.notify.messages if m.get("WATCHDOG") == "1" and start <= at <= end)


def worker_pid(service: Service, generation: int) -> int:
    pid = service.workers().get(generation)
    assert pid is not None, service.children()
    return pid


def test_a_stopped_worker_is_killed_and_replaced(
    containerd: Containerd, registry_factory: RegistryFactory, service_factory: Callable[..., Service]
) -> None:
    service, stopped = start_on(containerd, registry_factory, service_factory)
    calls = Calls(str(service.socket)).start()
    try:
        wait_for(lambda: calls.answered_after(0.0), 10, "a first answered call")
        wedged = time.monotonic()
        os.kill(stopped, signal.SIGSTOP)
        answered = wait_for(lambda: calls.answered_after(wedged), 30, "calls answered by a new worker")
    finally:
        calls.stop()
    recovery = answered - wedged
    new_serving = _status_time(service, "serving gen=2")
    interval = PING_USEC / 2e6
    silent_pings = pings(service, wedged + interval + 0.2, new_serving - 0.05)
    wait_for(lambda: not alive(stopped), 5, "the stopped worker to be gone")
    assert service.generation() == 2
    assert "worker is not answering" in service.process.log_text()
    assert "worker gen=1 did not answer" in _status_text(service, "replaced at")
    print(f"wedge to serving: {recovery:.2f} s")
    record(
        "the worker stopped (SIGSTOP): a wedged worker",
        load="a client calling Version every 50 ms, 1 s deadlines",
        faults="SIGSTOP to the serving worker",
        failed=f"{len(calls.failed(wedged))} calls until the new worker served (deadline, then reconnect)",
        lost="none",
        result=f"killed after {HEARTBEAT_STALE:g} s without a heartbeat; calls answered again"
        f" {recovery:.1f} s after the stop; {silent_pings} WATCHDOG=1 while none served",
    )
    assert recovery <= RECOVERY_BOUND, f"calls answered again only after {recovery:.1f}s"
    assert silent_pings == 0, "WATCHDOG=1 while no worker could serve"


def _status_text(service: Service, text: str) -> str:
    found = [m["STATUS"] for m in service.notify.since(0) if text in m.get("STATUS", "")]
    assert found, f"no STATUS= with {text!r}: {service.notify.text()}"
    return found[-1]


def _status_time(service: Service, text: str) -> float:
    with service.notify._lock:
        found = [at for at, m in service.notify.messages if text in m.get("STATUS", "")]
    assert found, f"no STATUS= with {text!r}: {service.notify.text()}"
    return found[-1]


def test_a_frozen_runtime_is_not_a_wedged_worker(
    own_containerd: Containerd, registry_factory: RegistryFactory, service_factory: Callable[..., Service]
) -> None:
    service, worker = start_on(own_containerd, registry_factory, service_factory)
    calls = Calls(str(service.socket), deadline=2.0).start()
    try:
        wait_for(lambda: calls.answered_after(0.0), 10, "a first answered call")
        frozen = time.monotonic()
        own_containerd.freeze()
        try:
            time.sleep(FROZEN_SECONDS)
            said = _status_text(service, "not answering")
            during = pings(service, frozen + 1, time.monotonic())
        finally:
            own_containerd.thaw()
        thawed = time.monotonic()
        answered = wait_for(lambda: calls.answered_after(thawed), 10, "calls answered after SIGCONT")
    finally:
        calls.stop()
    failures = calls.failed(frozen + 0.1)
    # A call waiting when its connection to the shim reaches its age (5 s) may end as UNAVAILABLE
    # "GOAWAY received ... max_age" instead of at its deadline; kubelet retries either alike.
    aged = sum(1 for d in calls.details if d.startswith("UNAVAILABLE") and "max_age" in d)
    slowest = max(end - start for start, end, _ in calls.outcomes)
    record(
        f"containerd frozen (SIGSTOP) for {FROZEN_SECONDS:g} s under a master",
        load="a client calling Version every 50 ms, 2 s deadlines",
        faults=f"containerd SIGSTOP for {thawed - frozen:.1f} s, then SIGCONT",
        failed=f"{len(failures)}: DEADLINE_EXCEEDED at the caller's deadline (slowest {slowest:.1f} s),"
        f" {aged} UNAVAILABLE as the client's connection to the shim aged out during the call",
        lost="none",
        result=f"the same worker throughout (no restart), WATCHDOG=1 kept ({during} pings); STATUS= said the"
        f" runtime was not answering; calls ok {answered - thawed:.2f} s after SIGCONT",
    )
    assert service.workers() == {1: worker}, "the worker was replaced while only the runtime was frozen"
    others = {d for d in calls.details if not d.startswith("DEADLINE_EXCEEDED") and "max_age" not in d}
    assert grpc.StatusCode.DEADLINE_EXCEEDED in failures and not others, others
    assert slowest < 2.0 + 2, "a call outlived its deadline by more than 2 s"
    assert own_containerd.address in said, said
    assert during >= FROZEN_SECONDS / 2 - 2, f"only {during} pings while the runtime was frozen"
    wait_for(
        lambda: "not answering" not in _status_text(service, "serving gen=1"),
        HEARTBEAT_STALE + 5,
        "STATUS= to say the runtime answers again",
    )


WAITING_CALLS = 272  # more than a thread pool of 256 would have held


def test_a_worker_whose_calls_all_wait_on_the_runtime_is_kept(
    own_containerd: Containerd, registry_factory: RegistryFactory, service_factory: Callable[..., Service]
) -> None:
    service, worker = start_on(own_containerd, registry_factory, service_factory)
    blocked = WAITING_CALLS
    with CriClient(service.socket) as client:
        client.version()
        own_containerd.freeze()
        try:
            request = client.pb.ImageFsInfoRequest()
            waiting = [client.images.ImageFsInfo.future(request, timeout=40) for _ in range(blocked)]
            saturated = time.monotonic()
            time.sleep(HEARTBEAT_STALE + 2)
            kept = service.workers() == {1: worker}
            during = pings(service, saturated, time.monotonic())
        finally:
            own_containerd.thaw()
        answered = sum(1 for call in waiting if call.exception(timeout=60) is None)
        client.version()
    record(
        f"{blocked} calls waiting on a frozen runtime",
        load=f"{blocked} ImageFsInfo calls at once, 40 s deadlines",
        faults="containerd SIGSTOP while they wait, SIGCONT after the heartbeat's bound has passed",
        failed=f"{blocked - answered}",
        lost="none",
        result=f"waiting, not wedged: the same worker throughout, WATCHDOG=1 kept ({during} pings);"
        f" {answered} of {blocked} calls answered after SIGCONT",
    )
    assert kept and service.workers() == {1: worker}, "the saturated worker was replaced"
    assert during >= 3
    assert answered == blocked


def test_without_memfd_the_page_is_an_unnamed_file_in_shared_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """glibc 2.17 (the offline bundle's floor, CentOS 7) has no memfd_create: the page is then a
    /dev/shm file unlinked at once, shared the same way."""
    monkeypatch.delattr(os, "memfd_create")
    page = Heartbeat()
    target = os.readlink(f"/proc/self/fd/{page.fd}")
    assert target.startswith("/dev/shm/") and target.endswith(" (deleted)"), target
    other = Heartbeat(os.dup(page.fd))
    page.stamp(RUNTIME_OK, now=42.0)
    assert other.read().runtime_ok == 42.0
    other.close()
    page.close()

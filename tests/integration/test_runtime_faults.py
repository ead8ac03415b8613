"""The container runtime fails under the proxy worker: containerd stopped, killed, frozen and
started again while clients keep calling, and a worker that starts before containerd does.

Each test runs a containerd of its own (the one other tests share must stay up). While it is
down every call fails with UNAVAILABLE naming the socket; once it answers again, calls through
the same worker (same pid, never restarted) succeed within about a second: the worker's one
channel to the runtime reconnects by itself, its reconnect backoff capped at one second.
"""

from __future__ import annotations

import collections
import itertools
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import pytest

from tests.harness import Blackhole, Containerd, wait_for
from tests.harness.cri import CriClient
from tests.harness.evidence import record
from tests.harness.node import Stack, repo
from tests.harness.worker import (
    ABSENT,
    NO_REGISTRY,
    outcome,
    serving_pid,
    settles,
    still_serving,
    usage,
    warm,
)

CLIENTS = 4
# The worker's thread pool never shrinks and starts a thread whenever a call finds none idle,
# so under load it may grow by up to the number of callers; a leak grows with every call.
POOL_GROWTH = CLIENTS + 2
DOWN_SECONDS = 3.0
# A worker whose channel waited out grpc's default reconnect backoff (up to 120 s) would fail this.
RECOVERY_LIMIT = 10.0


@dataclass(frozen=True)
class Outcome:
    started: float
    ended: float
    code: grpc.StatusCode
    message: str


@dataclass
class Load:
    """Clients calling the worker in a loop, each outcome kept with its times."""

    clients: list[CriClient]
    timeout: float = 5.0  # each call's deadline
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for client in self.clients:
            thread = threading.Thread(target=self._run, args=(client,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)
        assert not any(thread.is_alive() for thread in self._threads), "a client call hung"

    def _run(self, client: CriClient) -> None:
        timeout = self.timeout
        calls: list[Callable[[], object]] = [
            lambda: client.status(ABSENT, timeout=timeout),
            lambda: client.list(timeout=timeout),
            lambda: client.version(timeout=timeout),
            lambda: client.fs_info(timeout=timeout),
        ]
        for call in itertools.cycle(calls):
            if self._stop.is_set():
                return
            started = time.monotonic()
            try:
                call()
                code, message = grpc.StatusCode.OK, ""
            except grpc.RpcError as err:
                code, message = err.code(), err.details() or ""
            self.outcomes.append(Outcome(started, time.monotonic(), code, message))
            time.sleep(0.02)  # a steady load, not a busy loop on a shared machine

    def first_success_after(self, moment: float, limit: float) -> float:
        """Seconds from `moment` until a call that started after it succeeded (bounded wait)."""
        deadline = moment + limit
        while time.monotonic() < deadline:
            for done in list(self.outcomes):
                if done.started >= moment and done.code == grpc.StatusCode.OK:
                    return done.ended - moment
            time.sleep(0.02)
        raise AssertionError(f"no call succeeded within {limit:g}s after containerd answered again")

    def failures(self, since: float = 0.0) -> list[Outcome]:
        return [o for o in self.outcomes if o.started >= since and o.code != grpc.StatusCode.OK]


@pytest.mark.parametrize("fault", ["stop", "kill"])
def test_containerd_down_and_back_under_load(
    fault: str, own_containerd: Containerd, blackhole: Blackhole, stack: Stack
) -> None:
    shim = stack.start_on(own_containerd.address, NO_REGISTRY)
    pid = shim.process.pid
    checker = stack.cri(shim.socket)
    warm(checker)
    load = Load([stack.cri(shim.socket, version) for version in ("v1", "v1alpha2") * (CLIENTS // 2)])
    load.start()
    # A pull that containerd is still working on when it goes away (its registry never answers).
    pulling: list[tuple[grpc.StatusCode, str]] = []
    puller = stack.cri(shim.socket)
    image = f"{blackhole.host}/library/hangs:1"
    pull = threading.Thread(target=lambda: pulling.append(outcome(lambda: puller.pull(image, timeout=60))))
    try:
        pull.start()
        wait_for(lambda: blackhole.accepted, 10, "containerd to reach the registry of the pull")
        time.sleep(1.0)
        before = usage(pid)  # with the load's connections open and its threads in the pool
        down = time.monotonic()
        # stop: SIGTERM, containerd removes its socket; kill: SIGKILL, a stale socket refuses.
        own_containerd.stop() if fault == "stop" else own_containerd.kill()
        pull.join(10)
        assert pulling, "the pull in flight ended when containerd went away"
        code, message = pulling[0]
        assert code == grpc.StatusCode.UNAVAILABLE, pulling
        assert f"connection to the container runtime at {own_containerd.address} was lost" in message, message
        time.sleep(DOWN_SECONDS)
        assert load.failures(since=down + 0.5), "calls failed while containerd was down"
        own_containerd.start()
        back = own_containerd.answered_at
        recovery = load.first_success_after(back, RECOVERY_LIMIT)
        recovered = back + recovery
        time.sleep(1.0)
    finally:
        load.stop()
    failures = load.failures()
    codes = collections.Counter(o.code for o in failures)
    assert set(codes) == {grpc.StatusCode.UNAVAILABLE}, [
        o for o in failures if o.code != grpc.StatusCode.UNAVAILABLE
    ]
    unnamed = {o.message for o in failures if str(own_containerd.socket) not in o.message}
    assert not unnamed, f"messages that do not name the runtime socket: {unnamed}"
    late = [o for o in failures if o.started > recovered]
    assert not late, f"calls failed after the worker reconnected: {late[:3]}"
    assert serving_pid(shim.socket) == pid
    still_serving(shim, checker)
    after = settles(pid, before, threads=POOL_GROWTH)
    kinds = collections.Counter("unreachable" if "unreachable" in o.message else "lost" for o in failures)
    record(
        f"containerd {'stopped' if fault == 'stop' else 'killed'} and started again under load",
        load=f"{CLIENTS} clients (v1, v1alpha2) ImageStatus/ListImages/Version/ImageFsInfo,"
        f" {len(load.outcomes)} calls; 1 PullImage in flight",
        faults=f"containerd {'SIGTERM' if fault == 'stop' else 'SIGKILL (stale socket)'}, "
        f"{back - down:.1f} s until it answered again",
        failed=f"{len(failures) + 1}, all UNAVAILABLE naming the socket: {kinds['unreachable']}"
        f" 'unreachable', {kinds['lost'] + 1} 'connection lost' (the PullImage in flight among them)",
        lost="none",
        result=f"calls ok {recovery:.2f} s after containerd answered ({recovered - down:.1f} s after the"
        f" fault); worker pid unchanged; {before} -> {after}",
    )


def test_worker_started_before_containerd(own_containerd: Containerd, stack: Stack) -> None:
    own_containerd.stop()
    started = time.monotonic()
    shim = stack.start_on(own_containerd.address, NO_REGISTRY, force=True)
    pid = shim.process.pid
    load = Load([stack.cri(shim.socket, "v1")])
    load.start()
    try:
        time.sleep(DOWN_SECONDS)
        own_containerd.start()
        back = own_containerd.answered_at
        recovery = load.first_success_after(back, RECOVERY_LIMIT)
        time.sleep(0.5)
    finally:
        load.stop()
    failures = load.failures()
    assert failures, "calls failed before containerd started"
    assert {o.code for o in failures} == {grpc.StatusCode.UNAVAILABLE}
    assert all(str(own_containerd.socket) in o.message for o in failures)
    assert not load.failures(since=back + recovery)
    assert serving_pid(shim.socket) == pid
    wait_for(lambda: "container runtime answers" in shim.log(), 5, "the worker to log the runtime")
    record(
        "worker started before containerd",
        load=f"1 client, {len(load.outcomes)} calls",
        faults=f"no containerd for the worker's first {back - started:.1f} s (force: true)",
        failed=f"{len(failures)}, all UNAVAILABLE naming the socket",
        lost="none",
        result=f"calls ok {recovery:.2f} s after containerd answered; worker pid unchanged",
    )


def test_containerd_frozen_under_load(own_containerd: Containerd, stack: Stack) -> None:
    shim = stack.start_on(own_containerd.address, NO_REGISTRY)
    pid = shim.process.pid
    checker = stack.cri(shim.socket)
    warm(checker)
    deadline = 1.0
    load = Load(
        [stack.cri(shim.socket, version) for version in ("v1", "v1alpha2") * (CLIENTS // 2)], deadline
    )
    load.start()
    try:
        time.sleep(1.0)
        before = usage(pid)
        frozen = time.monotonic()
        own_containerd.freeze()
        try:
            time.sleep(DOWN_SECONDS)
        finally:
            own_containerd.thaw()
        thawed = time.monotonic()
        recovery = load.first_success_after(thawed, RECOVERY_LIMIT)
        time.sleep(1.0)
    finally:
        load.stop()
    failures = load.failures()
    assert failures, "calls failed while containerd was frozen"
    assert {o.code for o in failures} == {grpc.StatusCode.DEADLINE_EXCEEDED}, failures[:3]
    slowest = max(o.ended - o.started for o in load.outcomes)
    assert slowest < deadline + 2, "a call outlived its deadline by more than 2 s"
    assert not load.failures(since=thawed + recovery)
    still_serving(shim, checker)
    after = settles(pid, before, threads=POOL_GROWTH)
    record(
        "containerd frozen (SIGSTOP) under load",
        load=f"{CLIENTS} clients, {deadline:g} s deadlines, {len(load.outcomes)} calls",
        faults=f"containerd SIGSTOP for {thawed - frozen:.1f} s, then SIGCONT",
        failed=f"{len(failures)}, all DEADLINE_EXCEEDED at the caller's deadline (slowest {slowest:.2f} s)",
        lost="none",
        result=f"calls ok {recovery:.2f} s after SIGCONT; worker pid unchanged; {before} -> {after}",
    )


class Snapless(Containerd):
    """A containerd whose CRI unpacks through the snapshotter named `refusing` (a proxy plugin)."""

    def write_config(self) -> None:
        super().write_config()
        text = self.config_path.read_text().replace('snapshotter = "native"', 'snapshotter = "refusing"')
        self.config_path.write_text(text)


def test_the_runtimes_own_unavailable_passes_unchanged(
    tmp_path_factory: pytest.TempPathFactory, stack: Stack
) -> None:
    """containerd answers UNAVAILABLE of its own, naming a connection refused: its snapshotter is
    a proxy plugin whose socket refuses. That is the runtime's answer, not a lost runtime: code
    and message reach the caller as containerd sent them."""
    work = tmp_path_factory.mktemp("snapless")
    dead = work / "snap.sock"
    refusing = socket.socket(socket.AF_UNIX)
    refusing.bind(str(dead))
    refusing.close()  # the socket file stays; connecting to it is refused
    proxy = f'\n[proxy_plugins]\n  [proxy_plugins.refusing]\n    type = "snapshot"\n    address = "{dead}"\n'
    daemon = Snapless(work / "c", extra_config=proxy)
    daemon.start()
    try:
        registry = stack.registries()
        name = repo()
        stack.images(registry, name, "1")
        image = f"{registry.host}/{name}:1"
        direct = outcome(lambda: stack.cri(daemon.socket).pull(image))
        shim = stack.start_on(daemon.address, NO_REGISTRY)
        proxied = outcome(lambda: stack.cri(shim.socket).pull(image))
    finally:
        daemon.stop()
    assert direct[0] == grpc.StatusCode.UNAVAILABLE and "connection refused" in direct[1], direct
    assert proxied[0] == direct[0], proxied

    def unnamed(message: str) -> str:  # the snapshot key containerd makes up for each attempt
        return re.sub(r'"extract-[^ ]+ ', '"extract-… ', message)

    assert unnamed(proxied[1]) == unnamed(direct[1]), "the runtime's own answer, unchanged"

"""An unprivileged local user against the service (uid 65534, `tests/harness/intruder.py`): it
cannot take the master's threads, win a connection to a socket before its mode is set, read
credentials sent where they do not belong, or plant state (docs/behaviour.md)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

import grpc

from tests.harness import Containerd, RegistryFactory, free_port
from tests.harness.cri import CriClient
from tests.harness.evidence import record
from tests.harness.intruder import SLOW_HEADERS, Intruder
from tests.harness.processes import wait_for
from tests.harness.scrape import get
from tests.harness.service import Service, base_config, usage


def threads(pid: int) -> int:
    found = usage(pid)
    assert found is not None, f"process {pid} is gone"
    return found.threads


def test_slow_header_clients_take_neither_the_masters_threads_nor_its_reloads(
    containerd: Containerd, registry_factory: RegistryFactory, service_factory: Callable[..., Service]
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    service = service_factory({**base_config(containerd, registry_factory()), "metricsAddress": address})
    master = service.process.pid
    wait_for(lambda: get(address, "/healthz")[0] == 200 or None, 10, "the metrics endpoint")
    resting = threads(master)
    peak = resting
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.05):
            peak = max(peak, threads(master))

    sampler = threading.Thread(target=sample, daemon=True)
    intruder = Intruder(SLOW_HEADERS, "127.0.0.1", port, 64, 15)
    sampler.start()
    try:
        time.sleep(3)  # the attack in full swing
        service.reload_and_wait(lambda: service.process.signal(signal.SIGHUP), timeout=30)
        generation = service.generation()
        os.kill(service.workers()[generation], signal.SIGKILL)
        with CriClient(service.socket, timeout=1) as client:

            def replaced() -> bool:
                try:
                    client.version(timeout=0.5)
                except grpc.RpcError:
                    return False
                return service.generation() == generation + 1

            wait_for(replaced, 30, "a replacement worker that serves")
        report = intruder.result(timeout=30)
    finally:
        stop.set()
        sampler.join(5)
        intruder.stop()
    # The master: its main thread, the control socket's and the endpoint's, and those its own
    # work starts for a moment; never one per connection.
    assert peak <= resting + 2, f"master threads: {resting} at rest, {peak} under the attack"
    assert report["opened"] > 64, report  # the endpoint closed the clients' connections
    assert get(address, "/healthz")[0] == 200
    record(
        "slow-header clients on metricsAddress",
        load="a local user keeping 64 connections that never end their headers, for 15 s",
        faults=f"{report['opened']} connections opened; a reload (SIGHUP) and a SIGKILLed worker meanwhile",
        failed="none",
        lost="none",
        result=f"master threads {resting} at rest, {peak} at most; the reload and the worker restart "
        "worked; each connection closed 2 s after accept, at most 8 at once",
    )

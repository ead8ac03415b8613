"""An unprivileged local user against the service (uid 65534, `tests/harness/intruder.py`): it
cannot take the master's threads, win a connection to a socket before its mode is set, read
credentials sent where they do not belong, or plant state (docs/behaviour.md)."""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from tests.harness import Containerd, ImageBuilder, RegistryFactory, free_port
from tests.harness.cri import CriClient
from tests.harness.evidence import record
from tests.harness.intruder import CONNECTS, NOBODY, SLOW_HEADERS, Intruder
from tests.harness.node import repo
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
        # Scrapes still get in: a new connection displaces the oldest that never ended its head.
        scrapes = [get(address, "/healthz")[0] for _ in range(10)]
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
    print(f"master threads: {resting} at rest, {peak} at most under the attack; {report}")
    # The master: its main thread, the control socket's and the endpoint's, and those its own
    # work starts for a moment; never one per connection.
    assert peak <= resting + 2, f"master threads: {resting} at rest, {peak} under the attack"
    assert scrapes == [200] * 10, scrapes
    assert report["opened"] > 64, report  # the endpoint closed the clients' connections
    assert get(address, "/healthz")[0] == 200
    record(
        "slow-header clients on metricsAddress",
        load="a local user keeping 64 connections that never end their headers, for 15 s",
        faults=f"{report['opened']} connections opened; a reload (SIGHUP) and a SIGKILLed worker meanwhile",
        failed="none",
        lost="none",
        result=f"master threads {resting} at rest, {peak} at most; 10 of 10 scrapes answered, the "
        "reload and the worker restart worked; at most 8 connections, the oldest unfinished one gives way",
    )


def move_metrics(service: Service, path: Path) -> None:
    service.edit(lambda config: config.update(metricsAddress=str(path)))


def test_under_umask_000_no_socket_is_open_to_another_user_for_a_moment(
    containerd: Containerd,
    registry_factory: RegistryFactory,
    service_factory: Callable[..., Service],
    short_dir: Path,
) -> None:
    short_dir.chmod(0o755)  # nobody may look into the socket directory, as into /var/run
    old = os.umask(0)
    try:
        service = service_factory(
            {**base_config(containerd, registry_factory()), "metricsAddress": str(short_dir / "m0.sock")}
        )
    finally:
        os.umask(old)
    intruder = Intruder(CONNECTS, short_dir, 120)
    reloads = 6
    try:
        time.sleep(0.5)
        for n in range(1, reloads + 1):
            # Each reload binds a new worker's socket and, as the address moves, the endpoint's.
            service.reload_and_wait(
                functools.partial(move_metrics, service, short_dir / f"m{n % 2}.sock"), 30
            )
        time.sleep(1)
        report = intruder.finish()
    finally:
        intruder.stop()
    # The test's own notify socket is made by this process, under the same umask.
    wins = {name: n for name, n in report["wins"].items() if not name.startswith("notify-")}
    print(f"connect attempts {report['tries']}, won {wins or 'none'}")
    assert report["tries"] > 1000, report
    assert not wins, f"a local user connected to {wins} ({report['tries']} attempts)"
    assert os.stat(service.socket).st_mode & 0o777 == 0o660
    assert os.stat(short_dir / "m0.sock").st_mode & 0o777 == 0o660
    record(
        "a local user connecting to every socket of the shim during reloads, service under umask 000",
        load=f"{report['tries']} connect attempts as uid 65534",
        faults=f"{reloads} reloads, each binding a new worker's socket and moving the metrics socket",
        failed="none",
        lost="none",
        result="no connect won: every socket is bound 0600 and set to 0660 (0600 control) before use",
    )


def test_a_planted_state_directory_is_not_trusted_and_a_readable_secret_is_said(
    containerd: Containerd,
    registry_factory: RegistryFactory,
    image_factory: ImageBuilder,
    service_factory: Callable[..., Service],
    short_dir: Path,
) -> None:
    registry = registry_factory(auth=True)
    assert registry.password is not None
    name = repo()
    image_factory.push(registry, name, "v1")
    # What a local user prepares in a state directory anyone may write.
    state = short_dir / "state"
    state.mkdir()
    state.chmod(0o777)
    names = state / "names.json"
    names.write_text(json.dumps({"names": {"docker.io/library/nginx:latest": "evil.example/x:1"}}))
    os.chown(names, NOBODY, NOBODY)
    planted = short_dir / "made-by-root"
    (state / ".names.lock").symlink_to(planted)
    os.lchown(state / ".names.lock", NOBODY, NOBODY)
    before = names.read_bytes()
    service = service_factory(
        {**base_config(containerd, registry), "auth": registry.auth, "stateDir": str(state)}
    )
    config_mode = service.config.stat().st_mode & 0o777
    assert config_mode & 0o044, "the harness writes the config readable by others"
    with CriClient(service.socket) as client:
        client.pull(f"{name.removeprefix('library/')}:v1")
    log = service.process.log_text()
    said = f"stateDir {state} is mode 0777: writable by group and others: its files are not trusted"
    assert said in log, log
    assert f"config {service.config} is mode {config_mode:04o}: it holds passwords and is readable by" in log
    assert registry.password not in log and registry.password.split(":", 1)[-1] not in log
    assert not planted.exists(), "root followed the planted lock link"
    assert names.read_bytes() == before, "the planted names file was read back and rewritten"
    record(
        "a state directory anyone may write, with planted files",
        load="1 pull through the shim",
        faults="stateDir mode 0777 holding a names.json that remaps nginx and a .names.lock symlink",
        failed="none",
        lost="the names are kept in memory only while the directory stays so",
        result="one warning naming stateDir and its mode; nothing read or written there, the link "
        "not followed; the config readable by others with a password: one warning naming file and "
        "mode, no secret",
    )

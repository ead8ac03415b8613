"""The master process with its real children: notify protocol, reloads under load, crash isolation.

The master runs as systemd would run it: `image-cri-shim -f CONFIG` with a test-owned
NOTIFY_SOCKET that records every message. Clients talk to the shim socket the whole time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from tests.harness import Containerd, ImageBuilder, RegistryFactory
from tests.harness.cri import CriClient
from tests.harness.processes import ManagedProcess, wait_for
from tests.harness.tcpproxy import TcpProxy

ROOT = Path(__file__).resolve().parent.parent


class NotifySocket:
    """A unix datagram socket standing in for systemd's, recording every message."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.1)
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(65536).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    def since(self, index: int) -> list[dict[str, str]]:
        with self._lock:
            return [m for _, m in self.messages[index:]]

    def wait(self, key: str, value: str = "1", after: int = 0, timeout: float = 10.0) -> dict[str, str]:
        """The first message from `after` on that carries key=value."""

        def find() -> dict[str, str] | None:
            for message in self.since(after):
                if message.get(key) == value:
                    return message
            return None

        found: dict[str, str] = wait_for(find, timeout, f"{key}={value} on the notify socket")
        return found

    def close(self) -> None:
        self._closed = True
        self._sock.close()


class Service:
    """A master started like systemd starts it, with what tests need around it."""

    def __init__(self, directory: Path, process: ManagedProcess, notify: NotifySocket, config: Path) -> None:
        self.directory = directory
        self.process = process
        self.notify = notify
        self.config = config
        self.socket = directory / "shim.sock"

    def children(self) -> dict[int, str]:
        """pid -> title of the master's children."""
        return children(self.process.pid)

    def child(self, prefix: str) -> int:
        matches = [pid for pid, t in self.children().items() if t.startswith(prefix)]
        assert len(matches) == 1, f"expected one child titled {prefix!r}: {self.children()}"
        return matches[0]

    def generation(self) -> int:
        """The newest worker generation (an old one may still be draining)."""
        titles = [t for t in self.children().values() if t.startswith("image-cri-shim: worker gen=")]
        assert titles, f"no worker: {self.children()}"
        return max(int(t.rsplit("=", 1)[1]) for t in titles)

    def edit(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Replace the config by rename, as editors and the syncer do."""
        data = yaml.safe_load(self.config.read_text())
        change(data)
        temp = self.config.with_suffix(".new")
        temp.write_text(yaml.safe_dump(data))
        os.rename(temp, self.config)

    def reload_and_wait(self, trigger: Callable[[], object]) -> dict[str, str]:
        """Trigger a reload; wait for RELOADING=1 then READY=1; returns the READY message."""
        mark = self.notify.count()
        trigger()
        self.notify.wait("RELOADING", after=mark)
        reloading_at = mark + next(
            i for i, m in enumerate(self.notify.since(mark)) if m.get("RELOADING") == "1"
        )
        return self.notify.wait("READY", after=reloading_at + 1)


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped by whoever adopted it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children(parent: int) -> dict[int, str]:
    """pid -> title of every process whose parent is `parent`."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == parent:
                    found[int(entry)] = title(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


def title(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().split(b"\0")[0].decode(errors="replace")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="svc-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def service_factory(short_dir: Path) -> Iterator[Callable[..., Service]]:
    started: list[Service] = []

    def start(
        config: dict[str, Any],
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
        program: Sequence[str] = (sys.executable, "-m", "image_cri_shim"),
    ) -> Service:
        path = short_dir / "config.yaml"
        path.write_text(
            yaml.safe_dump(
                {"shim": str(short_dir / "shim.sock"), "stateDir": str(short_dir / "state"), **config}
            )
        )
        notify = NotifySocket(short_dir / "notify.sock")
        environment = {
            **os.environ,
            "NOTIFY_SOCKET": str(notify.path),
            "HOME": str(short_dir),  # the syncer finds no cluster here and idles quietly
            "KUBECONFIG": str(short_dir / "no-kubeconfig"),
            **(env or {}),
        }
        argv = [*program, "-f", str(path)]
        process = ManagedProcess(argv, short_dir / "master.log", env=environment, name="master")
        service = Service(short_dir, process, notify, path)
        started.append(service)
        if wait_ready:
            service.notify.wait("READY", timeout=10)
        return service

    yield start
    for service in started:
        children = list(service.children())
        service.process.stop(timeout=20)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        service.notify.close()
        print(service.process.describe(lines=60))


def base_config(containerd: Containerd, registry: Any) -> dict[str, Any]:
    return {"cri": containerd.address, "address": registry.url}


class Load:
    """Client threads calling ImageStatus and ListImages through the shim, counting failures."""

    def __init__(self, socket_path: Path, threads: int = 4) -> None:
        self.calls = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(socket_path,), daemon=True) for _ in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, socket_path: Path) -> None:
        with CriClient(socket_path, timeout=10) as client:
            while not self._stop.is_set():
                try:
                    client.status("docker.io/library/busybox:1")
                    client.list()
                    with self._lock:
                        self.calls += 2
                except grpc.RpcError as err:
                    with self._lock:
                        self.failures.append(f"{err.code()}: {err.details()}")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


# -- start, titles, notify, stop ---------------------------------------------------------------------


def test_ready_titles_and_a_clean_stop(
    containerd: Containerd, registry_factory: RegistryFactory, service_factory: Callable[..., Service]
) -> None:
    started = time.monotonic()
    service = service_factory(base_config(containerd, registry_factory()))
    ready_after = time.monotonic() - started
    assert ready_after < 3, f"READY=1 after {ready_after:.2f}s"
    ready = service.notify.since(0)[0]
    assert ready["READY"] == "1" and ready["STATUS"].startswith("serving gen=1")

    assert title(service.process.pid) == "image-cri-shim: master"
    titles = sorted(service.children().values())
    assert titles == ["image-cri-shim: syncer", "image-cri-shim: worker gen=1"], titles
    with open(f"/proc/{service.process.pid}/maps") as maps:
        assert "cygrpc" not in maps.read(), "the master has loaded grpc"
    assert os.stat(service.socket).st_mode & 0o777 == 0o660
    with CriClient(service.socket) as client:
        assert client.version().runtime_name == "containerd"

    mark = service.notify.count()
    children = list(service.children())
    service.process.signal(signal.SIGTERM)
    assert service.process.stop(timeout=20) == 0
    assert any(m.get("STOPPING") == "1" for m in service.notify.since(mark))
    assert not service.socket.exists(), "the shim socket is removed"
    assert not any(alive(pid) for pid in children)


def test_master_imports_neither_grpc_nor_kubernetes() -> None:
    code = (
        "import sys, image_cri_shim.cli, image_cri_shim.supervisor.main;"
        "bad = [m for m in ('grpc', 'kubernetes', 'httpx') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_watchdog_pings_while_healthy(
    containerd: Containerd, registry_factory: RegistryFactory, service_factory: Callable[..., Service]
) -> None:
    service = service_factory(base_config(containerd, registry_factory()), env={"WATCHDOG_USEC": "400000"})
    mark = service.notify.count()
    time.sleep(1.2)
    pings = [m for m in service.notify.since(mark) if m.get("WATCHDOG") == "1"]
    assert len(pings) >= 3, pings


def test_config_error_at_start_is_one_line(short_dir: Path) -> None:
    path = short_dir / "config.yaml"
    path.write_text("address: http://127.0.0.1:5000\ntimeout: soon\n")
    done = subprocess.run(
        [sys.executable, "-m", "image_cri_shim", "-f", str(path)], capture_output=True, text=True, timeout=10
    )
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1 and f"config {path}: timeout:" in done.stderr


def test_a_first_worker_that_cannot_serve_stops_the_service(
    containerd: Containerd, registry_factory: RegistryFactory, short_dir: Path
) -> None:
    (short_dir / "file").write_text("")
    path = short_dir / "config.yaml"
    config = {**base_config(containerd, registry_factory()), "shim": str(short_dir / "file" / "s.sock")}
    path.write_text(yaml.safe_dump({**config, "configMap": {"enabled": False}}))
    done = subprocess.run(
        [sys.executable, "-m", "image_cri_shim", "-f", str(path)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert "cannot create socket directory" in done.stderr
    assert "Traceback" not in done.stderr


def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is missing (Debian package systemd)"
    unit = (ROOT / "systemd" / "image-cri-shim.service").read_text()
    assert "Type=notify\n" in unit and "ExecReload=/bin/kill -HUP $MAINPID" in unit
    # verify checks that ExecStart exists: point it at this environment's entry point
    script = Path(sys.executable).parent / "image-cri-shim"
    (tmp_path / "image-cri-shim.service").write_text(
        unit.replace("/usr/local/bin/image-cri-shim", str(script))
    )
    done = subprocess.run(
        [analyze, "verify", str(tmp_path / "image-cri-shim.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


# -- reloads ------------------------------------------------------------------------------------------


def test_twenty_reloads_under_load_lose_no_call(
    containerd: Containerd, registry_factory: RegistryFactory, service_factory: Callable[..., Service]
) -> None:
    service = service_factory(base_config(containerd, registry_factory()))
    load = Load(service.socket)
    latencies = []
    try:
        for i in range(20):
            before = service.generation()
            started = time.monotonic()
            if i % 2:
                ready = service.reload_and_wait(lambda: service.process.signal(signal.SIGHUP))
            else:
                size = 1000 + i
                ready = service.reload_and_wait(
                    lambda size=size: service.edit(lambda c: c.update(cache={"imageCacheSize": size}))  # type: ignore[misc]
                )
            latencies.append(time.monotonic() - started)
            assert f"serving gen={before + 1}" in ready["STATUS"], ready
            time.sleep(0.1)
        calls_before = load.calls
        time.sleep(0.5)
        assert load.calls > calls_before, "clients keep being served after the reloads"
    finally:
        load.stop()
    assert not load.failures, load.failures[:5]
    assert load.calls > 100
    print(f"reload to READY=1: p50 {sorted(latencies)[10] * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")


def test_an_invalid_edit_keeps_the_running_worker(
    containerd: Containerd, registry_factory: RegistryFactory, service_factory: Callable[..., Service]
) -> None:
    service = service_factory(base_config(containerd, registry_factory()))
    worker = service.child("image-cri-shim: worker gen=1")
    ready = service.reload_and_wait(lambda: service.edit(lambda c: c.update(timeout="soon")))
    assert "last reload: failed" in ready["STATUS"] and "timeout" in ready["STATUS"]
    assert service.child("image-cri-shim: worker gen=1") == worker
    assert service.generation() == 1
    with CriClient(service.socket) as client:
        assert client.version().runtime_name == "containerd"
    ready = service.reload_and_wait(lambda: service.edit(lambda c: c.update(timeout="20m")))
    assert "serving gen=2" in ready["STATUS"]


def test_a_slow_pull_survives_a_reload(
    containerd: Containerd,
    registry_factory: RegistryFactory,
    image_factory: ImageBuilder,
    service_factory: Callable[..., Service],
) -> None:
    registry = registry_factory()
    image_factory(registry, "library/slowpull", "1")
    proxy = TcpProxy(registry.port, delay=0.4)
    try:
        service = service_factory({"cri": containerd.address, "address": f"http://{proxy.host}"})
        result: list[str] = []
        errors: list[BaseException] = []

        def pull() -> None:
            try:
                with CriClient(service.socket) as client:
                    result.append(client.pull("slowpull:1", timeout=60))
            except BaseException as err:
                errors.append(err)

        thread = threading.Thread(target=pull)
        thread.start()
        time.sleep(0.8)
        assert thread.is_alive()
        service.reload_and_wait(lambda: service.process.signal(signal.SIGHUP))
        thread.join(60)
        assert not errors, errors
        assert result and result[0].startswith("sha256:")
    finally:
        proxy.stop()


# -- crash isolation ------------------------------------------------------------------------------------


def test_a_killed_worker_is_replaced_at_once(
    containerd: Containerd, registry_factory: RegistryFactory, service_factory: Callable[..., Service]
) -> None:
    service = service_factory(base_config(containerd, registry_factory()))
    syncer = service.child("image-cri-shim: syncer")
    os.kill(service.child("image-cri-shim: worker gen=1"), signal.SIGKILL)
    killed = time.monotonic()
    with CriClient(service.socket, timeout=1) as client:

        def answers() -> bool:
            try:
                return client.version(timeout=0.5).runtime_name == "containerd"
            except grpc.RpcError:
                return False

        wait_for(answers, 5, "calls to succeed after the worker was killed", interval=0.02)
    recovered = time.monotonic() - killed
    print(f"worker recovery: {recovered * 1000:.0f} ms")
    assert recovered < 2.0
    assert service.generation() == 2
    assert service.child("image-cri-shim: syncer") == syncer, "the syncer is not disturbed"


def test_a_killed_syncer_is_restarted_without_disturbing_the_worker(
    containerd: Containerd, registry_factory: RegistryFactory, service_factory: Callable[..., Service]
) -> None:
    service = service_factory(base_config(containerd, registry_factory()))
    worker = service.child("image-cri-shim: worker gen=1")
    load = Load(service.socket, threads=2)
    try:
        syncer = service.child("image-cri-shim: syncer")
        os.kill(syncer, signal.SIGKILL)
        wait_for(
            lambda: [
                p for p, t in service.children().items() if t == "image-cri-shim: syncer" and p != syncer
            ],
            10,
            "a new syncer",
        )
    finally:
        load.stop()
    assert not load.failures
    assert service.child("image-cri-shim: worker gen=1") == worker


def test_a_killed_master_leaves_no_child(
    containerd: Containerd, registry_factory: RegistryFactory, service_factory: Callable[..., Service]
) -> None:
    service = service_factory(base_config(containerd, registry_factory()))
    children = list(service.children())
    assert len(children) == 2
    service.process.kill()

    def gone() -> bool:
        return not any(alive(pid) for pid in children)

    wait_for(gone, 3, "the children to exit after the master was killed")


# -- the socket and the file ----------------------------------------------------------------------------


def test_a_stale_socket_is_replaced_and_a_live_one_is_not_taken(
    containerd: Containerd,
    registry_factory: RegistryFactory,
    service_factory: Callable[..., Service],
    short_dir: Path,
) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(short_dir / "shim.sock"))
    stale.close()  # the file stays, nobody listens: what a killed run leaves
    service = service_factory(base_config(containerd, registry_factory()))
    with CriClient(service.socket) as client:
        assert client.version().runtime_name == "containerd"

    second = subprocess.run(
        [sys.executable, "-m", "image_cri_shim", "-f", str(service.config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert second.returncode == 1
    assert second.stderr.splitlines() == [
        f"image-cri-shim: another instance is serving on {service.socket}; stop it first "
        "(a stale socket file from a stopped one is replaced)"
    ]
    with CriClient(service.socket) as client:
        assert client.version().runtime_name == "containerd", "the first instance keeps its socket"


def test_a_deleted_config_file_keeps_the_worker(
    containerd: Containerd, registry_factory: RegistryFactory, service_factory: Callable[..., Service]
) -> None:
    service = service_factory({**base_config(containerd, registry_factory()), "reloadInterval": "1s"})
    saved = service.config.read_text()
    service.config.unlink()
    wait_for(
        lambda: "config file is gone" in service.process.log_text(), 10, "the deleted file to be noticed"
    )
    time.sleep(2.5)  # a few poll periods: still said once
    assert service.process.log_text().count("config file is gone") == 1
    assert service.generation() == 1
    with CriClient(service.socket) as client:
        assert client.version().runtime_name == "containerd"
    ready = service.reload_and_wait(
        lambda: service.config.write_text(saved.replace("stateDir", "debug: true\nstateDir"))
    )
    assert "serving gen=2" in ready["STATUS"]

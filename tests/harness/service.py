"""The service as systemd runs it (`image-cri-shim -f CONFIG`), and what tests need around it.

A unix datagram socket stands in for systemd's NOTIFY_SOCKET and records every message; the
master's children are found by their titles under /proc; `usage` reads a process's RSS, open
descriptors and threads; `base_config` is the least a service needs, and `Load` keeps clients
calling through its socket. Used by the supervisor tests, the soak, the secrets test and the bench.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml

from .containerd import Containerd
from .cri import CriClient
from .kubeapi import KubeApi
from .processes import ManagedProcess, check_socket_path, wait_for

PROGRAM = (sys.executable, "-m", "image_cri_shim")
WORKER_TITLE = "image-cri-shim: worker gen="
SYNCER_TITLE = "image-cri-shim: syncer"


class NotifySocket:
    """A unix datagram socket standing in for systemd's, recording every message."""

    def __init__(self, path: Path) -> None:
        self.path = check_socket_path(path)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self.raw: list[str] = []  # every datagram as sent, for tests that search the text
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
                self.raw.append(data)
                self.messages.append((time.monotonic(), fields))

    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    def since(self, index: int) -> list[dict[str, str]]:
        with self._lock:
            return [m for _, m in self.messages[index:]]

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.raw)

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
        with contextlib.suppress(OSError):
            self.path.unlink()


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped by whoever adopted it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def where(pids: list[int]) -> str:
    """What each of `pids` still alive is doing (title, state, the kernel function it waits in,
    its threads' kernel stacks): a wait for processes to exit that times out says why."""
    lines = []
    for pid in pids:
        if not alive(pid):
            continue
        facts = []
        for name in ("cmdline", "stat", "wchan"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/{name}", "rb") as f:
                facts.append(f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:200])
        lines.append(f"pid {pid}: " + " | ".join(facts))
        with contextlib.suppress(OSError):
            for task in sorted(os.listdir(f"/proc/{pid}/task")):
                with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/stack") as f:
                    top = f.read().splitlines()[:3]
                    lines.append(f"  task {task}: " + " < ".join(t.split(" ", 1)[-1] for t in top))
    return "\n".join(lines) or "none alive"


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


@dataclass(frozen=True)
class Usage:
    rss_kib: int
    fds: int
    threads: int

    def __str__(self) -> str:
        return f"{self.fds} fds, {self.threads} threads"


def usage(pid: int) -> Usage | None:
    """RSS, open descriptors and threads of `pid`, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return Usage(int(fields["VmRSS"].split()[0]), fds, int(fields["Threads"]))
    except (OSError, KeyError, ValueError):
        return None


def wakeups(pid: int) -> int:
    """How often the threads of `pid` have gone to sleep and been woken (voluntary context
    switches, summed over its threads); 0 when it is gone."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for task in tasks:
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/task/{task}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


def cpu_ticks(pid: int) -> int:
    """User plus system CPU time of `pid`, in clock ticks (os.sysconf("SC_CLK_TCK") a second)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def cpu_by_thread(pid: int) -> dict[str, int]:
    """Nanoseconds each thread of `pid` has run, by thread id (/proc/PID/task/TID/schedstat)."""
    spent: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            path = f"/proc/{pid}/task/{task}/schedstat"
            with contextlib.suppress(OSError, ValueError, IndexError), open(path) as f:
                spent[task] = int(f.read().split()[0])
    return spent


class CpuClock:
    """The CPU time `pid` has used since this was made. To the nanosecond, from the scheduler's
    count of each thread, where the process's own count rounds to clock ticks (10 ms: a sixth of
    what a process at rest uses in a minute); a thread that ended took its count with it, so
    never less than the process's ticks say."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._threads = cpu_by_thread(pid)
        self._ticks = cpu_ticks(pid)

    def seconds(self) -> float:
        threads = sum(ns - self._threads.get(task, 0) for task, ns in cpu_by_thread(self.pid).items()) / 1e9
        # Each of the two readings of the ticks is short of the truth by less than a tick.
        ticks = (cpu_ticks(self.pid) - self._ticks - 1) / os.sysconf("SC_CLK_TCK")
        return max(threads, ticks)


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

    def workers(self) -> dict[int, int]:
        """generation -> pid of every worker (the newest serves or is starting; older ones drain)."""
        return {
            int(t.removeprefix(WORKER_TITLE)): pid
            for pid, t in self.children().items()
            if t.startswith(WORKER_TITLE)
        }

    def generation(self) -> int:
        """The newest worker generation (an old one may still be draining)."""
        workers = self.workers()
        assert workers, f"no worker: {self.children()}"
        return max(workers)

    def syncer(self) -> int | None:
        return next((p for p, t in self.children().items() if t == SYNCER_TITLE), None)

    def pids(self) -> dict[str, int]:
        """role -> pid of the master, the newest worker and the syncer (those running)."""
        found = {"master": self.process.pid}
        workers = self.workers()
        if workers:
            found["worker"] = workers[max(workers)]
        syncer = self.syncer()
        if syncer is not None:
            found["syncer"] = syncer
        return found

    def edit(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Replace the config by rename, as editors and the syncer do."""
        data = yaml.safe_load(self.config.read_text())
        change(data)
        temp = self.config.with_suffix(".new")
        temp.write_text(yaml.safe_dump(data))
        os.rename(temp, self.config)

    def reload_and_wait(self, trigger: Callable[[], object], timeout: float = 10.0) -> dict[str, str]:
        """Trigger a reload; wait for RELOADING=1 then READY=1; returns the READY message."""
        mark = self.notify.count()
        trigger()
        self.notify.wait("RELOADING", after=mark, timeout=timeout)
        reloading_at = mark + next(
            i for i, m in enumerate(self.notify.since(mark)) if m.get("RELOADING") == "1"
        )
        return self.notify.wait("READY", after=reloading_at + 1, timeout=timeout)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM to the master; children it leaves behind (a failed test) are killed by pid."""
        kids = self.children() if self.process.alive() else {}
        code = self.process.stop(timeout=timeout)
        for pid, name in kids.items():
            with contextlib.suppress(OSError):
                if alive(pid) and title(pid) == name:
                    os.kill(pid, signal.SIGKILL)
        self.notify.close()
        return code


_notify_numbers = itertools.count(1)


def start_service(
    directory: Path,
    config: Mapping[str, Any],
    *,
    api: KubeApi | None = None,
    env: Mapping[str, str] | None = None,
    program: Sequence[str] = PROGRAM,
    wait_ready: bool = True,
    timeout: float = 20.0,
) -> Service:
    """Write `directory/config.yaml` (shim socket and stateDir in `directory` unless `config` sets
    them) and start the master with a test NOTIFY_SOCKET. With `api` the syncer follows the
    stand-in API server; without, it finds no cluster (HOME and KUBECONFIG point into `directory`)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    settings = {"shim": str(directory / "shim.sock"), "stateDir": str(directory / "state"), **config}
    path.write_text(yaml.safe_dump(settings))
    notify = NotifySocket(directory / f"notify-{next(_notify_numbers)}.sock")
    kubeconfig = (
        api.write_kubeconfig(directory / "kubeconfig") if api is not None else directory / "no-kubeconfig"
    )
    environment = {
        **os.environ,
        "NOTIFY_SOCKET": str(notify.path),
        "HOME": str(directory),
        "KUBECONFIG": str(kubeconfig),
        **(env or {}),
    }
    process = ManagedProcess(
        [*program, "-f", str(path)], directory / "service.log", env=environment, name="image-cri-shim"
    )
    service = Service(directory, process, notify, path)
    if wait_ready:
        try:
            notify.wait("READY", timeout=timeout)
        except BaseException:
            print(process.describe(60))
            service.stop()
            raise
    return service


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

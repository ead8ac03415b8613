"""Child processes for tests: started with a log file, always stopped by pid, every wait bounded."""

from __future__ import annotations

import atexit
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
from cri_api.v1 import api_pb2 as v1
from cri_api.v1 import api_pb2_grpc as v1_grpc

T = TypeVar("T")

# Unix socket paths are limited to 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


class HarnessError(AssertionError):
    """A real part of the test setup did not come up; the message says why (never a silent skip)."""


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str,
    *,
    interval: float = 0.05,
    detail: Callable[[], str] | None = None,
) -> T:
    """Poll `predicate` until it returns something truthy, and return that.

    An exception from `predicate` counts as "not yet" and is quoted if time runs out, so a
    failure says what was awaited, for how long, the last error and (via `detail`) e.g. a log tail.
    A `HarnessError` from `predicate` (e.g. "the process died") ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except HarnessError:
            raise
        except Exception as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    message = f"timed out after {timeout:g}s waiting for {what}"
    if last_error is not None:
        message += f"\nlast error: {type(last_error).__name__}: {last_error}"
    if detail is not None:
        message += f"\n{detail()}"
    raise HarnessError(message)


def check_socket_path(path: Path) -> Path:
    """Refuse a unix socket path the kernel would truncate, instead of failing obscurely later."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise HarnessError(f"unix socket path too long ({len(str(path))} > {MAX_SOCKET_PATH}): {path}")
    return path


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess:
    """A child process whose stdout and stderr go to one log file; stopped by its pid only."""

    _running: set[ManagedProcess] = set()
    stop_signal = signal.SIGTERM

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        name: str | None = None,
    ) -> None:
        self.argv = [os.fspath(a) for a in argv]
        self.name = name or Path(self.argv[0]).name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            # Own session: a Ctrl-C aimed at pytest does not hit children mid-test; we stop them ourselves.
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        ManagedProcess._running.add(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_text(), lines)

    def describe(self, lines: int = 40) -> str:
        """Status and log tail, for failure messages."""
        state = "running" if self.alive() else f"exited with {self.returncode}"
        return f"{self.name} (pid {self.pid}) {state}; last lines of {self.log_path}:\n{self.log_tail(lines)}"

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def stop(self, timeout: float = 5.0) -> int:
        """`stop_signal`, wait up to `timeout`, then SIGKILL and wait again; returns the exit code."""
        try:
            if self.alive():
                os.kill(self.pid, self.stop_signal)
                try:
                    return self.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.kill(self.pid, signal.SIGKILL)
                    return self.popen.wait(timeout)
            return self.popen.wait(0)
        finally:
            ManagedProcess._running.discard(self)

    def kill(self) -> int:
        """SIGKILL at once (crash tests)."""
        self.signal(signal.SIGKILL)
        return self.stop(timeout=5.0)


@atexit.register
def _stop_leftovers() -> None:
    """Safety net: a test run that dies half-way must not leave daemons behind."""
    for proc in list(ManagedProcess._running):
        proc.stop(timeout=2.0)


def cri_version(socket_path: Path, timeout: float = 5.0) -> v1.VersionResponse:
    """CRI v1 `Version` of the runtime on `socket_path`, on a throw-away channel with a connection
    of its own: grpc shares connections between channels of one process that have the same target
    and options; one of those may be waiting out a reconnect backoff after a restart, and this
    call must see the runtime itself, not that wait."""
    if not socket_path.exists():
        raise FileNotFoundError(f"{socket_path} does not exist")
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(f"unix://{socket_path}", options=options) as channel:
        stub = v1_grpc.RuntimeServiceStub(channel)  # type: ignore[no-untyped-call]
        response: v1.VersionResponse = stub.Version(v1.VersionRequest(), timeout=timeout)
        return response


def cri_socket_answers(socket_path: Path, timeout: float = 0.5) -> bool:
    """True when a gRPC (HTTP/2) connection to the unix socket is established."""
    if not socket_path.exists():
        return False
    channel = grpc.insecure_channel(f"unix://{socket_path}")
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
        return True
    except grpc.FutureTimeoutError:
        return False
    finally:
        channel.close()


class ShimProcess(ManagedProcess):
    """The shim (`python -m image_cri_shim worker --file CONFIG`) serving on `socket_path`."""

    # A worker on SIGTERM first hands its clients over to a successor (some seconds); alone
    # in a test there is none, so tests stop it with SIGINT: drain in-flight calls, exit.
    stop_signal = signal.SIGINT

    def __init__(
        self, argv: Sequence[str], log_path: Path, socket_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(argv, log_path, env=env, name="image-cri-shim")
        self.socket_path = socket_path


_shim_numbers = itertools.count(1)


def shim_command(config_path: Path, subcommand: str = "worker") -> list[str]:
    """How the master starts its children, and how tests start a worker directly."""
    return [sys.executable, "-m", "image_cri_shim", subcommand, "--file", str(config_path)]


def start_shim(
    config_path: Path,
    socket_path: Path,
    *,
    log_path: Path | None = None,
    timeout: float = 15.0,
    env: Mapping[str, str] | None = None,
    argv: Sequence[str] | None = None,
) -> ShimProcess:
    """Start the shim worker and wait (bounded) until its socket accepts a CRI connection.

    `argv` replaces the default command (e.g. to start the master instead of a worker).
    """
    check_socket_path(socket_path)
    command = list(argv) if argv is not None else shim_command(config_path)
    if log_path is None:
        log_path = config_path.parent / f"shim-{next(_shim_numbers)}.log"
    proc = ShimProcess(command, log_path, socket_path, env=env)

    def ready() -> bool:
        if not proc.alive():
            raise HarnessError(f"shim exited before serving on {socket_path}\n{proc.describe()}")
        return cri_socket_answers(socket_path)

    try:
        wait_for(ready, timeout, f"the shim to serve on {socket_path}", detail=proc.describe)
    except BaseException:
        proc.stop()
        raise
    return proc


class ShimFactory:
    """Starts shims for one test; stops them all afterwards and prints their log tails (shown on failure)."""

    def __init__(self) -> None:
        self.shims: list[ShimProcess] = []

    def __call__(self, config_path: Path, socket_path: Path, **kwargs: Any) -> ShimProcess:
        shim = start_shim(config_path, socket_path, **kwargs)
        self.shims.append(shim)
        return shim

    def close(self) -> None:
        for shim in self.shims:
            shim.stop()
            print(shim.describe())

"""Start a child by executing the program again with an internal subcommand (docs/architecture.md).

From a virtual environment that is `python -m image_cri_shim <subcommand>`; from a single-file
build (`sys.frozen`) the binary itself. A fresh interpreter never inherits the master's threads
or state, so nothing here depends on fork-safety. Children take their title and bind their life
to the master themselves (`image_cri_shim.lifecycle`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from image_cri_shim.heartbeat import Heartbeat
from image_cri_shim.messages import Message, decode
from image_cri_shim.supervisor.notify import MASTER_ONLY_ENV

OnReport = Callable[[int, "Message | None"], None]


def program() -> list[str]:
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-m", "image_cri_shim"]


@dataclass
class Child:
    kind: str  # "worker" or "syncer"
    process: Process
    generation: int = 0
    started: float = field(default_factory=time.monotonic)
    serving: bool = False
    beat: Heartbeat | None = None  # a worker's proof that it serves (`heartbeat.py`)
    cri: str = ""  # the runtime socket a worker forwards to, as it reported

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def name(self) -> str:
        return f"worker gen={self.generation}" if self.kind == "worker" else self.kind

    def exited(self) -> int | None:
        return self.process.poll()

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def release(self) -> None:
        """After it exited: the heartbeat page is no longer read."""
        if self.beat is not None:
            self.beat.close()
            self.beat = None


class Process:
    """A started child, by pid: `subprocess` would cost the master half a MiB of imports for
    what is a spawn, a non-blocking wait and a kill here."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit code (negative: the signal), or None while it runs; reaps it once."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: it is gone, how is not known
                self.returncode = 255
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)


def _spawn(args: list[str], pass_fds: tuple[int, ...] = ()) -> Process:
    """Execute the program with `args`: stdin from /dev/null, stdout and stderr shared, and of
    the master's descriptors only `pass_fds` (every other one is close-on-exec)."""
    env = {k: v for k, v in os.environ.items() if k not in MASTER_ONLY_ENV}
    argv = [*program(), *args]
    stdin = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
    for fd in pass_fds:
        os.set_inheritable(fd, True)
    try:
        return Process(os.posix_spawn(argv[0], argv, env, file_actions=stdin))
    finally:
        for fd in pass_fds:  # the next child must not inherit them
            os.set_inheritable(fd, False)


def start_worker(
    config_path: str,
    generation: int,
    on_report: OnReport,
    prove_every: float,
) -> Child:
    """Start worker `generation`; its readiness reports arrive at `on_report(generation, message)`,
    and `on_report(generation, None)` once the pipe closes. It proves it serves at least every
    `prove_every` seconds on its heartbeat page."""
    beat = Heartbeat()
    read_fd, write_fd = os.pipe()
    try:
        process = _spawn(
            [
                "worker",
                "--file",
                config_path,
                "--generation",
                str(generation),
                "--ready-fd",
                str(write_fd),
                "--master-pid",
                str(os.getpid()),
                "--heartbeat-fd",
                str(beat.fd),
                "--heartbeat-every",
                f"{prove_every:g}",
            ],
            pass_fds=(write_fd, beat.fd),
        )
    except BaseException:
        os.close(read_fd)
        beat.close()
        raise
    finally:
        os.close(write_fd)
    threading.Thread(
        target=_read_reports,
        args=(read_fd, generation, on_report),
        name=f"ready-gen{generation}",
        daemon=True,
    ).start()
    return Child("worker", process, generation, beat=beat)


def start_syncer(config_path: str) -> Child:
    return Child("syncer", _spawn(["syncer", "--file", config_path, "--master-pid", str(os.getpid())]))


def _read_reports(fd: int, generation: int, on_report: OnReport) -> None:
    with os.fdopen(fd, "r") as pipe:
        for line in pipe:
            if (message := decode(line)) is not None:
                on_report(generation, message)
    on_report(generation, None)

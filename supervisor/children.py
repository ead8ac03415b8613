"""Start a child by executing the program again with an internal subcommand (docs/architecture.md).

From a virtual environment that is `python -m image_cri_shim <subcommand>`; from a single-file
build (`sys.frozen`) the binary itself. A fresh interpreter never inherits the master's threads
or state, so nothing here depends on fork-safety. Children take their title and bind their life
to the master themselves (`image_cri_shim.lifecycle`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from image_cri_shim.heartbeat import Heartbeat
from image_cri_shim.supervisor.notify import MASTER_ONLY_ENV


def program() -> list[str]:
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-m", "image_cri_shim"]


@dataclass
class Child:
    kind: str  # "worker" or "syncer"
    process: subprocess.Popen[bytes]
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
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def release(self) -> None:
        """After it exited: the heartbeat page is no longer read."""
        if self.beat is not None:
            self.beat.close()
            self.beat = None


def _spawn(args: list[str], pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in MASTER_ONLY_ENV}
    return subprocess.Popen([*program(), *args], pass_fds=pass_fds, env=env, stdin=subprocess.DEVNULL)


def start_worker(
    config_path: str,
    generation: int,
    on_report: Callable[[int, dict[str, Any] | None], None],
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


def _read_reports(fd: int, generation: int, on_report: Callable[[int, dict[str, Any] | None], None]) -> None:
    with os.fdopen(fd, "r") as pipe:
        for line in pipe:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict):
                on_report(generation, message)
    on_report(generation, None)

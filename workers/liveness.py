"""The worker's heartbeat: proof, from its serving machinery, that it can still answer calls.

The master judges a worker by its heartbeat page (`image_cri_shim/heartbeat.py`), not by its
pid, and replaces one whose proof is too old. The proof is written three ways:

1. Every call that reaches a handler stamps it (`Upstream` does, before it forwards): a call
   got through accept, HTTP/2, the completion queue and the thread pool. Under kubelet's steady
   polling this is the only way it is written, and it costs one store per call.
2. When no call has stamped it for `every` seconds, the prover thread calls the worker's own
   `Heartbeat` method over the shim socket, as any client would; its handler stamps the page.
   An idle worker pays one local call per period; a busy one pays nothing.
3. When that call is not answered because every call thread is waiting on something outside
   the worker — the runtime, or a registry — with a deadline, the worker is saturated, not
   wedged: killing it would fail every one of those calls and its successor would wait on the
   same runtime. The prover stamps the page then, and says so once in the log.

A stopped or deadlocked worker writes nothing; neither does one whose threads are stuck in
its own code. The heartbeat never asks the runtime: a runtime that is down or frozen leaves
the worker's proof intact (its calls fail with UNAVAILABLE or at their deadline), and the page
records the runtime's last answer and last failure so the master can say which it is.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import grpc

from image_cri_shim import logs
from image_cri_shim.heartbeat import SERVED, Heartbeat
from image_cri_shim.workers.calls import QUIET, unary_call

log = logs.get("worker")

SERVICE = "image_cri_shim.Worker"
METHOD = f"/{SERVICE}/Heartbeat"
T = TypeVar("T")


class Waits:
    """How many call threads wait on the runtime or a registry right now. `list.append` and
    `list.pop` are atomic under the GIL, so no lock is taken on the call path. `on_idle` runs
    when they fall to none (in the last one's thread)."""

    def __init__(self, on_idle: Callable[[], None] | None = None) -> None:
        self._entries: list[None] = []
        self._on_idle = on_idle

    def __enter__(self) -> None:
        self._entries.append(None)

    def __exit__(self, *_exc: object) -> None:
        self._entries.pop()
        if self._on_idle is not None and not self._entries:
            self._on_idle()

    def __len__(self) -> int:
        return len(self._entries)

    def around(self, wait: Callable[[T], object]) -> Callable[[T], object]:
        def waiting(argument: T) -> object:
            with self:
                return wait(argument)

        return waiting


def register(server: grpc.Server, beat: Heartbeat) -> None:
    """The `Heartbeat` method: stamps the page and answers this worker's pid."""
    pid = str(os.getpid()).encode()

    def heartbeat(_request: bytes, _context: grpc.ServicerContext) -> bytes:
        beat.stamp()
        return pid

    server.add_registered_method_handlers(
        SERVICE, {"Heartbeat": grpc.unary_unary_rpc_method_handler(heartbeat)}
    )


class Prover:
    """The thread that proves an idle worker still serves (see the module doc)."""

    def __init__(self, socket_path: str, beat: Heartbeat, waits: Waits, threads: int, every: float) -> None:
        self._beat = beat
        self._waits = waits
        self._threads = threads
        self._every = every
        self._stopped = threading.Event()
        self._channel = grpc.insecure_channel(f"unix://{socket_path}", options=QUIET)
        self._call = unary_call(self._channel, METHOD)
        self._saturated = False
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if not self._stopped.is_set():
            self._stopped.set()
            self._channel.close()

    def _run(self) -> None:
        while True:
            due = self._beat.read().served + self._every
            if self._stopped.wait(max(0.0, due - time.monotonic())):
                return
            if self._beat.read().served + self._every > time.monotonic():
                continue  # a call proved it meanwhile
            self.prove()

    def prove(self) -> None:
        """One probe; the handler stamps the page when it answers."""
        try:
            answer: bytes = self._call(b"", timeout=max(self._every, 1.0))
        except grpc.RpcError as err:
            if len(self._waits) >= self._threads:
                self._beat.stamp(SERVED)
                if not self._saturated:
                    log.warning("every call thread waits on the runtime or a registry", threads=self._threads)
                self._saturated = True
            else:
                log.debug("heartbeat probe not answered", code=err.code().name)
            return
        self._saturated = False
        if answer != str(os.getpid()).encode():
            log.debug("the shim socket is served by a newer worker", pid=answer.decode(errors="replace"))

"""The worker's heartbeat: proof, from its serving machinery, that it can still answer calls.

The master judges a worker by its heartbeat page (`image_cri_shim/heartbeat.py`), not by its
pid, and replaces one whose proof is too old. Everything the worker serves runs on one event
loop, so a loop that still turns is a worker that still serves; the proof is written two ways:

1. Every call that reaches a handler stamps it (`Upstream` does, before it forwards): the call
   got through accept, HTTP/2 and grpc's completion queue to the loop. Under kubelet's polling
   this is most of what writes it, at one store per call.
2. When no call has stamped it for `every` seconds, a timer on the loop does. A loop that is
   stopped (SIGSTOP), blocked inside a handler or starved of the GIL runs no timer: its proof
   ages, and the master replaces the worker. The timer costs one wake-up per period at rest,
   nothing under calls, and no call over the socket.

Calls waiting on the runtime or a registry do not hold the loop (each waits with its deadline),
so a worker whose every call waits on a frozen runtime keeps its proof and is kept: killing it
would fail every one of those calls, and its successor would wait on the same runtime. The
heartbeat never asks the runtime: the page records the runtime's last answer and last failure
so the master can say whether the runtime or the worker is at fault.
"""

from __future__ import annotations

import asyncio
import time

from image_cri_shim.heartbeat import SERVED, Heartbeat


class Pulse:
    """The timer that proves a worker's loop turns between calls (see the module doc)."""

    def __init__(self, beat: Heartbeat, every: float) -> None:
        self._beat = beat
        self._every = every
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._beat.stamp(SERVED)
        self._schedule(time.monotonic() + self._every)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self, when: float) -> None:
        loop = asyncio.get_running_loop()
        # The loop's clock is time.monotonic(), the heartbeat's too.
        self._timer = loop.call_at(when, self._tick)

    def _tick(self) -> None:
        now = time.monotonic()
        due = self._beat.read().served + self._every
        if due <= now:  # no call proved it meanwhile
            self._beat.stamp(SERVED, now)
            due = now + self._every
        self._schedule(due)

"""What a process's main thread sleeps on: the signals it listens for and what other threads hand it.

A Python signal handler runs only in the main thread, and only once that thread runs bytecode
again. A thread asleep in a lock's wait (a queue's `get`) is therefore not woken by a signal
the kernel gave another thread (which it does when the main thread already has one pending),
nor by one that lands after its last check and before it sleeps: the event would wait for the
next timeout. Here the interpreter's own C-level handler writes each signal's number to a pipe
(`signal.set_wakeup_fd`), from whichever thread took it, and the wait polls that pipe; other
threads queue an item and write a zero byte. Every event so wakes the wait at once, and the
signal's meaning is read from the pipe itself, not from a Python handler's side effects.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import signal
from collections import deque
from collections.abc import Mapping
from typing import Generic, TypeVar

T = TypeVar("T")

_ITEM = 0  # the byte of "an item was put"; no signal has the number 0
_LONGEST = 2**31 - 1  # poll's longest timeout, in ms (24 days): a longer wait wakes early, harmlessly


class Inbox(Generic[T]):
    """Made and waited on by the main thread; `put` may be called from any thread.
    `signals` maps each signal listened for to the item it stands for."""

    def __init__(self, signals: Mapping[int, T]) -> None:
        self._signals = dict(signals)
        self._items: deque[T] = deque()
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poll = select.poll()
        self._poll.register(self._read, select.POLLIN)
        self._saved = {signum: signal.signal(signum, _noted) for signum in self._signals}
        self._saved_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)

    def put(self, item: T) -> None:
        self._items.append(item)  # before the byte: whoever reads the byte finds the item
        with contextlib.suppress(BlockingIOError):  # full of wake-ups already
            os.write(self._write, bytes((_ITEM,)))

    def get(self, timeout: float | None) -> list[T]:
        """What arrived, in order of kind (signals first); waits up to `timeout` seconds (None:
        for ever) when nothing has; an empty list after the timeout."""
        if not self._items:
            self._poll.poll(None if timeout is None else min(max(0, math.ceil(timeout * 1000)), _LONGEST))
        got: list[T] = []
        with contextlib.suppress(BlockingIOError):  # drained
            while chunk := os.read(self._read, 512):
                got.extend(self._signals[n] for n in chunk if n in self._signals)
        while self._items:
            got.append(self._items.popleft())
        return got

    def close(self) -> None:
        """Put back the handlers and wake-up descriptor found (a test's process lives on)."""
        signal.set_wakeup_fd(self._saved_fd)
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        os.close(self._read)
        os.close(self._write)


def _noted(_signum: int, _frame: object) -> None:
    """Installed so that the interpreter's C handler runs and writes the number; nothing to do."""

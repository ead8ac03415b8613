"""The life of every process of the service: its title, dying with the master, and stopping.

Until a process installs its own way of hearing SIGTERM and SIGINT (the master's and the
syncer's `Inbox`, the worker's loop), a stop request ends it at once: it holds nothing to
finish yet. Afterwards nothing is raised out of a handler, so a stop never interrupts an
import, a write or a cleanup halfway.

PR_SET_PDEATHSIG makes the kernel send a signal when the parent thread that started us exits,
including a SIGKILLed master. It is set in the child after exec (a preexec hook would run
in a threaded master), so the child then checks that its parent is still the master it was
started by: if the master died before the call, we are already orphaned and leave at once.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

from setproctitle import setproctitle

PR_SET_PDEATHSIG = 1


def become_child(title: str, master_pid: int | None, death_signal: int = signal.SIGTERM) -> None:
    setproctitle(f"image-cri-shim: {title}")
    # Until the process installs its own handlers, a stop request ends it at once.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_at_once)
    if master_pid is None:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, death_signal, 0, 0, 0) != 0:
        print(f"image-cri-shim: prctl(PR_SET_PDEATHSIG): {os.strerror(ctypes.get_errno())}", file=sys.stderr)
    if os.getppid() != master_pid:
        raise SystemExit(0)


# mallopt(3) parameters of glibc.
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# Blocks from this size up are mapped on their own and unmapped when freed. glibc raises its
# threshold each time such a block is freed (up to 32 MiB), after which large messages are
# carved from the heaps and kept; fixing it keeps them going back.
MMAP_THRESHOLD = 256 << 10
# glibc gives each thread that allocates concurrently an arena of its own (up to 8 per core),
# each keeping what it once held; a few are enough for threads that mostly wait.
ARENAS = 2


def tune_heap() -> None:
    """Make glibc give large blocks back at once and keep few arenas (a worker's call threads
    allocate messages concurrently; after a burst, memory returns near its resting size).
    Before threads start. Not glibc: a no-op."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        mallopt(_M_ARENA_MAX, ARENAS)


def trim_heap() -> None:
    """Give the heap pages that start-up (imports, YAML parsing) freed back to the kernel: about
    1 MiB per process that glibc would otherwise keep for later allocations. Not glibc: a no-op."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


class HeapTrimmer:
    """Gives the heap back after calls moved much data (`moved`): when the calls in flight next
    fall to none (`idle`), `trim_heap` runs `delay` later, once grpc has freed the buffers the
    last of them held. Kubelet's steady polling moves little, so it trims rarely."""

    def __init__(self, threshold: int = 16 << 20, delay: float = 1.0) -> None:
        self._threshold = threshold
        self._delay = delay
        self._moved = 0
        self._lock = threading.Lock()

    def moved(self, size: int) -> None:
        self._moved += size  # a count lost to a race costs nothing but an early or late trim

    def idle(self) -> None:
        if self._moved < self._threshold or not self._lock.acquire(blocking=False):
            return
        self._moved = 0
        timer = threading.Timer(self._delay, self._trim)
        timer.daemon = True
        timer.start()

    def _trim(self) -> None:
        try:
            trim_heap()
        finally:
            self._lock.release()


def _exit_at_once(_signum: int, _frame: object) -> None:
    """A stop before the process's own handlers: it holds nothing to finish yet, so leave now.
    Raising SystemExit here instead would unwind from whatever line was running, an import
    halfway through taking a lock among them, and the exit could then wait on that lock forever
    (seen: a syncer stopped amid its imports, left orphaned and asleep)."""
    os._exit(0)

"""What every child process does first: take its title and die with the master.

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

from setproctitle import setproctitle

PR_SET_PDEATHSIG = 1


def become_child(title: str, master_pid: int | None, death_signal: int = signal.SIGTERM) -> None:
    setproctitle(f"image-cri-shim: {title}")
    # Until the process installs its own handlers, a stop request is a clean exit.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_cleanly)
    if master_pid is None:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, death_signal, 0, 0, 0) != 0:
        print(f"image-cri-shim: prctl(PR_SET_PDEATHSIG): {os.strerror(ctypes.get_errno())}", file=sys.stderr)
    if os.getppid() != master_pid:
        raise SystemExit(0)


def trim_heap() -> None:
    """Give the heap pages that start-up (imports, YAML parsing) freed back to the kernel: about
    1 MiB per process that glibc would otherwise keep for later allocations. Not glibc: a no-op."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


def _exit_cleanly(_signum: int, _frame: object) -> None:
    raise SystemExit(0)

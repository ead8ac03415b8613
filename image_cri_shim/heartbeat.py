"""A worker's proof that it can still serve, shared with the master through one memory page.

The master makes the page (a memfd) before it starts a worker and passes it down; both map it.
The worker writes CLOCK_MONOTONIC times into it (one store each, no system call, no lock), the
master reads them when one of its timers is due. Nothing is sent, so a busy worker costs the
master nothing and an idle one wakes it only at its own deadlines.

- `served`: a call reached a handler of the worker's gRPC server (every forwarded call stamps
  it), or, between calls, a timer of the worker's event loop ran: the loop that serves every
  call still turns (`workers/serve/liveness.py`).
- `runtime_ok` / `runtime_failed`: the last time the runtime answered a call (any status it
  sent itself) and the last time it could not be reached or did not answer in time.
"""

from __future__ import annotations

import mmap
import os
import time

from image_cri_shim.messages import Reading

SERVED, RUNTIME_OK, RUNTIME_FAILED = range(3)
_SIZE = 8 * 3


def anonymous_file() -> int:
    """A file with no name, only an fd: a memfd where glibc and the kernel have them (2.27,
    Linux 3.17), else a file in /dev/shm unlinked at once (CentOS/RHEL 7, which the offline
    bundle's glibc 2.17 build serves). Either way memory, never a disk, and nothing to clean up."""
    create = getattr(os, "memfd_create", None)
    if create is not None:
        try:
            fd: int = create("image-cri-shim-heartbeat", os.MFD_CLOEXEC)
            return fd
        except OSError:  # ENOSYS: a kernel older than its glibc
            pass
    import tempfile  # only here: with `random` and `shutil` it is half a MiB of the master

    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryFile(dir=shm, prefix="image-cri-shim-heartbeat-") as file:
        return os.dup(file.fileno())


class Heartbeat:
    """The shared page; `fd` is passed to the worker, which opens it with `Heartbeat(fd)`."""

    def __init__(self, fd: int | None = None) -> None:
        if fd is None:
            fd = anonymous_file()
            os.ftruncate(fd, _SIZE)
        self.fd = fd
        self._map = mmap.mmap(fd, _SIZE)
        self._slots = memoryview(self._map).cast("d")
        if self._slots[SERVED] == 0.0:
            self._slots[SERVED] = time.monotonic()  # a new worker starts with a fresh proof

    def stamp(self, slot: int = SERVED, now: float | None = None) -> None:
        self._slots[slot] = time.monotonic() if now is None else now

    def read(self) -> Reading:
        return Reading(self._slots[SERVED], self._slots[RUNTIME_OK], self._slots[RUNTIME_FAILED])

    def close(self) -> None:
        self._slots.release()
        self._map.close()
        os.close(self.fd)

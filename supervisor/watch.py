"""Notice when the config file's content changes.

The directory is watched, not the file: the syncer and most editors replace the file by
renaming a new one over it, which a watch on the old inode would miss. The watch is inotify,
read by one thread that sleeps in `read` until the kernel has an event: only writes, renames,
creations and deletions are asked for, so the master's own reads of the file (which would
report opens and closes) never wake it. Whether anything changed is decided by the content,
so a touch or a rewrite with the same bytes is no reload. Without inotify (an exhausted
`max_user_watches`, an unusual file system) the `reloadInterval` poll still notices changes.
"""

from __future__ import annotations

import ctypes
import os
import struct
import threading
from collections.abc import Callable

# <sys/inotify.h>
IN_MODIFY = 0x002
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_IGNORED = 0x8000
IN_CLOEXEC = 0o2000000
CHANGES = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


def names(buffer: bytes) -> list[tuple[int, str]]:
    """(mask, file name) of each inotify event in `buffer` (pure)."""
    found = []
    offset = 0
    while offset + _EVENT.size <= len(buffer):
        _wd, mask, _cookie, length = _EVENT.unpack_from(buffer, offset)
        offset += _EVENT.size
        name = buffer[offset : offset + length].split(b"\0", 1)[0]
        offset += length
        found.append((mask, os.fsdecode(name)))
    return found


class DirectoryWatch:
    """inotify on the config file's directory; calls `wake` (from its thread) when that file
    is written, replaced, created or removed. `start` returns False when inotify is unusable."""

    def __init__(self, path: str, wake: Callable[[], None]) -> None:
        path = os.path.abspath(path)
        self._directory = os.path.dirname(path)
        self._name = os.path.basename(path)
        self._wake = wake
        self._fd = -1
        self._wd = -1
        self._stopped = False
        self._libc = ctypes.CDLL(None, use_errno=True)

    def start(self) -> bool:
        fd = self._libc.inotify_init1(IN_CLOEXEC)
        if fd < 0:
            return False
        wd = self._libc.inotify_add_watch(fd, os.fsencode(self._directory), CHANGES)
        if wd < 0:
            os.close(fd)
            return False
        self._fd, self._wd = fd, wd
        threading.Thread(target=self._read, name="config-watch", daemon=True).start()
        return True

    def _read(self) -> None:
        while not self._stopped:
            try:
                buffer = os.read(self._fd, 4096)
            except OSError:
                return
            events = names(buffer)
            if any(mask & IN_IGNORED for mask, _ in events):
                return  # the directory went away, or stop() removed the watch
            if any(name == self._name for _, name in events):
                self._wake()

    def stop(self) -> None:
        """Removing the watch queues IN_IGNORED, which ends the blocked read."""
        self._stopped = True
        if self._wd >= 0:
            self._libc.inotify_rm_watch(self._fd, self._wd)
            self._wd = -1

"""Notice when the config file's content changes.

The directory is watched, not the file: the syncer and most editors replace the file by
renaming a new one over it, which a watch on the old inode would miss. The watch is watchdog's
inotify observer with an event filter of writes, moves, creations and deletions only: watchdog
asks the kernel for just those, so the master's own reads of the file (opens and closes without
a write) never wake it, and its threads sleep in `poll` or on a queue with a long timeout until
the kernel has an event. Whether anything changed is decided by the content, so a touch or a
rewrite with the same bytes is no reload. Without inotify (an exhausted `max_user_watches`, an
unusual file system) the `reloadInterval` poll still notices changes.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

# What a write, a rename over the file, a new file or a removal reports; nothing a read reports.
CHANGES: list[type[FileSystemEvent]] = [
    FileModifiedEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
]
IDLE_TIMEOUT = 3600.0  # how long watchdog's queue waits between checks for a stop; a stop wakes it sooner


def concerns(event: FileSystemEvent, name: str) -> bool:
    """Whether `event` in the watched directory touches the file called `name` (pure)."""
    paths = (event.src_path, event.dest_path)
    return any(path and os.path.basename(os.fsdecode(path)) == name for path in paths)


class _Handler(FileSystemEventHandler):
    def __init__(self, name: str, wake: Callable[[], None]) -> None:
        self._name = name
        self._wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        if not event.is_directory and concerns(event, self._name):
            self._wake()


class DirectoryWatch:
    """A watch on the config file's directory; calls `wake` (from watchdog's thread) when that
    file is written, replaced, created or removed. `start` returns False when inotify is unusable."""

    def __init__(self, path: str, wake: Callable[[], None]) -> None:
        path = os.path.abspath(path)
        self._directory = os.path.dirname(path)
        self._handler = _Handler(os.path.basename(path), wake)
        self._observer: BaseObserver | None = None

    def start(self) -> bool:
        observer = Observer(timeout=IDLE_TIMEOUT)
        observer.daemon = True
        try:
            observer.schedule(self._handler, self._directory, recursive=False, event_filter=CHANGES)
            observer.start()
        except OSError:
            return False
        self._observer = observer
        return True

    def stop(self) -> None:
        """Stops watchdog's threads; the stop wakes them at once, whatever the timeout."""
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

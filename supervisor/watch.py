"""Notice when the config file's content changes.

The directory is watched, not the file: the syncer and most editors replace the file by
renaming a new one over it, which a watch on the old inode would miss. The watch is watchdog's
inotify observer with an event filter of writes, moves, creations and deletions only: watchdog
asks the kernel for just those, so the master's own reads of the file (opens and closes without
a write) never wake it, and its threads sleep in `poll` or on a queue with a long timeout until
the kernel has an event. Whether anything changed is decided by the content, so a touch or a
rewrite with the same bytes is no reload. Without inotify (an exhausted `max_user_watches`, an
unusual file system) the `reloadInterval` poll still notices changes.

watchdog's inotify module imports `ctypes.util` and no longer uses it; loading it brings
subprocess, shutil, tempfile, bz2 and lzma with it, about 1 MiB of the master's 13. The watch
puts a stand-in in its place before watchdog's observer is imported: the module is loaded,
whole and unchanged, only if something reads from it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

if TYPE_CHECKING:  # importing watchdog.observers imports its inotify module
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
        lazy("ctypes.util")
        from watchdog.observers import Observer

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


def lazy(name: str) -> None:
    """Put a stand-in for the module `name`, unless it is imported already, that loads it on the
    first read of one of its attributes: importing it costs nothing until it is used.
    (`importlib.util.LazyLoader` does not serve here: an import statement's own look at the
    module's `__spec__` loads it.)"""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None:
        return
    stand_in = _OnFirstUse(name)
    stand_in.__spec__ = spec
    sys.modules[name] = stand_in
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, stand_in)


class _OnFirstUse(types.ModuleType):
    def __getattr__(self, attribute: str) -> Any:
        """Only for what the stand-in does not hold: load the module, then read from it."""
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        module = importlib.import_module(self.__name__)  # in sys.modules and its package now
        self.__dict__.update(module.__dict__)
        return getattr(module, attribute)

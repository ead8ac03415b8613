"""Notice when the config file's content changes.

The directory is watched, not the file: the syncer and most editors replace the file by
renaming a new one over it, which a watch on the old inode would miss. Events only wake the
master; whether anything changed is decided by the content hash, so a touch or a rewrite with
the same bytes is no reload.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer


def content_hash(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


class ConfigFile:
    """The config file's last loaded content, by hash."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.loaded = content_hash(self.path)

    def changed(self) -> bool:
        current = content_hash(self.path)
        return current is not None and current != self.loaded

    def remember(self, digest: str | None) -> None:
        self.loaded = digest


class _Handler(FileSystemEventHandler):
    def __init__(self, path: str, wake: Callable[[], None]) -> None:
        self._path = path
        self._wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = {event.src_path, getattr(event, "dest_path", "")}
        if self._path in {os.fsdecode(p) for p in paths if p}:
            self._wake()


class DirectoryWatch:
    """A watchdog observer on the config file's directory that calls `wake` for that file."""

    def __init__(self, path: str, wake: Callable[[], None]) -> None:
        self._observer = Observer()
        self._observer.daemon = True
        path = os.path.abspath(path)
        self._observer.schedule(_Handler(path, wake), os.path.dirname(path), recursive=False)

    def start(self) -> None:
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=2)

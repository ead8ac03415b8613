"""Write a file so that a reader sees the old content or the new, never a part of either."""

from __future__ import annotations

import contextlib
import os
import tempfile


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    """Temp file in the same directory, fsync, chmod, rename over `path`, fsync the directory.

    Raises OSError (disk full, permission denied…) with `path` untouched.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temp_files(path: str) -> int:
    """Remove temp files a killed writer left next to `path` (the naming of `write_atomic`).

    Only for a path with a single writer: at that writer's start any such file is stale.
    """
    directory, name = os.path.split(os.path.abspath(path))
    removed = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            if entry.name.startswith(f".{name}.") and entry.name.endswith(".tmp") and entry.is_file():
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed += 1
    return removed

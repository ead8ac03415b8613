"""Reading a small file that may not be what its name promises: a FIFO, a device, a huge file,
or (where asked) a symbolic link someone planted. Every process's config read and the worker's
state files go through here, so none of them can be stalled or led elsewhere."""

from __future__ import annotations

import os
import stat


class NotRegular(OSError):
    """The path is a FIFO, a device, a directory or a socket: nothing was read."""


class TooLarge(OSError):
    """The file holds more than the caller's bound: nothing of it is used."""


def read_small(path: str, limit: int, *, follow: bool = True) -> bytes:
    """The bytes of the regular file at `path`, at most `limit` of them. `follow=False`: a
    symbolic link at `path` is refused (OSError ELOOP) instead of followed. O_NONBLOCK keeps a
    FIFO from blocking the open. Raises OSError (FileNotFoundError, PermissionError, NotRegular,
    TooLarge…)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise NotRegular("not a regular file")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"larger than {limit} bytes")
    return data

"""What tests check on a running worker: a call's status, the tags a client sees, and that the
same process still serves its socket with its descriptors and threads back where they were."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from .cri import CriClient
from .node import Shim
from .processes import wait_for
from .service import Usage
from .service import usage as read_usage

# No registry is reached in the scenarios that use these; the config needs one all the same.
NO_REGISTRY = [{"address": "http://127.0.0.1:9"}]
ABSENT = "docker.io/library/absent:1"


def failure(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """The status code and message of a call that must fail."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details() or ""


def outcome(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """(code, message) of a call, OK included."""
    try:
        call()
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


def tags(client: CriClient, image: str) -> list[str]:
    status = client.status(image)
    return list(status.repo_tags) if status is not None else []


def usage(pid: int) -> Usage:
    """The worker's open descriptors and threads; it must still be running."""
    found = read_usage(pid)
    assert found is not None, f"pid {pid} is gone"
    return found


def settles(pid: int, before: Usage, *, fds: int = 2, threads: int = 2, timeout: float = 15.0) -> Usage:
    """Wait until the worker holds at most `fds`/`threads` more than `before`; returns its usage."""

    def back() -> Usage | None:
        now = usage(pid)
        return now if now.fds <= before.fds + fds and now.threads <= before.threads + threads else None

    what = f"the worker to hold no more than {before} (+{fds} fds, +{threads} threads)"
    return wait_for(back, timeout, what, detail=lambda: f"now: {usage(pid)}")


def serving_pid(path: Path) -> int:
    """The pid of the process listening on the unix socket `path` (SO_PEERCRED)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        pid, _uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return int(pid)


def still_serving(shim: Shim, client: CriClient) -> None:
    """The same worker serves the socket and answers ImageStatus."""
    assert shim.process.alive(), shim.process.describe()
    assert serving_pid(shim.socket) == shim.process.pid, "another process serves the shim socket"
    assert client.status(ABSENT) is None
    assert "Traceback" not in shim.log(), shim.log()


def warm(client: CriClient) -> None:
    """The calls that create the worker's lazy state (multicallables, the decoded path)."""
    for _ in range(3):
        client.status(ABSENT)
        client.version()

"""The master's control socket, and the `--reload` command that talks to it.

`kill -HUP` cannot tell its sender whether the reload worked, so `systemctl reload` would
succeed on a config the master then refuses. `image-cri-shim --reload` (the unit's
`ExecReload=`) checks the file itself first, then asks the master over this socket and waits
for the answer: the new worker's generation once it serves, or the reason it was refused.

One JSON line each way over a unix socket next to the shim socket, mode 0600 (root only).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

from image_cri_shim.startup import owner_only, remove_socket

# A reload can queue behind one in progress: two worker starts, each bounded by the master.
REPLY_TIMEOUT = 80.0  # below the unit's TimeoutStartSec=, which also bounds ExecReload=
_MAX_REQUEST = 1024


def control_path(shim: str) -> str:
    return os.path.join(os.path.dirname(shim), f".{os.path.basename(shim)}.control")


class Request:
    """One command from a client; the master answers it exactly once."""

    def __init__(self, conn: socket.socket, command: str) -> None:
        self.conn = conn
        self.command = command

    def answer(self, **reply: Any) -> None:
        with contextlib.suppress(OSError):
            self.conn.sendall(json.dumps(reply).encode() + b"\n")
        self.conn.close()


class ControlServer:
    """Accepts commands in a thread and hands each to `on_request` (the master's event queue)."""

    def __init__(self, path: str, on_request: Callable[[Request], None]) -> None:
        self.path = path
        self._on_request = on_request
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        remove_socket(path)  # left by a killed master; start-up made sure none is alive
        try:
            with owner_only():
                self._sock.bind(path)
            self._sock.listen(8)
        except OSError:
            self._sock.close()
            raise
        self._thread = threading.Thread(target=self._accept, name="control", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            conn.settimeout(5.0)
            try:
                line = conn.makefile("rb").readline(_MAX_REQUEST)
                command = json.loads(line).get("command", "")
            except (OSError, ValueError, AttributeError):
                conn.close()
                continue
            self._on_request(Request(conn, str(command)))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def ask(path: str, command: str, timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
    """Send one command to the master at `path` and wait for its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(path)
        conn.sendall(json.dumps({"command": command}).encode() + b"\n")
        reply = json.loads(conn.makefile("rb").readline(1 << 16) or b"{}")
    if not isinstance(reply, dict):
        raise ValueError("not a JSON object")
    return reply


def reload(config_path: str) -> int:
    """`--reload`: validate, ask the running master to reload, report how it ended."""
    from image_cri_shim.config import ConfigError, load

    try:
        config = load(config_path)
    except ConfigError as err:
        print(f"image-cri-shim: not reloading: {err}", file=sys.stderr)
        return 1
    path = control_path(config.shim)
    try:
        reply = ask(path, "reload")
    except FileNotFoundError:
        print(
            f"image-cri-shim: no running service for shim socket {config.shim} ({path} is missing)",
            file=sys.stderr,
        )
        return 1
    except TimeoutError:
        print(f"image-cri-shim: the service did not answer within {REPLY_TIMEOUT:g}s", file=sys.stderr)
        return 1
    except (OSError, ValueError) as err:
        print(f"image-cri-shim: cannot reach the service at {path}: {err}", file=sys.stderr)
        return 1
    if reply.get("ok"):
        print(f"reloaded: worker gen={reply.get('generation')} serving (took {reply.get('took_ms')} ms)")
        return 0
    print(f"image-cri-shim: reload failed: {reply.get('reason', 'no reason given')}", file=sys.stderr)
    return 1

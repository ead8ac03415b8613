"""The HTTP side of `metricsAddress`: `/metrics` and `/healthz` on TCP or a unix socket, in one
thread of the master. Imported only when an endpoint is configured: the metrics library is a few
MiB the master does not carry otherwise.

Any local user (any host, where the address is not loopback) can connect here, so the endpoint
must not let a client spend the master's threads or time: one thread serves every connection
through a selector, at most MAX_CONNECTIONS at once, each closed DEADLINE after it was accepted
whatever it has sent. A scrape's request arrives with its connection and is answered in the same
round; a connection accepted while all are taken makes the oldest one still without a complete
request give way, so clients that never end their headers cost one thread in all and do not keep
scrapes out (docs/metrics.md).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from image_cri_shim.startup import owner_only, remove_socket
from image_cri_shim.supervisor.samples import FILES

Health = Callable[[], tuple[bool, str]]
Render = Callable[[], tuple[bytes, str]]

MAX_CONNECTIONS = 8
DEADLINE = 10.0  # seconds from accept to the last byte of the answer (Prometheus' default timeout)
BACKLOG = 64
RENDER_TRIES = 3
MAX_HEAD = 8192  # a GET's request line and headers
TEXT = "text/plain; charset=utf-8"


def request_path(head: bytes) -> tuple[str, str] | None:
    """(method, path without query) of a request head, or None if it is no HTTP request."""
    line = head.split(b"\n", 1)[0].strip()
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return None
    return parts[0].decode("latin-1"), parts[1].decode("latin-1").split("?", 1)[0]


def head_complete(data: bytes) -> bool:
    return b"\r\n\r\n" in data or b"\n\n" in data


def response(code: int, body: bytes, content_type: str = TEXT) -> bytes:
    """One HTTP/1.1 answer; the connection closes after it."""
    reasons = {200: "OK", 400: "Bad Request", 404: "Not Found", 431: "Request Header Fields Too Large",
               501: "Not Implemented", 503: "Service Unavailable"}  # fmt: skip
    head = (
        f"HTTP/1.1 {code} {reasons.get(code, 'Error')}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def answer(head: bytes, render: Render, health: Health) -> bytes:
    """The answer to a complete request head (or to one past MAX_HEAD)."""
    if len(head) > MAX_HEAD and not head_complete(head[:MAX_HEAD]):
        return response(431, b"request headers too large\n")
    request = request_path(head)
    if request is None:
        return response(400, b"bad request\n")
    method, path = request
    if method != "GET":
        return response(501, b"only GET\n")
    if path == "/metrics":
        try:
            body, content_type = render()
        except Exception as err:  # one scrape fails, never the endpoint
            return response(503, f"samples unreadable, try again: {type(err).__name__}\n".encode())
        return response(200, body, content_type)
    if path == "/healthz":
        ok, text = health()
        return response(200 if ok else 503, f"{text}\n".encode())
    return response(404, b"not found: try /metrics or /healthz\n")


@dataclass
class _Connection:
    sock: socket.socket
    deadline: float
    received: bytes = b""
    outgoing: bytes | None = None  # the answer, once the head is complete
    sent: int = field(default=0)


class EndpointError(Exception):
    """The endpoint cannot listen (address in use, permission denied): one line."""


class Endpoint:
    """The HTTP endpoint, in one thread of the master."""

    def __init__(self, address: str, directory: str, health: Health) -> None:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.exposition import CONTENT_TYPE_LATEST
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        self.address = address
        self._listener = _listen(address)
        self._health = health

        def render() -> tuple[bytes, str]:
            for attempt in range(RENDER_TRIES):
                try:
                    with FILES:
                        return generate_latest(registry), CONTENT_TYPE_LATEST
                except (struct.error, ValueError, OSError):
                    # A process that is starting has created its samples file and not yet
                    # sized it (it is empty for a moment), or one that exited is being folded.
                    if attempt == RENDER_TRIES - 1:
                        raise
                    time.sleep(0.05)
            raise AssertionError("unreachable")

        self._render: Render = render
        self._closing = False
        self._selector = selectors.DefaultSelector()
        self._connections: dict[socket.socket, _Connection] = {}
        self._thread = threading.Thread(target=self._serve, name="metrics", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        """Serve every connection from this thread. With no connection open, the select has no
        timeout: an idle endpoint never wakes the master."""
        selector, connections = self._selector, self._connections
        selector.register(self._listener, selectors.EVENT_READ)
        try:
            while not self._closing:
                now = time.monotonic()
                wait = min((c.deadline for c in connections.values()), default=None)
                for key, _ in selector.select(None if wait is None else max(0.0, wait - now)):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif (conn := connections.get(key.fileobj)) is not None:  # type: ignore[call-overload]
                        self._step(conn)  # not dropped earlier in this round
                now = time.monotonic()
                for conn in [c for c in connections.values() if c.deadline <= now]:
                    self._drop(conn)
        finally:
            for conn in list(connections.values()):
                self._drop(conn)
            selector.close()

    def _accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except BlockingIOError:
            return
        except OSError:
            if self._closing:
                return
            time.sleep(0.05)  # out of descriptors: let the clients that hold them time out
            return
        if len(self._connections) >= MAX_CONNECTIONS:
            self._drop(min(self._connections.values(), key=lambda c: (c.outgoing is not None, c.deadline)))
        sock.setblocking(False)
        self._connections[sock] = _Connection(sock, time.monotonic() + DEADLINE)
        self._selector.register(sock, selectors.EVENT_READ)

    def _step(self, conn: _Connection) -> None:
        try:
            if conn.outgoing is None:
                chunk = conn.sock.recv(MAX_HEAD)
                if not chunk:
                    self._drop(conn)
                    return
                conn.received += chunk
                if not head_complete(conn.received) and len(conn.received) <= MAX_HEAD:
                    return
                conn.outgoing = answer(conn.received, self._render, self._health)
                conn.received = b""
                self._selector.modify(conn.sock, selectors.EVENT_WRITE)
            conn.sent += conn.sock.send(conn.outgoing[conn.sent :])
        except BlockingIOError:
            return
        except OSError:
            self._drop(conn)
            return
        if conn.sent >= len(conn.outgoing):
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)
            self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        self._connections.pop(conn.sock, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        conn.sock.close()

    def close(self) -> None:
        self._closing = True
        # On Linux, shutting a listening socket down wakes its poll; the accept then fails and
        # the loop sees _closing at once.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        self._listener.close()
        if self.address.startswith("/"):
            with contextlib.suppress(OSError):
                os.unlink(self.address)


def _listen(address: str) -> socket.socket:
    """A non-blocking listening socket; a unix one is created 0600 whatever the process umask,
    then opened to its group (0660), so no other user ever connects in between."""
    unix = address.startswith("/")
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_UNIX if unix else socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if unix:
            remove_socket(address)  # left by a killed run; a live one cannot exist (one master)
            os.makedirs(os.path.dirname(address), mode=0o755, exist_ok=True)
            with owner_only():
                sock.bind(address)
            os.chmod(address, 0o660)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host or "0.0.0.0", int(port)))  # noqa: S104 - an empty host asks for it
        sock.listen(BACKLOG)
        sock.setblocking(False)
        return sock
    except OSError as err:
        sock.close()
        raise EndpointError(f"metricsAddress {address}: cannot listen: {err.strerror or err}") from None

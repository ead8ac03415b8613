"""An HTTP proxy on 127.0.0.1 in front of a real registry, for faults docker-registry has not got.

Every request is forwarded to the registry as it came, except those whose path contains
`fault.marker` (default `/blobs/`), which get `fault.status` instead (500, 401, 403, 429...) while
it is set. `fault.rate` limits how fast response bodies are sent back (bytes per second), so a
pull of a few MiB lasts long enough to kill the registry in its middle.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .registry import Loopback

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"})
CHUNK = 16 << 10
# The error a registry puts in the body with a status (the distribution spec's codes, with their
# default messages): CRI-O reports a 4xx by these words alone, without the status.
ERRORS = {
    401: ("UNAUTHORIZED", "authentication required"),
    403: ("DENIED", "requested access to the resource is denied"),
    429: ("TOOMANYREQUESTS", "too many requests"),
}


@dataclass
class Fault:
    status: int | None = None  # answer matching requests with this status
    marker: str = "/blobs/"
    retry_after: str | None = None
    rate: int = 0  # bytes per second for response bodies; 0: as fast as they come


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client or registry that went away mid-answer is what these tests are about


class FaultProxy(Loopback):
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.fault = Fault()
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status sent)
        self.cuts: list[float] = []  # time.monotonic() of each body the registry left unfinished
        self.relayed = 0  # body bytes sent back so far, all answers together
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()

    def count(self, marker: str = "") -> int:
        with self._lock:
            return sum(1 for _, path, _ in self.requests if marker in path)

    def _log(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def handle_one_request(self) -> None:
                # containerd 1.7 and 2.x try https first on a loopback host and fall back to http
                # only on the answer a Go server gives a TLS hello on a plain port; give it too.
                if self.rfile.peek(1)[:1] == b"\x16":  # type: ignore[attr-defined]
                    self.wfile.write(
                        b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
                    )
                    self.close_connection = True
                    return
                super().handle_one_request()

            def do_HEAD(self) -> None:
                self._forward()

            def do_GET(self) -> None:
                self._forward()

            def _fail(self, status: int) -> None:
                code, message = ERRORS.get(status, ("UNKNOWN", "injected fault"))
                body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
                self.send_response(status)
                if proxy.fault.retry_after:
                    self.send_header("Retry-After", proxy.fault.retry_after)
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="fault-proxy"')
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _forward(self) -> None:
                fault = proxy.fault
                if fault.status is not None and fault.marker in self.path:
                    proxy._log(self.command, self.path, fault.status)
                    self._fail(fault.status)
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                try:
                    upstream.sock = _connect(proxy.upstream_port, small=bool(fault.rate))
                    headers = forwarded(self.headers.items())
                    upstream.request(self.command, self.path, headers=headers)
                    response = upstream.getresponse()
                except OSError:
                    self.close_connection = True  # the registry is gone: so is this connection
                    return
                proxy._log(self.command, self.path, response.status)
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self._relay(response, fault.rate)
                upstream.close()

            def _relay(self, response: http.client.HTTPResponse, rate: int) -> None:
                with contextlib.suppress(OSError, http.client.HTTPException):
                    while chunk := response.read(CHUNK):
                        self.wfile.write(chunk)
                        with proxy._lock:
                            proxy.relayed += len(chunk)
                        if rate:
                            time.sleep(len(chunk) / rate)
                        if response.isclosed():
                            break
                # a body cut short (the registry died) leaves the client with a short read
                if response.length:
                    self.close_connection = True
                    with proxy._lock:
                        proxy.cuts.append(time.monotonic())

        return Handler


def forwarded(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The request headers to pass on: hop-by-hop ones dropped, repeated ones joined with ", "
    (CRI-O sends each manifest type it accepts in an `Accept` line of its own)."""
    joined: dict[str, str] = {}
    for key, value in headers:
        if key.lower() not in _HOP_BY_HOP:
            joined[key] = f"{joined[key]}, {value}" if key in joined else value
    return joined


def _connect(port: int, small: bool) -> socket.socket:
    """A connection to the registry; `small`: with a small receive buffer, set before connecting
    so the window is small from the start and the registry cannot run far ahead of the rate."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if small:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CHUNK)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock

"""The HTTP side of `metricsAddress`: `/metrics` and `/healthz` on TCP or a unix socket, in a
thread of the master. Imported only when an endpoint is configured: the HTTP server modules are
a few MiB the master does not carry otherwise.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import socket
import socketserver
import threading
from collections.abc import Callable

from image_cri_shim.startup import remove_socket
from image_cri_shim.supervisor.samples import FILES

Health = Callable[[], tuple[bool, str]]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, content_type = self.server.render()
            self.reply(200, body, content_type)
        elif path == "/healthz":
            ok, text = self.server.health()
            self.reply(200 if ok else 503, f"{text}\n".encode(), "text/plain; charset=utf-8")
        else:
            self.reply(404, b"not found: try /metrics or /healthz\n", "text/plain; charset=utf-8")

    def reply(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:
        return str(self.client_address[0]) if self.client_address else "unix"

    def log_message(self, format: str, *args: object) -> None:
        pass  # scrapes every few seconds are not events


class _Server(socketserver.ThreadingMixIn, socketserver.BaseServer):
    daemon_threads = True
    socket: socket.socket  # the listening socket (TCPServer's, which both servers derive from)
    health: Health
    render: Callable[[], tuple[bytes, str]]


class _TcpServer(_Server, socketserver.TCPServer):
    allow_reuse_address = True


class _Tcp6Server(_TcpServer):
    address_family = socket.AF_INET6


class _UnixServer(_Server, socketserver.UnixStreamServer):
    pass


class EndpointError(Exception):
    """The endpoint cannot listen (address in use, permission denied): one line."""


class Endpoint:
    """The HTTP endpoint, in a thread of the master."""

    def __init__(self, address: str, directory: str, health: Health) -> None:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.exposition import CONTENT_TYPE_LATEST
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        self.address = address
        self._server = _listen(address)
        self._server.health = health

        def render() -> tuple[bytes, str]:
            with FILES:
                return generate_latest(registry), CONTENT_TYPE_LATEST

        self._server.render = render
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name="metrics", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        """Take connections while open, blocking in the listening socket's poll: an idle endpoint
        never wakes the master (`serve_forever` wakes twice a second to look for a shutdown)."""
        while not self._closing:
            self._server.handle_request()

    def close(self) -> None:
        self._closing = True
        # On Linux, shutting a listening socket down wakes its poll; the accept then fails and
        # handle_request returns, so the loop sees _closing at once.
        with contextlib.suppress(OSError):
            self._server.socket.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        self._server.server_close()
        if isinstance(self._server, _UnixServer):
            with contextlib.suppress(OSError):
                os.unlink(self.address)


def _listen(address: str) -> _Server:
    try:
        if address.startswith("/"):
            remove_socket(address)  # left by a killed run; a live one cannot exist (one master)
            os.makedirs(os.path.dirname(address), mode=0o755, exist_ok=True)
            server: _Server = _UnixServer(address, _Handler)
            os.chmod(address, 0o660)
            return server
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        if ":" in host:
            return _Tcp6Server((host, int(port)), _Handler)
        return _TcpServer((host or "0.0.0.0", int(port)), _Handler)  # noqa: S104 - an empty host asks for it
    except OSError as err:
        raise EndpointError(f"metricsAddress {address}: cannot listen: {err.strerror or err}") from None

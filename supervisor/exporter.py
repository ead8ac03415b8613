"""`metricsAddress`: the master serves `/metrics` for all three processes, and `/healthz`.

The samples are files in one directory that every process writes (prometheus-client's
multiprocess mode); this module owns that directory. It lives next to the shim socket (a
tmpfs on every systemd host), is emptied when the master starts (one master per shim socket,
start-up checks that), and is removed when it stops.

A child that exits leaves counter and histogram files behind: that is what keeps totals across
worker swaps. So that hundreds of reloads do not leave hundreds of files for every scrape to
read, `retire` folds a dead child's files into one file per kind and removes its gauges.
"""

from __future__ import annotations

import contextlib
import glob
import http.server
import os
import shutil
import socket
import socketserver
import stat
import threading
from collections.abc import Callable
from typing import Any

from image_cri_shim.metrics import DIR_ENV

Health = Callable[[], tuple[bool, str]]
# A scrape and a fold never overlap: a scrape must not read a file twice (once folded) or
# open one that is being removed.
_files = threading.Lock()


class ExporterError(Exception):
    """The endpoint cannot listen (address in use, permission denied): one line."""


def prepare_dir(shim: str) -> str | None:
    """An empty samples directory next to the shim socket, announced to the children through
    the environment; None (metrics off) if it cannot be made."""
    directory = os.path.join(os.path.dirname(shim), f".{os.path.basename(shim)}.metrics")
    try:
        os.makedirs(os.path.dirname(directory), mode=0o755, exist_ok=True)
        shutil.rmtree(directory, ignore_errors=True)
        os.mkdir(directory, 0o700)
    except OSError:
        return None
    os.environ[DIR_ENV] = directory
    return directory


def remove_dir(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def retire(directory: str, pid: int) -> None:
    """After child `pid` exited: drop its live gauges, fold its counters and histograms into
    the retired totals (same keys add up, exactly what a scrape would have summed)."""
    files = {kind: os.path.join(directory, f"{kind}_{pid}.db") for kind in ("counter", "histogram")}
    gauges = glob.glob(os.path.join(directory, f"gauge_live*_{pid}.db"))
    if not gauges and not any(os.path.exists(path) for path in files.values()):
        return
    from prometheus_client.mmap_dict import MmapedDict

    with _files:
        _fold(directory, pid, gauges, files, MmapedDict)


def _fold(directory: str, pid: int, gauges: list[str], files: dict[str, str], mmaped: Any) -> None:
    for path in gauges:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    for kind, path in files.items():
        if not os.path.exists(path):
            continue
        source = mmaped(path, read_mode=True)
        totals = mmaped(os.path.join(directory, f"{kind}_retired.db"))
        try:
            for key, value, timestamp in source.read_all_values():
                old, _ = totals.read_value(key)
                totals.write_value(key, old + value, timestamp)
        finally:
            source.close()
            totals.close()
        os.unlink(path)


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
    health: Health
    render: Callable[[], tuple[bytes, str]]


class _TcpServer(_Server, socketserver.TCPServer):
    allow_reuse_address = True


class _Tcp6Server(_TcpServer):
    address_family = socket.AF_INET6


class _UnixServer(_Server, socketserver.UnixStreamServer):
    pass


class Exporter:
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
            with _files:
                return generate_latest(registry), CONTENT_TYPE_LATEST

        self._server.render = render
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if isinstance(self._server, _UnixServer):
            with contextlib.suppress(OSError):
                os.unlink(self.address)


def _listen(address: str) -> _Server:
    try:
        if address.startswith("/"):
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.lstat(address).st_mode):
                    os.unlink(address)  # left by a killed run; a live one cannot exist (one master)
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
        raise ExporterError(f"metricsAddress {address}: cannot listen: {err.strerror or err}") from None

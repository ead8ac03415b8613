"""A tiny registry API v2 server on 127.0.0.1 for behaviours docker-registry does not have:
Bearer-token auth with a token endpoint, 429 with Retry-After, 5xx, request counting, and the
ways a broken registry misbehaves (headers that trickle in, redirect loops, huge bodies,
tokens that are never accepted), over plain HTTP or TLS.

It serves manifests from a dict (path, reference) -> (media type, body); everything it is
asked is recorded so tests can assert how often a registry was contacted.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
#: The smallest manifest a probe accepts, for `add_manifest`.
MANIFEST = {"schemaVersion": 2, "mediaType": OCI_MANIFEST}


@dataclass
class Behaviour:
    """What the server does; tests change fields while it runs."""

    manifests: dict[tuple[str, str], tuple[str, bytes]] = field(default_factory=dict)
    bearer: bool = False  # challenge with Bearer and serve tokens at /token
    basic: tuple[str, str] | None = None  # challenge with Basic for these credentials
    token_lifetime: int = 300
    status: int | None = None  # answer every /v2/ request with this status
    retry_after: str | None = None
    token_body: bytes | None = None  # override the token endpoint's body (e.g. invalid JSON)
    delay: float = 0.0  # seconds to wait before answering a manifest request
    trickle: float = 0.0  # seconds between the bytes of a manifest response's status line and headers
    reject_tokens: bool = False  # every token is refused with a fresh challenge
    redirect: str | None = None  # manifest requests get 302 to this base URL + the same path
    realm: str | None = None  # the token endpoint named in the Bearer challenge (default: /token here)
    no_head: bool = False  # HEAD on a manifest is 405, as on registries without HEAD support
    padding: int = 0  # spaces appended to every manifest body (a huge manifest, valid JSON)
    chunked: bool = False  # manifest bodies without Content-Length, in chunked encoding


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    connections = 0

    def process_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: object
    ) -> None:
        self.connections += 1
        super().process_request(request, client_address)

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that gave up mid-answer is what these tests are about


class TinyRegistry:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        """`tls`: a server context (certificate loaded) to serve https instead of http."""
        self.behaviour = Behaviour()
        self.requests: list[tuple[str, str, str]] = []  # (method, path, authorization)
        self.tokens_issued = 0
        self.trickled = 0  # bytes of response heads sent slowly
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"{'https' if tls else 'http'}://{self.host}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def add_manifest(
        self, path: str, ref: str, body: dict[str, object], media_type: str = OCI_MANIFEST
    ) -> None:
        self.behaviour.manifests[(path, ref)] = (media_type, json.dumps(body).encode())

    def count(self, predicate: Callable[[str, str], bool] | None = None) -> int:
        with self._lock:
            return sum(1 for m, p, _ in self.requests if predicate is None or predicate(m, p))

    @property
    def connections(self) -> int:
        """TCP connections accepted so far."""
        return self._server.connections

    def stop(self) -> None:
        self._stopped.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _reply(self, status: int, headers: dict[str, str], body: bytes, send_body: bool) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if send_body:
                    self.wfile.write(body)

            def _reply_slowly(self, head: bytes) -> None:
                """The response head one byte at a time, until the client or the server gives up."""
                for byte in head:
                    if registry._stopped.wait(registry.behaviour.trickle):
                        return
                    try:
                        self.wfile.write(bytes([byte]))
                    except OSError:
                        return
                    with registry._lock:
                        registry.trickled += 1
                self.close_connection = True

            def _reply_manifest(self, media_type: str, manifest: bytes, send_body: bool) -> None:
                b = registry.behaviour
                size = len(manifest) + b.padding
                self.send_response(200)
                self.send_header("Content-Type", media_type)
                self.send_header(
                    "Transfer-Encoding" if b.chunked else "Content-Length",
                    "chunked" if b.chunked else str(size),
                )
                self.end_headers()
                if not send_body:
                    return
                padding = (b" " * min(65536, b.padding - at) for at in range(0, b.padding, 65536))
                pieces = itertools.chain([manifest], padding)  # made as sent: the server holds little
                with contextlib.suppress(OSError):  # the client may stop reading: that is the point
                    for piece in pieces:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if b.chunked else piece)
                    if b.chunked:
                        self.wfile.write(b"0\r\n\r\n")

            def _serve(self, body: bool) -> None:
                b = registry.behaviour
                url = urlparse(self.path)
                auth = self.headers.get("Authorization", "")
                with registry._lock:
                    registry.requests.append((self.command, url.path, auth))
                if url.path == "/token":
                    registry.tokens_issued += 1
                    scope = parse_qs(url.query).get("scope", [""])[0]
                    token = (
                        b.token_body
                        or json.dumps(
                            {"token": f"tok-{registry.tokens_issued}-{scope}", "expires_in": b.token_lifetime}
                        ).encode()
                    )
                    self._reply(200, {"Content-Type": "application/json"}, token, body)
                    return
                if b.status is not None:
                    headers = {"Retry-After": b.retry_after} if b.retry_after else {}
                    self._reply(b.status, headers, b"{}", body)
                    return
                if not self._authorized(auth, body):
                    return
                if url.path == "/v2/":
                    self._reply(200, {"Content-Type": "application/json"}, b"{}", body)
                    return
                if b.delay:
                    time.sleep(b.delay)
                if b.trickle:
                    self._reply_slowly(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
                    return
                if b.redirect is not None:
                    self._reply(302, {"Location": b.redirect + self.path}, b"", body)
                    return
                if b.no_head and not body:
                    self._reply(405, {}, b"", body)
                    return
                parts = url.path[len("/v2/") :].rsplit("/manifests/", 1)
                found = b.manifests.get((parts[0], parts[1])) if len(parts) == 2 else None
                if found is None:
                    self._reply(404, {"Content-Type": "application/json"}, b'{"errors":[]}', body)
                    return
                self._reply_manifest(found[0], found[1], body)

            def _authorized(self, auth: str, send_body: bool) -> bool:
                b = registry.behaviour
                if b.bearer and (b.reject_tokens or not auth.startswith("Bearer tok-")):
                    realm = b.realm or f"{registry.url}/token"
                    self._reply(
                        401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="tiny"'}, b"{}", send_body
                    )
                    return False
                if b.basic is not None:
                    expected = "Basic " + base64.b64encode(f"{b.basic[0]}:{b.basic[1]}".encode()).decode()
                    if auth != expected:
                        self._reply(401, {"WWW-Authenticate": 'Basic realm="tiny"'}, b"{}", send_body)
                        return False
                return True

        return Handler

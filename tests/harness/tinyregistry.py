"""A tiny registry API v2 server on 127.0.0.1 for behaviours docker-registry does not have:
Bearer-token auth with a token endpoint, 429 with Retry-After, 5xx, and request counting.

It serves manifests from a dict (path, reference) -> (media type, body); everything it is
asked is recorded so tests can assert how often a registry was contacted.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


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


class TinyRegistry:
    def __init__(self) -> None:
        self.behaviour = Behaviour()
        self.requests: list[tuple[str, str, str]] = []  # (method, path, authorization)
        self.tokens_issued = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def add_manifest(
        self, path: str, ref: str, body: dict[str, object], media_type: str = OCI_MANIFEST
    ) -> None:
        self.behaviour.manifests[(path, ref)] = (media_type, json.dumps(body).encode())

    def count(self, predicate: Callable[[str, str], bool] | None = None) -> int:
        with self._lock:
            return sum(1 for m, p, _ in self.requests if predicate is None or predicate(m, p))

    def stop(self) -> None:
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
                parts = url.path[len("/v2/") :].rsplit("/manifests/", 1)
                found = b.manifests.get((parts[0], parts[1])) if len(parts) == 2 else None
                if found is None:
                    self._reply(404, {"Content-Type": "application/json"}, b'{"errors":[]}', body)
                    return
                self._reply(200, {"Content-Type": found[0]}, found[1], body)

            def _authorized(self, auth: str, send_body: bool) -> bool:
                b = registry.behaviour
                if b.bearer and not auth.startswith("Bearer tok-"):
                    realm = f"http://{registry.host}/token"
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

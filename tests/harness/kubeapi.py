"""A stand-in Kubernetes API server for the ConfigMap syncer's tests (no real kube-apiserver here).

It runs in the test process (a threaded HTTP/1.1 server on 127.0.0.1) and speaks the parts of
the real REST and watch protocol the unchanged official `kubernetes` client uses for ConfigMaps:

- `GET /api`, `GET /version` (discovery);
- `GET /api/v1/namespaces/<ns>/configmaps/<name>`: the object, or a `Status` 404 body;
- `GET /api/v1/namespaces/<ns>/configmaps`: a `ConfigMapList` with `metadata.resourceVersion`,
  filtered by `fieldSelector` (`metadata.name`, `metadata.namespace`; `=`, `==`, `!=`);
- the same with `watch=true`: chunked newline-delimited JSON events (ADDED, MODIFIED, DELETED,
  BOOKMARK with `allowWatchBookmarks`, and ERROR with a 410 `Status` when `resourceVersion` is
  older than the last compaction), ending cleanly at `timeoutSeconds`;
- an optional bearer-token check: an unknown or missing token gets 401, a token marked
  "forbidden" gets 403, each with a `Status` body.

The objects live in this object, not in the HTTP server, like etcd behind an apiserver:
`stop()` drops every connection mid-stream (an API server restart as clients see it) and
`start()` serves the same state on the same port again. `requests` counts requests by kind
(list/watch/get/discovery/other) so a test can show that an idle period costs no polling.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import select
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

Obj = dict[str, Any]

DEFAULT_WATCH_SECONDS = 1800  # what the apiserver uses (randomized) when the client sets none


@dataclass(frozen=True)
class Event:
    version: int
    type: str  # ADDED, MODIFIED, DELETED
    object: Obj


class KubeApi:
    """The stand-in API server. Use as a context manager, or call start()/close()."""

    def __init__(
        self,
        *,
        tokens: Mapping[str, str] | None = None,
        bookmark_interval: float | None = None,
        max_watch_seconds: float | None = None,
    ) -> None:
        """`tokens`: {token: "allowed" | "forbidden"}; None serves everyone.
        `bookmark_interval`: send a BOOKMARK this often to watchers that allow them (the real
        server: about once a minute); one is always sent just before a watch times out.
        `max_watch_seconds`: end watches sooner than the client asked (as a server may)."""
        self.tokens = dict(tokens) if tokens is not None else None
        self.bookmark_interval = bookmark_interval
        self.max_watch_seconds = max_watch_seconds
        self.port = 0
        self.requests: Counter[str] = Counter()
        self.expired_sent = 0  # 410 ERROR events sent
        self.log: list[tuple[str, str, int]] = []  # (kind, path with query, status)
        self._cond = threading.Condition()
        self._version = 1000
        self._objects: dict[tuple[str, str], Obj] = {}
        self._history: list[Event] = []
        self._compacted = 0  # watches from an older version get 410
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._epoch = 0  # bumped by stop(): streams of an earlier epoch end
        self._connections: set[socket.socket] = set()
        self._active_watches = 0

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> KubeApi:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Serve (again) on the same port (a free one the first time)."""
        if self._server is not None:
            return
        api = self

        class Handler(_Handler):
            owner = api

        server = _Server(("127.0.0.1", self.port), Handler)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Go away as a crashed API server does: listener closed, every connection cut."""
        server, self._server = self._server, None
        if server is None:
            return
        with self._cond:
            self._epoch += 1
            self._cond.notify_all()
            connections = list(self._connections)
        server.shutdown()
        server.server_close()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()

    # ----------------------------------------------------------------- state (the "etcd" side)

    def apply_configmap(self, name: str, data: Mapping[str, str], namespace: str = "kube-system") -> str:
        """Create or replace a ConfigMap's data; returns its new resourceVersion."""
        with self._cond:
            version = self._next_version()
            key = (namespace, name)
            old = self._objects.get(key)
            metadata: Obj = {
                "name": name,
                "namespace": namespace,
                "uid": old["metadata"]["uid"] if old else str(uuid.uuid4()),
                "resourceVersion": str(version),
                "creationTimestamp": old["metadata"]["creationTimestamp"] if old else _timestamp(),
            }
            obj: Obj = {"kind": "ConfigMap", "apiVersion": "v1", "metadata": metadata, "data": dict(data)}
            self._objects[key] = obj
            self._record(Event(version, "MODIFIED" if old else "ADDED", obj))
            return str(version)

    def delete_configmap(self, name: str, namespace: str = "kube-system") -> str:
        with self._cond:
            old = self._objects.pop((namespace, name))
            version = self._next_version()
            gone = {**old, "metadata": {**old["metadata"], "resourceVersion": str(version)}}
            self._record(Event(version, "DELETED", gone))
            return str(version)

    def configmap(self, name: str, namespace: str = "kube-system") -> Obj | None:
        with self._cond:
            return self._objects.get((namespace, name))

    def compact(self) -> None:
        """Forget the history: a watch from any version before now gets 410 Gone."""
        with self._cond:
            self._compacted = self._version
            self._history.clear()

    @property
    def resource_version(self) -> str:
        with self._cond:
            return str(self._version)

    @property
    def active_watches(self) -> int:
        with self._cond:
            return self._active_watches

    def reset_counts(self) -> None:
        with self._cond:
            self.requests.clear()
            self.log.clear()

    def write_kubeconfig(self, path: Path, token: str | None = None) -> Path:
        """A kubeconfig pointing at this server (with `token` as bearer token, if given)."""
        user: Obj = {"token": token} if token is not None else {}
        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "node", "user": user}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "node"}}],
            "current-context": "standin",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(document))
        return path

    def _next_version(self) -> int:
        self._version += 1
        return self._version

    def _record(self, event: Event) -> None:
        self._history.append(event)
        self._cond.notify_all()

    # ----------------------------------------------------------------- serving (handler calls)

    def _count(self, kind: str) -> None:
        with self._cond:
            self.requests[kind] += 1

    def _logged(self, kind: str, path: str, status: int) -> None:
        with self._cond:
            self.log.append((kind, path, status))

    def _select(self, namespace: str, selector: list[tuple[str, str, str]], obj: Obj) -> bool:
        meta = obj["metadata"]
        if meta["namespace"] != namespace:
            return False
        for field, op, value in selector:
            actual = meta["name"] if field == "metadata.name" else meta["namespace"]
            if (actual == value) != (op != "!="):
                return False
        return True

    def _list(self, namespace: str, selector: list[tuple[str, str, str]]) -> Obj:
        with self._cond:
            items = [
                {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
                for key, obj in sorted(self._objects.items())
                if self._select(namespace, selector, obj)
            ]
            return {
                "kind": "ConfigMapList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self._version)},
                "items": items,
            }

    def _watch(
        self,
        namespace: str,
        selector: list[tuple[str, str, str]],
        since: int | None,
        seconds: float,
        bookmarks: bool,
    ) -> Iterator[Obj | None]:
        """Events for one watch (None: nothing yet, the caller checks the connection)."""
        deadline = time.monotonic() + seconds
        with self._cond:
            epoch = self._epoch
            if since is None:  # no version: the current state as ADDED, then changes
                cursor = self._version
                initial = [
                    {"type": "ADDED", "object": obj}
                    for obj in self._objects.values()
                    if self._select(namespace, selector, obj)
                ]
            elif since < self._compacted:
                self.expired_sent += 1
                yield {
                    "type": "ERROR",
                    "object": _status(
                        410, "Expired", f"too old resource version: {since} ({self._compacted})"
                    ),
                }
                return
            else:
                cursor, initial = since, []
        yield from initial
        next_bookmark = time.monotonic() + (self.bookmark_interval or seconds)
        version = cursor
        while True:
            with self._cond:
                if self._epoch != epoch:
                    raise ConnectionAbortedError("server stopped")
                pending = [e for e in self._history if e.version > cursor]
                if not pending:
                    now = time.monotonic()
                    wake = min(deadline, next_bookmark) if bookmarks else deadline
                    if now < wake:
                        self._cond.wait(min(wake - now, 0.2))
                    version = self._version
            for event in pending:
                cursor = event.version
                if self._select(namespace, selector, event.object):
                    yield {"type": event.type, "object": event.object}
            if pending:
                continue
            now = time.monotonic()
            if bookmarks and (now >= next_bookmark or now >= deadline):
                cursor = max(cursor, version)
                yield {
                    "type": "BOOKMARK",
                    "object": {
                        "kind": "ConfigMap",
                        "apiVersion": "v1",
                        "metadata": {"resourceVersion": str(cursor)},
                    },
                }
                next_bookmark = now + (self.bookmark_interval or seconds)
            if now >= deadline:
                return
            yield None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionResetError):  # a client hanging up is no error
            super().handle_error(request, client_address)


_request_ids = itertools.count(1)


class _Handler(BaseHTTPRequestHandler):
    owner: KubeApi
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        with self.owner._cond:
            self.owner._connections.add(self.connection)

    def finish(self) -> None:
        with self.owner._cond:
            self.owner._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log is `KubeApi.log`."""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = [p for p in url.path.split("/") if p]
        kind = _kind(parts, query)
        self.owner._count(kind)  # counted when it arrives: a long watch counts at once
        status = self._serve(kind, parts, query)
        self.owner._logged(kind, self.path, status)

    def do_POST(self) -> None:
        self.owner._count("other")
        self._send(405, _status(405, "MethodNotAllowed", "the stand-in API server is read-only"))
        self.owner._logged("other", self.path, 405)

    do_PUT = do_PATCH = do_DELETE = do_POST

    def _serve(self, kind: str, parts: list[str], query: dict[str, str]) -> int:
        denied = self._check_token()
        if denied is not None:
            return denied
        if parts == ["api"]:
            return self._send(
                200,
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.owner.port}"}
                    ],
                },
            )
        if parts == ["version"]:
            return self._send(200, _VERSION)
        if len(parts) in (5, 6) and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "configmaps":
            namespace = parts[3]
            if len(parts) == 6:
                obj = self.owner.configmap(parts[5], namespace)
                if obj is None:
                    return self._send(
                        404,
                        _status(
                            404,
                            "NotFound",
                            f'configmaps "{parts[5]}" not found',
                            {"name": parts[5], "kind": "configmaps"},
                        ),
                    )
                return self._send(200, obj)
            try:
                selector = _field_selector(query.get("fieldSelector", ""))
            except ValueError as err:
                return self._send(400, _status(400, "BadRequest", str(err)))
            if kind == "watch":
                return self._serve_watch(namespace, selector, query)
            return self._send(200, self.owner._list(namespace, selector))
        return self._send(404, _status(404, "NotFound", "the server could not find the requested resource"))

    def _check_token(self) -> int | None:
        tokens = self.owner.tokens
        if tokens is None:
            return None
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        verdict = tokens.get(token) if scheme.lower() == "bearer" else None
        if verdict is None:
            return self._send(401, _status(401, "Unauthorized", "Unauthorized"))
        if verdict == "forbidden":
            return self._send(
                403,
                _status(
                    403,
                    "Forbidden",
                    'configmaps is forbidden: User "system:node:standin" cannot list resource "configmaps" '
                    'in API group "" in the namespace "kube-system"',
                    {"kind": "configmaps"},
                ),
            )
        return None

    def _serve_watch(
        self, namespace: str, selector: list[tuple[str, str, str]], query: dict[str, str]
    ) -> int:
        raw_version = query.get("resourceVersion", "")
        try:
            since = int(raw_version) if raw_version not in ("", "0") else None
            seconds = float(query.get("timeoutSeconds", DEFAULT_WATCH_SECONDS))
        except ValueError:
            return self._send(400, _status(400, "BadRequest", "invalid resourceVersion or timeoutSeconds"))
        if self.owner.max_watch_seconds is not None:
            seconds = min(seconds, self.owner.max_watch_seconds)
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        with self.owner._cond:
            self.owner._active_watches += 1
        try:
            for event in self.owner._watch(namespace, selector, since, seconds, bookmarks):
                if event is not None:
                    self._chunk(json.dumps(event).encode() + b"\n")
                elif self._client_gone():
                    raise ConnectionAbortedError("the client went away")
            self._chunk(b"")  # the last chunk: the watch ended cleanly
        except (ConnectionAbortedError, OSError):
            self.close_connection = True  # cut mid-stream (stop()) or the client went away
        finally:
            with self.owner._cond:
                self.owner._active_watches -= 1
        return 200

    def _client_gone(self) -> bool:
        """True when the client closed its end (readable with nothing to read)."""
        readable, _, _ = select.select([self.connection], [], [], 0)
        if not readable:
            return False
        try:
            peeked: bytes = self.connection.recv(1, socket.MSG_PEEK)
            return peeked == b""
        except OSError:
            return True

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _send(self, code: int, body: Obj) -> int:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Audit-Id", f"standin-{next(_request_ids)}")
        self.end_headers()
        self.wfile.write(data)
        return code


def _kind(parts: list[str], query: dict[str, str]) -> str:
    if parts in (["api"], ["version"]) or parts[:1] == ["apis"]:
        return "discovery"
    if len(parts) == 6 and parts[4] == "configmaps":
        return "get"
    if len(parts) == 5 and parts[4] == "configmaps":
        return "watch" if query.get("watch") in ("true", "1") else "list"
    return "other"


def _field_selector(text: str) -> list[tuple[str, str, str]]:
    terms = []
    for term in filter(None, text.split(",")):
        for op in ("!=", "==", "="):
            field, found, value = term.partition(op)
            if found:
                break
        else:
            raise ValueError(f"invalid selector: {term!r}")
        if field not in ("metadata.name", "metadata.namespace"):
            raise ValueError(f'field label not supported: "{field}"')
        terms.append((field, op, value))
    return terms


def _status(code: int, reason: str, message: str, details: Obj | None = None) -> Obj:
    status: Obj = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        status["details"] = details
    return status


def _timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


_VERSION = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.0-standin",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.24.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}

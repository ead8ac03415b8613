"""A gRPC proxy on a unix socket in front of a real runtime, for what a runtime cannot be made to
do on cue: answer some methods late, or not at all.

Every unary call is forwarded as bytes, with its metadata and deadline. Calls whose method starts
with `prefix` are held `delay` seconds first, or answered UNAVAILABLE while `refuse` is set:
containerd's images API (`IMAGES`) that is slow, or cannot be reached, just after a pull.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

IMAGES = "/containerd.services.images.v1.Images/"
TRANSPORT_KEYS = frozenset({"user-agent", ":authority", "grpc-accept-encoding", "grpc-timeout"})
OPTIONS = [("grpc.max_receive_message_length", 16 << 20), ("grpc.max_send_message_length", 16 << 20)]


class RuntimeProxy:
    def __init__(self, socket_path: Path, runtime: str, prefix: str = IMAGES) -> None:
        self.socket_path = socket_path
        self.address = f"unix://{socket_path}"
        self.prefix = prefix
        self.delay = 0.0
        self.refuse = False
        self.held = 0  # calls held or refused so far
        self._lock = threading.Lock()
        self._channel = grpc.insecure_channel(runtime, options=OPTIONS)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=OPTIONS)
        self._server.add_generic_rpc_handlers((_Handler(self),))
        self._server.add_insecure_port(self.address)
        self._server.start()

    def forward(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        if method.startswith(self.prefix) and (self.refuse or self.delay):
            with self._lock:
                self.held += 1
            if self.refuse:
                context.abort(grpc.StatusCode.UNAVAILABLE, "the images API is not reachable (test proxy)")
            time.sleep(self.delay)
        metadata = tuple((k, v) for k, v in context.invocation_metadata() if k not in TRANSPORT_KEYS)
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = self._channel.unary_unary(method)
        try:
            response: bytes = call(request, timeout=context.time_remaining(), metadata=metadata)
        except grpc.RpcError as err:
            context.abort(err.code(), err.details() or "")
        return response

    def stop(self) -> None:
        self._server.stop(grace=None).wait(5)
        self._channel.close()
        self.socket_path.unlink(missing_ok=True)


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, proxy: RuntimeProxy) -> None:
        self._proxy = proxy

    def service(self, details: grpc.HandlerCallDetails) -> Any:
        method: str = details.method
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: self._proxy.forward(method, request, context)
        )

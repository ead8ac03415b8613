"""A small gRPC runtime on a unix socket for the one thing containerd 1.6 cannot show:
streaming CRI methods. It serves `runtime.v1.RuntimeService/GetContainerEvents` (server
streaming, as newer runtimes do) and a method no CRI version has, as a bidirectional echo,
so a test can prove the shim forwards streams and methods it does not know, large messages,
and deadlines (a slow method).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from cri_api.v1 import api_pb2 as v1

EVENTS = ("c-1", "c-2", "c-3")
UNKNOWN_METHOD = "/runtime.v1.RuntimeService/SomeFutureMethod"
SLOW_METHOD = "/runtime.v1.RuntimeService/SlowFutureMethod"  # answers after SLOW_SECONDS
SLOW_SECONDS = 5.0


class StreamingRuntime:
    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        options = [("grpc.max_receive_message_length", 16 << 20), ("grpc.max_send_message_length", 16 << 20)]
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=options)
        self._server.add_generic_rpc_handlers((self._Handler(),))
        self._server.add_insecure_port(f"unix://{socket_path}")
        self._server.start()

    class _Handler(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> Any:
            method = details.method
            if method == "/runtime.v1.RuntimeService/GetContainerEvents":
                return grpc.unary_stream_rpc_method_handler(
                    self.events,
                    request_deserializer=v1.GetEventsRequest.FromString,
                    response_serializer=v1.ContainerEventResponse.SerializeToString,
                )
            if method == UNKNOWN_METHOD:
                return grpc.stream_stream_rpc_method_handler(self.echo)
            if method == SLOW_METHOD:
                return grpc.unary_unary_rpc_method_handler(self.slow)
            if method == "/runtime.v1.RuntimeService/Version":
                return grpc.unary_unary_rpc_method_handler(
                    lambda request, context: v1.VersionResponse(runtime_name="streaming-runtime"),
                    request_deserializer=v1.VersionRequest.FromString,
                    response_serializer=v1.VersionResponse.SerializeToString,
                )
            return None

        @staticmethod
        def events(request: v1.GetEventsRequest, context: grpc.ServicerContext) -> Iterator[Any]:
            for container_id in EVENTS:
                yield v1.ContainerEventResponse(container_id=container_id)

        @staticmethod
        def slow(request: bytes, context: grpc.ServicerContext) -> bytes:
            time.sleep(SLOW_SECONDS)
            return request

        @staticmethod
        def echo(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
            for request in requests:
                yield b"echo:" + request

    def stop(self) -> None:
        self._server.stop(grace=1).wait(5)

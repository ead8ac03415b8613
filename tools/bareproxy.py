"""The floor of the stack: a CRI byte proxy with nothing else, for `make bench` to set beside the shim.

`python -m tools.bareproxy sync|aio LISTEN TARGET` serves every method on the unix socket LISTEN
by forwarding the request's bytes to the runtime at TARGET and its answer's bytes back: no
decoding, no rewriting, no heartbeat, no metrics. `sync` is grpcio's synchronous server with a
thread pool, the shape the shim's worker has; `aio` is grpc.aio on one event loop. What either
costs at rest under kubelet's schedule is what any proxy on that server costs.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from concurrent import futures
from typing import Any

import grpc

OPTIONS = [("grpc.max_receive_message_length", 16 << 20), ("grpc.max_send_message_length", 16 << 20)]


def _serve_sync(listen: str, target: str) -> None:
    channel = grpc.insecure_channel(f"unix://{target}", options=OPTIONS)

    class Forward(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes] | None:
            call: Any = channel.unary_unary(details.method)

            def forward(request: bytes, context: grpc.ServicerContext) -> Any:
                return call(request, timeout=context.time_remaining())

            return grpc.unary_unary_rpc_method_handler(forward)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=OPTIONS)
    server.add_generic_rpc_handlers((Forward(),))
    server.add_insecure_port(f"unix://{listen}")
    server.start()
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    stopped.wait()
    server.stop(1).wait()


async def _serve_aio(listen: str, target: str) -> None:
    channel = grpc.aio.insecure_channel(f"unix://{target}", options=OPTIONS)

    class Forward(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes] | None:
            call: Any = channel.unary_unary(details.method)

            async def forward(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                return await call(request, timeout=context.time_remaining())

            return grpc.unary_unary_rpc_method_handler(forward)

    server = grpc.aio.server(options=OPTIONS)
    server.add_generic_rpc_handlers((Forward(),))
    server.add_insecure_port(f"unix://{listen}")
    await server.start()
    stopped = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
    await stopped.wait()
    await server.stop(1)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in ("sync", "aio"):
        print("usage: python -m tools.bareproxy sync|aio LISTEN TARGET", file=sys.stderr)
        return 2
    mode, listen, target = argv
    if mode == "sync":
        _serve_sync(listen, target)
    else:
        asyncio.run(_serve_aio(listen, target))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""The gRPC server on the shim socket: routing, byte passthrough, bind-then-rename, drain.

The four image methods the shim changes go to `ImageService`; every other method of the CRI
image and runtime services, of both API versions, is forwarded as bytes, never decoded.
A method this table does not know (a newer CRI) is forwarded as a bidirectional stream,
which carries any cardinality on the wire.

The socket is bound on a temporary path next to the shim path and renamed over it once the
server runs, so the shim path always resolves to a listening socket, also while a new worker
replaces an old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
import grpc.aio

from image_cri_shim import logs
from image_cri_shim.config import Config
from image_cri_shim.protos import cri_pb2 as cri
from image_cri_shim.workers.images import Context, ImageService
from image_cri_shim.workers.names import NameStore
from image_cri_shim.workers.registry import RegistryClient, node_platform
from image_cri_shim.workers.resolver import Resolver
from image_cri_shim.workers.upstream import MESSAGE_OPTIONS, Upstream

log = logs.get("worker")

VERSIONS = ("runtime.v1", "runtime.v1alpha2")
IMAGE_METHODS = ("ListImages", "ImageStatus", "PullImage", "RemoveImage", "ImageFsInfo")
RUNTIME_METHODS = (
    "Version", "RunPodSandbox", "StopPodSandbox", "RemovePodSandbox", "PodSandboxStatus", "ListPodSandbox",
    "CreateContainer", "StartContainer", "StopContainer", "RemoveContainer", "ListContainers",
    "ContainerStatus", "UpdateContainerResources", "ReopenContainerLog", "ExecSync", "Exec", "Attach",
    "PortForward", "ContainerStats", "ListContainerStats", "PodSandboxStats", "ListPodSandboxStats",
    "UpdateRuntimeConfig", "Status", "CheckpointContainer", "ListMetricDescriptors",
    "ListPodSandboxMetrics", "RuntimeConfig", "UpdatePodSandboxResources",
)  # fmt: skip
RUNTIME_STREAMING = ("GetContainerEvents",)  # server streaming
Handler: TypeAlias = "grpc.RpcMethodHandler[bytes, bytes]"
SERVICES = tuple(f"/{v}.{s}/" for v in VERSIONS for s in ("ImageService", "RuntimeService"))


class Router(grpc.GenericRpcHandler):
    """Method path -> handler; built once, looked up per call."""

    def __init__(self, upstream: Upstream, images: ImageService) -> None:
        self._upstream = upstream
        self._table: dict[str, Handler] = {}
        for version in VERSIONS:
            image_service = f"{version}.ImageService"
            for path, handler in images.handlers(image_service).items():
                self._table[path] = grpc.unary_unary_rpc_method_handler(handler)
            for method in IMAGE_METHODS:
                self._table.setdefault(
                    f"/{image_service}/{method}", self._unary(f"/{image_service}/{method}")
                )
            for method in RUNTIME_METHODS:
                path = f"/{version}.RuntimeService/{method}"
                self._table[path] = self._unary(path)
            for method in RUNTIME_STREAMING:
                path = f"/{version}.RuntimeService/{method}"
                self._table[path] = self._unary_stream(path)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        method: str = handler_call_details.method
        handler = self._table.get(method)
        if handler is None and method.startswith(SERVICES):
            handler = self._table[method] = self._stream_stream(method)
        return handler

    def _unary(self, path: str) -> Handler:
        upstream = self._upstream

        async def forward(request: bytes, context: Context) -> bytes:
            return await upstream.unary(path, request, context)

        return grpc.unary_unary_rpc_method_handler(forward)

    def _unary_stream(self, path: str) -> Handler:
        upstream = self._upstream

        async def forward(request: bytes, context: Context) -> AsyncIterator[bytes]:
            async for response in upstream.unary_stream(path, request, context):
                yield response

        return grpc.unary_stream_rpc_method_handler(forward)

    def _stream_stream(self, path: str) -> Handler:
        upstream = self._upstream

        async def forward(requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
            async for response in upstream.stream_stream(path, requests, context):
                yield response

        return grpc.stream_stream_rpc_method_handler(forward)


class StartError(Exception):
    """An expected start-up failure (socket path unusable…): one line for the operator."""


@dataclass
class Listener:
    path: str
    inode: int


def bind(server: grpc.aio.Server, shim: str) -> str:
    """Bind on a temporary path next to `shim`; returns that path."""
    directory = os.path.dirname(shim)
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    except OSError as err:
        raise StartError(f"cannot create socket directory {directory}: {err.strerror}") from None
    temp = os.path.join(directory, f".{os.path.basename(shim)}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)
    try:
        server.add_insecure_port(f"unix://{temp}")
    except RuntimeError:
        reason = "permission denied" if not os.access(directory, os.W_OK) else "bind failed"
        raise StartError(f"cannot listen on {temp}: {reason}") from None
    return temp


def publish(temp: str, shim: str) -> Listener:
    """Make the bound socket the shim socket: mode 0660, then an atomic rename over `shim`."""
    os.chmod(temp, 0o660)
    inode = os.stat(temp).st_ino
    os.rename(temp, shim)
    return Listener(shim, inode)


def unpublish(listener: Listener) -> None:
    """Remove the shim socket unless a newer worker has already renamed its own over it."""
    with contextlib.suppress(FileNotFoundError):
        if os.stat(listener.path).st_ino == listener.inode:
            os.unlink(listener.path)


async def runtime_version(upstream: Upstream, timeout: float = 2.0) -> str | None:
    """`name version` of the runtime if it answers Version (v1, then v1alpha2), else None."""
    for version in VERSIONS:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]
        call = upstream.channel.unary_unary(f"/{version}.RuntimeService/Version")
        try:
            raw = await call(cri.VersionRequest(version="v1").SerializeToString(), timeout=timeout)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                continue
            return None
        answer = cri.VersionResponse.FromString(raw)
        return f"{answer.runtime_name} {answer.runtime_version} ({answer.runtime_api_version})"
    return None


@dataclass
class Worker:
    """Everything one worker generation holds for its lifetime."""

    config: Config
    cri: str
    upstream: Upstream
    clients: dict[str, RegistryClient]
    resolver: Resolver
    images: ImageService

    @classmethod
    def build(cls, config: Config, cri_socket: str) -> Worker:
        upstream = Upstream(cri_socket, config.timeout)
        node = node_platform()
        clients = {r.domain: RegistryClient(r, node) for r in config.registries}
        resolver = Resolver(config.registries, clients, config.cache)
        names = NameStore(config.state_dir)
        return cls(config, cri_socket, upstream, clients, resolver, ImageService(upstream, resolver, names))

    async def close(self) -> None:
        await self.upstream.close()
        for client in self.clients.values():
            await client.aclose()


async def serve(config: Config, cri_socket: str, report: Callable[[dict[str, Any]], None]) -> None:
    """Serve on the shim socket until SIGTERM/SIGINT, then drain in-flight calls and return."""
    worker = Worker.build(config, cri_socket)
    server = grpc.aio.server(options=MESSAGE_OPTIONS)
    server.add_generic_rpc_handlers((Router(worker.upstream, worker.images),))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    listener: Listener | None = None
    tasks: list[asyncio.Task[None]] = []
    try:
        temp = bind(server, config.shim)
        await server.start()
        listener = publish(temp, config.shim)
        runtime = await runtime_version(worker.upstream)
        if runtime is None:
            log.warning("container runtime does not answer yet", cri=worker.upstream.target)
        log.info(
            "serving",
            socket=config.shim,
            cri=worker.upstream.target,
            runtime=runtime or "unavailable",
            registries=",".join(r.domain for r in config.registries),
        )
        report({"ready": True, "socket": config.shim, "runtime": runtime})
        if not config.cache.disable_stats and config.cache.stats_log_interval > 0:
            tasks.append(
                asyncio.create_task(log_cache_stats(worker.resolver, config.cache.stats_log_interval))
            )
        await stop.wait()
        log.info("draining", grace=f"{config.timeout:g}s")
        started = time.monotonic()
        await server.stop(grace=config.timeout)
        log.info("drained", took=f"{time.monotonic() - started:.1f}s")
    finally:
        for task in tasks:
            task.cancel()
        if listener is not None:
            unpublish(listener)
        await server.stop(grace=None)
        await worker.close()


async def log_cache_stats(resolver: Resolver, interval: float) -> None:
    """One line per interval, and only when something happened since the last one."""
    last = (resolver.hits, resolver.misses)
    while True:
        await asyncio.sleep(interval)
        now = (resolver.hits, resolver.misses)
        if now == last:
            continue
        hits, misses = now[0] - last[0], now[1] - last[1]
        log.info("decision cache", hits=hits, misses=misses, size=resolver.cache_size())
        last = now


def write_report(fd: int | None) -> Callable[[dict[str, Any]], None]:
    """Readiness goes to the master over an inherited pipe, as one JSON line."""

    def report(message: dict[str, Any]) -> None:
        if fd is None:
            return
        with contextlib.suppress(OSError), os.fdopen(fd, "w") as pipe:
            pipe.write(json.dumps(message) + "\n")

    return report

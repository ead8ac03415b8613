"""The gRPC server on the shim socket: routing, byte passthrough, bind-then-rename, drain.

The four image methods the shim changes go to `ImageService`, and CreateContainer to the naming
policy (which maps its image on runtimes without image records); every other method of the CRI
image and runtime services, of both API versions, is forwarded as bytes, never decoded
(docs/behaviour.md, "The methods served").
One generic handler finds each call's method in a table; a method the table does not know (a
newer CRI) is forwarded as a bidirectional stream, which carries any cardinality on the wire.
Not grpc.aio's registered methods: its server keeps one waiting task per registered method and,
after every call, waits on all of them again, so 70 of them cost each call about 60 µs.

The server is grpc.aio's: the CRI server, the channel to the runtime, the registry client and
the naming I/O are one asyncio program on one thread, and nothing on it blocks (the names file
is written from a thread of its own). At rest it costs what grpc.aio's own machinery costs: no
thread pool, no completion queue polled on a timer.

The socket is bound on a temporary path next to the shim path and renamed over it once the
server runs, so the shim path always resolves to a listening socket, also while a new worker
replaces an old one (docs/behaviour.md, "During a reload").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import time
from dataclasses import dataclass
from typing import TypeAlias

import grpc
import grpc.aio

from image_cri_shim import logs
from image_cri_shim.config import Config
from image_cri_shim.heartbeat import RUNTIME_FAILED, RUNTIME_OK, Heartbeat
from image_cri_shim.lifecycle import trim_heap
from image_cri_shim.messages import Message, RuntimeUp, Serving, encode
from image_cri_shim.metrics import WorkerMetrics, active
from image_cri_shim.protos import cri_pb2 as cri
from image_cri_shim.startup import owner_only
from image_cri_shim.workers.lookup.registries import Registries
from image_cri_shim.workers.naming.store import NameStore
from image_cri_shim.workers.runtime.calls import QUIET, unary_call
from image_cri_shim.workers.runtime.upstream import SERVED_MESSAGE_OPTIONS, Upstream
from image_cri_shim.workers.serve.images import Context, Handler, ImageService
from image_cri_shim.workers.serve.keeper import Keeper
from image_cri_shim.workers.serve.liveness import Pulse

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
SERVICES = tuple(f"/{v}.{s}/" for v in VERSIONS for s in ("ImageService", "RuntimeService"))
MethodHandler: TypeAlias = "grpc.RpcMethodHandler[bytes, bytes]"
# Calls in flight (a PullImage may take minutes); one more is refused at once with
# RESOURCE_EXHAUSTED ("Concurrent RPC limit exceeded!"), which bounds what they hold.
CALLS = 1024
# grpc's core keeps calls that arrived before the server took them (it takes them one by one).
# Past 1,000 such calls by default it cancels new ones at random (all of them past 3,000): the
# caller reads a bare CANCELLED. Raised above CALLS, a burst is answered by the bound above.
PENDING = 4 * CALLS
ACCEPTING = 0x10000  # __SO_ACCEPTCON: a listening socket in /proc/net/unix
# Clients reconnect this often. A server that stops cancels calls that reach it in the
# moment between its shutdown and the client's reading of the GOAWAY; a connection that
# reaches its age instead gets a two-phase GOAWAY while the server keeps serving. A worker
# that is replaced therefore waits for its connections to age out before it stops.
CONNECTION_AGE = 5.0
# Connection ages carry up to 10 % jitter; the margin covers a GOAWAY a client reads late on a
# busy node (one call was lost to a 0.5 s margin under CPU starvation).
HANDOVER = CONNECTION_AGE * 1.1 + 2.5
# A client that got no CPU through the hand-over still holds its connection here, with the
# GOAWAY unread: its next call must reach a server that still serves (which refuses it as
# unprocessed, so the client retries it on a new connection), not a closed socket. The worker
# waits for such connections this much longer.
LINGER = 30.0
# A connection that never sends the HTTP/2 preface is closed after this (grpc's default is
# 120 s): a client that opens connections and stays silent cannot pile up descriptors.
HANDSHAKE_TIMEOUT = 10.0
SERVER_OPTIONS = (
    *SERVED_MESSAGE_OPTIONS,
    *QUIET,
    ("grpc.max_connection_age_ms", int(CONNECTION_AGE * 1000)),
    ("grpc.max_connection_age_grace_ms", 2**31 - 1),  # in-flight calls are bounded by `timeout`
    ("grpc.server_handshake_timeout_ms", int(HANDSHAKE_TIMEOUT * 1000)),
    ("grpc.server.max_pending_requests", PENDING),
    ("grpc.server.max_pending_requests_hard_limit", 2 * PENDING),
)


def register(
    server: grpc.aio.Server, upstream: Upstream, images: ImageService, keeper: Keeper | None = None
) -> None:
    """Every known method of both CRI versions, and the stream forwarding of the rest.
    `keeper` hears of each RunPodSandbox and ListImages (it looks at the sandbox image then)."""
    server.add_generic_rpc_handlers((Methods(routes(upstream, images, keeper), upstream),))


def routes(
    upstream: Upstream, images: ImageService, keeper: Keeper | None = None
) -> dict[str, MethodHandler]:
    """Method path (`/runtime.v1.ImageService/PullImage`) -> its handler."""
    table: dict[str, MethodHandler] = {}
    for version in VERSIONS:
        image_service = f"/{version}.ImageService/"
        table.update({image_service + m: _unary(upstream, image_service + m) for m in IMAGE_METHODS})
        served = images.handlers(image_service[1:-1])
        if keeper is not None:
            served["ListImages"] = _listing(served["ListImages"], keeper)
        table.update({image_service + m: grpc.unary_unary_rpc_method_handler(h) for m, h in served.items()})
        runtime_service = f"/{version}.RuntimeService/"
        table.update({runtime_service + m: _unary(upstream, runtime_service + m) for m in RUNTIME_METHODS})
        table.update(
            {runtime_service + m: _unary_stream(upstream, runtime_service + m) for m in RUNTIME_STREAMING}
        )
        create = runtime_service + "CreateContainer"
        table[create] = grpc.unary_unary_rpc_method_handler(
            functools.partial(images.naming.create_container, upstream, create)
        )
        if keeper is not None:
            sandbox = runtime_service + "RunPodSandbox"
            table[sandbox] = _sandbox(upstream, sandbox, keeper)
    return table


def _unary(upstream: Upstream, path: str) -> MethodHandler:
    async def forward(request: bytes, context: Context) -> bytes:
        return await upstream.unary(path, request, context)

    return grpc.unary_unary_rpc_method_handler(forward)


def _listing(list_images: Handler, keeper: Keeper) -> Handler:
    async def listing(request: bytes, context: Context) -> bytes:
        answer = await list_images(request, context)
        keeper.on_listing(request, answer)
        return answer

    return listing


def _sandbox(upstream: Upstream, path: str, keeper: Keeper) -> MethodHandler:
    async def run_pod_sandbox(request: bytes, context: Context) -> bytes:
        keeper.check()  # wakes its task; the call goes on at once
        return await upstream.unary(path, request, context)

    return grpc.unary_unary_rpc_method_handler(run_pod_sandbox)


def _unary_stream(upstream: Upstream, path: str) -> MethodHandler:
    # grpc.aio streams answers from a handler it sees is an async generator function (a
    # partial of one is seen through).
    return grpc.unary_stream_rpc_method_handler(functools.partial(upstream.unary_stream, path))


class Methods(grpc.GenericRpcHandler):
    """The known methods by table; other methods of the CRI services, which this table does not
    know, forwarded as streams; None (UNIMPLEMENTED) for any other service."""

    def __init__(self, table: dict[str, MethodHandler], upstream: Upstream) -> None:
        self._table = table
        self._upstream = upstream

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> MethodHandler | None:
        method: str = handler_call_details.method
        known = self._table.get(method)
        if known is not None or not method.startswith(SERVICES):
            return known
        return grpc.stream_stream_rpc_method_handler(functools.partial(self._upstream.stream_stream, method))


class StartError(Exception):
    """An expected start-up failure (socket path unusable…): one line for the operator."""


@dataclass
class Listener:
    path: str
    inode: int


def bind(server: grpc.aio.Server, shim: str) -> str:
    """Bind on a temporary path next to `shim`, mode 0600 until `publish`; returns that path."""
    directory = os.path.dirname(shim)
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    except OSError as err:
        raise StartError(f"cannot create socket directory {directory}: {err.strerror}") from None
    temp = os.path.join(directory, f".{os.path.basename(shim)}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)
    try:
        with owner_only():  # grpc binds here; publish() opens it to the group once it is ready
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


def clients(bound: str) -> int | None:
    """Connections made to the unix socket bound at `bound`, accepted or still queued (not the
    listener). /proc/net/unix names a socket by the path it was bound under, whatever it was
    renamed to, and grpc's with extra leading slashes. None where the table is not readable."""
    try:
        with open("/proc/net/unix", encoding="utf-8", errors="replace") as table:
            rows = [line.split() for line in table]
    except OSError:
        return None
    path = bound.lstrip("/")
    # Num RefCount Protocol Flags Type St Inode Path; the listener has __SO_ACCEPTCON in Flags.
    return sum(
        1
        for row in rows[1:]
        if len(row) >= 8 and row[7].lstrip("/") == path and not int(row[3], 16) & ACCEPTING
    )


async def linger(bound: str, now: asyncio.Event) -> None:
    """Past the hand-over, wait (up to LINGER) until no client is connected any more."""
    deadline = time.monotonic() + LINGER
    while (left := clients(bound)) and time.monotonic() < deadline:
        if await woken(now, 0.1):
            return
    if left:
        log.warning("clients still connected after the hand-over", connections=left)


async def woken(event: asyncio.Event, seconds: float) -> bool:
    """Wait for `event` at most `seconds`; whether it is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()


async def runtime_version(upstream: Upstream, timeout: float = 2.0) -> str | None:
    """`name version` of the runtime if it answers Version (v1, then v1alpha2), else None."""
    for version in VERSIONS:
        call = unary_call(upstream.channel, f"/{version}.RuntimeService/Version")
        try:
            raw = await call(cri.VersionRequest(version="v1").SerializeToString(), timeout=timeout)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                continue
            return None
        answer = cri.VersionResponse.FromString(raw)
        upstream.beat.stamp(RUNTIME_OK)
        return f"{answer.runtime_name} {answer.runtime_version} ({answer.runtime_api_version})"
    upstream.beat.stamp(RUNTIME_FAILED)
    return None


class Signals:
    """SIGTERM and SIGINT as events of the loop: `requested`, and `now` (drain at once), set by
    SIGINT or a second SIGTERM. The loop's own signal handling wakes it through its self-pipe
    whichever thread the kernel gave the signal to."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.now = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGINT or self.requested.is_set():
            self.now.set()
        self.requested.set()

    def close(self) -> None:
        """Once drained, a late SIGTERM has nothing left to hurry: ignore it until the exit (the
        loop, closing, would otherwise restore the default action, which kills)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
            signal.signal(signum, signal.SIG_IGN)


async def serve(
    config: Config, cri_socket: str, ready: ReadyPipe, beat: Heartbeat, every: float | None
) -> None:
    """Serve on the shim socket until SIGTERM/SIGINT, then hand over, drain, and return.
    `beat`: the heartbeat page, proven at least every `every` seconds (`liveness`; None: no
    proof between calls, when no master reads the page)."""
    signals = Signals()
    metrics = WorkerMetrics(active(config.metrics_address))
    upstream = Upstream(cri_socket, config.timeout, metrics, beat)
    registries = Registries(config, metrics)
    images = ImageService(
        upstream,
        registries.resolve,
        registries.planner,
        NameStore(config.state_dir),
        config.upstream,
        metrics,
        decisions=registries,
        docker_socket=config.docker_socket,
    )
    server = grpc.aio.server(options=SERVER_OPTIONS, maximum_concurrent_rpcs=CALLS)
    keeper = Keeper(config, upstream, ready.send, registries.resolve)
    register(server, upstream, images, keeper)
    pulse = Pulse(beat, every) if every else None
    listener: Listener | None = None
    waiting: asyncio.Task[None] | None = None
    try:
        temp = bind(server, config.shim)
        await server.start()
        listener = publish(temp, config.shim)
        runtime = await runtime_version(upstream)
        beat.stamp()
        naming = await images.naming.describe(time.monotonic() + 2.0) if runtime else "not known yet"
        log.info(
            "serving",
            socket=config.shim,
            cri=upstream.target,
            runtime=runtime or "unavailable",
            naming=naming,
            registries=",".join(r.domain for r in config.registries),
        )
        ready.send(Serving(config.shim, upstream.target, runtime))
        if pulse is not None:
            pulse.start()
        registries.start()
        keeper.start()  # the pipe stays open for what it has to say
        if runtime is None:
            log.warning("container runtime does not answer yet", cri=upstream.target)
            waiting = asyncio.get_running_loop().create_task(wait_for_runtime(upstream, ready, signals))
        if not config.cache.disable_stats and config.cache.stats_log_interval > 0:
            registries.log_stats_every(config.cache.stats_log_interval)
        trim_heap()
        await signals.requested.wait()
        await keeper.stop()
        if pulse is not None:
            pulse.stop()  # the shim socket is, or is about to be, a newer worker's
        started = time.monotonic()
        if not signals.now.is_set():
            log.info("handing clients over", within=f"{HANDOVER:g}s")
            # Every client connection reaches its age and gets a graceful GOAWAY while this server
            # still serves: clients reconnect (to the socket's new owner) without a single call
            # arriving at a server that has begun to stop.
            await woken(signals.now, HANDOVER)
            await linger(temp, signals.now)
        log.info("draining", grace=f"{config.timeout:g}s")
        await server.stop(grace=config.timeout)
        log.info("drained", took=f"{time.monotonic() - started:.1f}s")
    finally:
        if waiting is not None:
            waiting.cancel()
        await keeper.stop()
        if pulse is not None:
            pulse.stop()
        ready.close()
        if listener is not None:
            unpublish(listener)
        await server.stop(grace=None)
        await images.naming.close()  # removes the pulled records still queued, over the channel
        await upstream.close()
        await registries.close()
        signals.close()


async def wait_for_runtime(upstream: Upstream, ready: ReadyPipe, signals: Signals) -> None:
    """Tell the master when the runtime first answers (its READY=1 waits for that)."""
    while (runtime := await runtime_version(upstream)) is None:
        if await woken(signals.requested, 1.0):
            return
    log.info("container runtime answers", runtime=runtime)
    ready.send(RuntimeUp(runtime))


class ReadyPipe:
    """Readiness reports to the master on an inherited pipe (absent when run alone): `messages`.
    Written from the worker's loop only."""

    def __init__(self, fd: int | None) -> None:
        self._pipe = os.fdopen(fd, "w") if fd is not None else None

    def send(self, message: Message) -> None:
        if self._pipe is not None:
            with contextlib.suppress(OSError):
                self._pipe.write(encode(message))
                self._pipe.flush()

    def close(self) -> None:
        if self._pipe is not None:
            with contextlib.suppress(OSError):
                self._pipe.close()
            self._pipe = None

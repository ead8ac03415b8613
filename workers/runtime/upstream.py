"""The one long-lived channel to the container runtime, and calls over it as raw bytes.

Requests and responses cross this module as serialized bytes: the shim decodes only the few
image messages it changes, everything else is forwarded as it came. Upstream status codes
and messages reach the caller unchanged; a runtime that cannot be reached becomes
UNAVAILABLE with a message naming the socket. The caller's deadline is propagated, capped
by the configured `timeout` (docs/behaviour.md, "Errors the shim returns", "Deadlines and timeouts").
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, TypeAlias

import grpc
import grpc.aio

from image_cri_shim.heartbeat import RUNTIME_FAILED, RUNTIME_OK, SERVED, Heartbeat
from image_cri_shim.lifecycle import HeapTrimmer
from image_cri_shim.metrics import WORKER_OFF, WorkerMetrics
from image_cri_shim.workers.deadline import Deadline
from image_cri_shim.workers.runtime.calls import QUIET, unary_call

# Open streams of methods the shim does not know, each waiting in a thread of its own.
STREAM_THREADS = 256
MAX_MESSAGE = 16 << 20  # answers: a ListImages of a node with many images
# Requests: every CRI request is made from one pod, and the API server stores no object over
# 1.5 MiB; a client's request over this is refused (RESOURCE_EXHAUSTED) before it is held.
MAX_REQUEST = 4 << 20

MESSAGE_OPTIONS: Sequence[tuple[str, Any]] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
)
# The shim socket's side: requests in, answers out.
SERVED_MESSAGE_OPTIONS: Sequence[tuple[str, Any]] = (
    ("grpc.max_receive_message_length", MAX_REQUEST),
    ("grpc.max_send_message_length", MAX_MESSAGE),
)

# While the runtime is down, calls fail at once with UNAVAILABLE and the channel retries the
# connection on its own, waiting longer after each failure. grpc's default cap is 120 s, so
# after a long outage the shim would keep failing for up to two minutes after the runtime is
# back. A connection attempt to a local socket costs next to nothing: try every second.
RECONNECT_OPTIONS: Sequence[tuple[str, Any]] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)

# Every channel to the runtime, grpc.aio's and the synchronous one for unknown streams.
CHANNEL_OPTIONS: Sequence[tuple[str, Any]] = (
    *MESSAGE_OPTIONS,
    *QUIET,
    ("grpc.enable_retries", 0),
    *RECONNECT_OPTIONS,
)

# How grpc itself words an UNAVAILABLE of the shim's own channel, which no runtime's own status
# reads like (containerd's begin with what it was doing, "failed to pull and unpack image ...:",
# even when they end in a connection refused): the runtime could not be reached (not started,
# stopped, crashed; grpc's message names the runtime's socket), or the connection broke during
# the call (the runtime stopped; grpc's message begins so, capitalised as grpc writes it).
_CONNECT_FAILED = "failed to connect to all addresses"
_CONNECTION_LOST = ("Socket closed", "Stream removed", "Connection reset", "Broken pipe", "GOAWAY received")
# What grpc says when the shim's channel refuses an answer over MAX_MESSAGE.
_TOO_LARGE = "Received message larger than max"

# Codes of the shim's own channel that mean the runtime did not answer (down, or silent past
# the deadline); any other outcome is an answer of the runtime's.
_NO_ANSWER = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

# Metadata a server sees that belongs to the transport, not to the caller.
_TRANSPORT_KEYS = frozenset({"user-agent", ":authority", "grpc-accept-encoding", "grpc-timeout"})

Context: TypeAlias = "grpc.aio.ServicerContext[bytes, bytes]"


class Waits:
    """How many calls wait on the runtime right now; `on_idle` runs when they fall to none."""

    def __init__(self, on_idle: Callable[[], None] | None = None) -> None:
        self._count = 0
        self._on_idle = on_idle

    def __enter__(self) -> None:
        self._count += 1

    def __exit__(self, *_exc: object) -> None:
        self._count -= 1
        if self._on_idle is not None and not self._count:
            self._on_idle()

    def __len__(self) -> int:
        return self._count


class Upstream:
    def __init__(
        self,
        socket_path: str,
        timeout: float,
        metrics: WorkerMetrics = WORKER_OFF,
        beat: Heartbeat | None = None,
    ) -> None:
        self.target = f"unix://{socket_path}"
        self.timeout = timeout
        self._seconds = metrics.cri_seconds
        # Every forwarded call is proof that the server serves, and says whether the runtime answers.
        self.beat = beat if beat is not None else Heartbeat()
        # After calls that moved much, the heap holds what their messages took.
        self._trimmer = HeapTrimmer()
        self.waits = Waits(on_idle=self._trimmer.idle)
        self.channel = grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        self._unary: dict[str, grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = {}
        self._stream_channel: grpc.Channel | None = None
        self._stream_threads: ThreadPoolExecutor | None = None

    def deadline(self, context: Context, now: float | None = None) -> Deadline:
        """The deadline of a call arriving now: the caller's, capped by `timeout`."""
        return Deadline.of(context.time_remaining(), self.timeout, time.monotonic() if now is None else now)

    @staticmethod
    def metadata(context: Context) -> tuple[tuple[str, str | bytes], ...]:
        return tuple((k, v) for k, v in (context.invocation_metadata() or ()) if k not in _TRANSPORT_KEYS)

    async def unary(
        self, method: str, request: bytes, context: Context, deadline: Deadline | None = None
    ) -> bytes:
        """Forward one call within `deadline` (made now when the shim spent no time on it yet)."""
        try:
            return await self.call(method, request, context, deadline)
        except grpc.RpcError as err:
            await self.abort(context, err)

    async def call(
        self, method: str, request: bytes, context: Context, deadline: Deadline | None = None
    ) -> bytes:
        """`unary`, but a failed call raises its grpc.RpcError (for a caller that may try again)."""
        call = self._unary.get(method)
        if call is None:
            call = self._unary[method] = unary_call(self.channel, method)
        begin = time.monotonic()
        if deadline is None:
            deadline = self.deadline(context, begin)
        self.beat.stamp(SERVED, begin)
        self._trimmer.moved(len(request))
        try:
            with self.waits:
                response: bytes = await call(
                    request, timeout=deadline.left(begin), metadata=self.metadata(context) or None
                )
                self._trimmer.moved(len(response))
        except grpc.RpcError as err:
            self._seconds.labels(method[1:], err.code().name).observe(time.monotonic() - begin)
            self.answered(err.code())
            raise
        except asyncio.CancelledError:
            # The caller's deadline passed (grpc.aio cancels its handler then, often before this
            # call's own timeout fires) or the caller went away: past the deadline, the runtime
            # did not answer in time.
            if deadline.left() <= 0:
                self._seconds.labels(method[1:], "DEADLINE_EXCEEDED").observe(time.monotonic() - begin)
                self.answered(grpc.StatusCode.DEADLINE_EXCEEDED)
            raise
        self._seconds.labels(method[1:], "OK").observe(time.monotonic() - begin)
        self.beat.stamp(RUNTIME_OK)
        return response

    def answered(self, code: grpc.StatusCode) -> None:
        """Record whether the runtime answered this call (its own error counts as an answer)."""
        self.beat.stamp(RUNTIME_FAILED if code in _NO_ANSWER else RUNTIME_OK)

    async def unary_stream(self, method: str, request: bytes, context: Context) -> AsyncIterator[bytes]:
        call: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = self.channel.unary_stream(method)
        responses = call(request, timeout=self.deadline(context).left(), metadata=self.metadata(context))
        self.beat.stamp(SERVED)
        try:
            with self.waits:
                async for response in responses:
                    yield response
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                self.answered(err.code())
            await self.abort(context, err)
        finally:
            responses.cancel()  # a caller that goes away cancels it upstream

    async def stream_stream(
        self, method: str, requests: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[bytes]:
        """A method the shim does not know, as a bidirectional stream. Over grpc's synchronous
        client, in a thread: grpc.aio's client, still writing when a Go server (containerd)
        answers at once and resets the stream, reports INTERNAL "Internal error from Core" in
        place of the runtime's status. Only a CRI newer than the shim takes this path."""
        channel, threads = self._streams()
        call: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(method)
        outgoing: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        responses = call(
            iter(outgoing.get, None), timeout=self.deadline(context).left(), metadata=self.metadata(context)
        )
        loop = asyncio.get_running_loop()

        async def feed() -> None:
            try:
                async for request in requests:
                    outgoing.put(request)
            finally:
                outgoing.put(None)

        sending = loop.create_task(feed())
        self.beat.stamp(SERVED)
        try:
            with self.waits:
                while (response := await loop.run_in_executor(threads, next, responses, None)) is not None:
                    yield response
        except grpc.RpcError as err:
            await _stopped(sending)
            if err.code() != grpc.StatusCode.CANCELLED:
                self.answered(err.code())
            await self.abort(context, err)
        finally:
            await _stopped(sending)
            responses.cancel()

    def _streams(self) -> tuple[grpc.Channel, ThreadPoolExecutor]:
        """The synchronous channel for unknown methods and the threads that wait on their
        answers (one per open stream), made when one is first called."""
        if self._stream_channel is None:
            self._stream_channel = grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS)
            self._stream_threads = ThreadPoolExecutor(STREAM_THREADS, thread_name_prefix="stream")
        assert self._stream_threads is not None
        return self._stream_channel, self._stream_threads

    async def abort(self, context: Context, err: grpc.RpcError) -> NoReturn:
        code: grpc.StatusCode = err.code()
        self._trailing(context, err)
        await context.abort(code, self.explain(code, err.details() or ""))

    @staticmethod
    def _trailing(context: Context, err: grpc.RpcError) -> None:
        trailing = err.trailing_metadata()
        if trailing:
            pairs: tuple[tuple[str, str | bytes], ...] = tuple(trailing)  # type: ignore[arg-type]
            context.set_trailing_metadata(pairs)

    def explain(self, code: grpc.StatusCode, details: str) -> str:
        """A failure of the shim's own channel names the runtime; the runtime's answers pass as
        they are."""
        runtime = f"container runtime at {self.target}"
        unavailable = code == grpc.StatusCode.UNAVAILABLE
        if (
            unavailable
            and details.startswith(_CONNECT_FAILED)
            and self.target.removeprefix("unix://") in details
        ):
            return f"{runtime} is unreachable: {details}"
        if unavailable and details.startswith(_CONNECTION_LOST):
            return f"connection to the {runtime} was lost: {details}"
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and _TOO_LARGE in details:
            # grpc's own words would read as if the caller's request were too large
            return f"answer of the {runtime} is over {MAX_MESSAGE >> 20} MiB: {details}"
        return details

    async def close(self) -> None:
        await self.channel.close()
        if self._stream_channel is not None:
            self._stream_channel.close()
        if self._stream_threads is not None:
            self._stream_threads.shutdown(wait=False, cancel_futures=True)


async def _stopped(task: asyncio.Task[None] | None) -> None:
    """Cancel `task` and wait until it has."""
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

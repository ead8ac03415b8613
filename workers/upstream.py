"""The one long-lived channel to the container runtime, and calls over it as raw bytes.

Requests and responses cross this module as serialized bytes: the shim decodes only the few
image messages it changes, everything else is forwarded as it came. Upstream status codes
and messages reach the caller unchanged; a runtime that cannot be reached becomes
UNAVAILABLE with a message naming the socket. The caller's deadline is propagated, capped
by the configured `timeout`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, NoReturn

import grpc
import grpc.aio

MAX_MESSAGE = 16 << 20

MESSAGE_OPTIONS: Sequence[tuple[str, Any]] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
)

# Metadata a server sees that belongs to the transport, not to the caller.
_TRANSPORT_KEYS = frozenset({"user-agent", ":authority", "grpc-accept-encoding", "grpc-timeout"})


class Upstream:
    def __init__(self, socket_path: str, timeout: float) -> None:
        self.target = f"unix://{socket_path}"
        self.timeout = timeout
        self.channel = grpc.aio.insecure_channel(
            self.target,
            options=(
                *MESSAGE_OPTIONS,
                ("grpc.enable_retries", 0),
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ),
        )
        self._unary: dict[str, grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = {}
        self._unary_stream: dict[str, grpc.aio.UnaryStreamMultiCallable[bytes, bytes]] = {}
        self._stream_stream: dict[str, grpc.aio.StreamStreamMultiCallable[bytes, bytes]] = {}

    def deadline(self, context: grpc.aio.ServicerContext[Any, Any]) -> float:
        remaining = context.time_remaining()
        return self.timeout if remaining is None else min(remaining, self.timeout)

    @staticmethod
    def metadata(context: grpc.aio.ServicerContext[Any, Any]) -> tuple[tuple[str, str | bytes], ...]:
        return tuple((k, v) for k, v in (context.invocation_metadata() or ()) if k not in _TRANSPORT_KEYS)

    async def unary(self, method: str, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        call = self._unary.get(method)
        if call is None:
            call = self._unary[method] = self.channel.unary_unary(method)
        try:
            response: bytes = await call(
                request, timeout=self.deadline(context), metadata=self.metadata(context)
            )
        except grpc.aio.AioRpcError as err:
            await self.abort(context, err)
        return response

    async def unary_stream(
        self, method: str, request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        call = self._unary_stream.get(method)
        if call is None:
            call = self._unary_stream[method] = self.channel.unary_stream(method)
        try:
            async for response in call(
                request, timeout=self.deadline(context), metadata=self.metadata(context)
            ):
                yield response
        except grpc.aio.AioRpcError as err:
            await self.abort(context, err)

    async def stream_stream(
        self, method: str, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        call = self._stream_stream.get(method)
        if call is None:
            call = self._stream_stream[method] = self.channel.stream_stream(method)
        try:
            async for response in call(
                requests, timeout=self.deadline(context), metadata=self.metadata(context)
            ):
                yield response
        except grpc.aio.AioRpcError as err:
            await self.abort(context, err)

    async def abort(self, context: grpc.aio.ServicerContext[Any, Any], err: grpc.aio.AioRpcError) -> NoReturn:
        code, details = err.code(), err.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE and _is_connect_failure(details):
            details = f"container runtime at {self.target} is unreachable: {details}"
        await context.abort(code, details, tuple(err.trailing_metadata() or ()))
        raise AssertionError("context.abort returned")  # pragma: no cover

    async def close(self) -> None:
        await self.channel.close()


def _is_connect_failure(details: str) -> bool:
    text = details.lower()
    return "failed to connect" in text or "connection refused" in text or "no such file" in text

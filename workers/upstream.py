"""The one long-lived channel to the container runtime, and calls over it as raw bytes.

Requests and responses cross this module as serialized bytes: the shim decodes only the few
image messages it changes, everything else is forwarded as it came. Upstream status codes
and messages reach the caller unchanged; a runtime that cannot be reached becomes
UNAVAILABLE with a message naming the socket. The caller's deadline is propagated, capped
by the configured `timeout`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

import grpc

MAX_MESSAGE = 16 << 20

MESSAGE_OPTIONS: Sequence[tuple[str, Any]] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
)

# Metadata a server sees that belongs to the transport, not to the caller.
_TRANSPORT_KEYS = frozenset({"user-agent", ":authority", "grpc-accept-encoding", "grpc-timeout"})

Context = grpc.ServicerContext


class Upstream:
    def __init__(self, socket_path: str, timeout: float) -> None:
        self.target = f"unix://{socket_path}"
        self.timeout = timeout
        self.channel = grpc.insecure_channel(
            self.target,
            options=(
                *MESSAGE_OPTIONS,
                ("grpc.enable_retries", 0),
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ),
        )
        self._unary: dict[str, grpc.UnaryUnaryMultiCallable[bytes, bytes]] = {}
        self._unary_stream: dict[str, grpc.UnaryStreamMultiCallable[bytes, bytes]] = {}
        self._stream_stream: dict[str, grpc.StreamStreamMultiCallable[bytes, bytes]] = {}

    def deadline(self, context: Context) -> float:
        remaining = context.time_remaining()
        return self.timeout if remaining is None else min(remaining, self.timeout)

    @staticmethod
    def metadata(context: Context) -> tuple[tuple[str, str | bytes], ...]:
        return tuple((k, v) for k, v in (context.invocation_metadata() or ()) if k not in _TRANSPORT_KEYS)

    def unary(self, method: str, request: bytes, context: Context) -> bytes:
        call = self._unary.get(method)
        if call is None:
            call = self._unary[method] = self.channel.unary_unary(method, _registered_method=True)  # type: ignore[call-arg]
        try:
            response: bytes = call(request, timeout=self.deadline(context), metadata=self.metadata(context))
        except grpc.RpcError as err:
            self.abort(context, err)
        return response

    def unary_stream(self, method: str, request: bytes, context: Context) -> Iterator[bytes]:
        call = self._unary_stream.get(method)
        if call is None:
            call = self._unary_stream[method] = self.channel.unary_stream(method)
        responses = call(request, timeout=self.deadline(context), metadata=self.metadata(context))
        yield from self._relay(responses, context)

    def stream_stream(self, method: str, requests: Iterator[bytes], context: Context) -> Iterator[bytes]:
        call = self._stream_stream.get(method)
        if call is None:
            call = self._stream_stream[method] = self.channel.stream_stream(method)
        responses = call(requests, timeout=self.deadline(context), metadata=self.metadata(context))
        yield from self._relay(responses, context)

    def _relay(self, responses: Any, context: Context) -> Iterator[bytes]:
        """Yield an upstream stream; a caller that goes away cancels it upstream."""
        context.add_callback(responses.cancel)
        try:
            yield from responses
        except grpc.RpcError as err:
            self.abort(context, err)

    def abort(self, context: Context, err: grpc.RpcError) -> NoReturn:
        code: grpc.StatusCode = err.code()
        details: str = err.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE and _is_connect_failure(details):
            details = f"container runtime at {self.target} is unreachable: {details}"
        trailing = err.trailing_metadata()
        if trailing:
            context.set_trailing_metadata(tuple((m.key, m.value) for m in trailing))
        context.abort(code, details)

    def close(self) -> None:
        self.channel.close()


def _is_connect_failure(details: str) -> bool:
    text = details.lower()
    return "failed to connect" in text or "connection refused" in text or "no such file" in text

"""The one use of grpc's private `_registered_method` channel argument.

A call registered with the channel skips grpc's per-call method lookup, which the worker's
hot path (every proxied CRI call, the idle heartbeat probe) pays otherwise. The argument is
private, so it is passed here only; pyproject.toml bounds grpcio below the next major, and
tests/unit/test_private_apis.py fails on a grpcio that no longer accepts it.
"""

from __future__ import annotations

import grpc


def unary_call(channel: grpc.Channel, method: str) -> grpc.UnaryUnaryMultiCallable[bytes, bytes]:
    """A unary call of `method` (raw bytes both ways), registered with `channel`."""
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes]
    call = channel.unary_unary(method, _registered_method=True)  # type: ignore[call-arg]
    return call

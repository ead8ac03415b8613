"""The one use of grpc's private `_registered_method` channel argument, and the HTTP/2
option every connection of the worker sets.

A call registered with the channel skips grpc's per-call method lookup, which the worker's
hot path (every proxied CRI call) pays otherwise. The argument is
private, so it is passed here only; pyproject.toml bounds grpcio below the next major, and
tests/unit/test_private_apis.py fails on a grpcio that no longer accepts it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc.aio

# grpc probes every connection's bandwidth-delay product with an HTTP/2 PING after the data it
# reads, to size its flow-control window for long fat networks. The worker's connections are
# local sockets, and each probe is a write, a read and a wake-up of grpc's threads: at rest,
# under kubelet's polling, the probes cost more CPU than the calls they follow.
QUIET: Sequence[tuple[str, Any]] = (("grpc.http2.bdp_probe", 0),)


def unary_call(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    """A unary call of `method` (raw bytes both ways), registered with `channel`."""
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]
    call = channel.unary_unary(method, _registered_method=True)  # type: ignore[call-arg]
    return call

"""Which failures are the shim's own channel to the runtime failing, and which the runtime's own
answers (docs/behaviour.md, "Errors the shim returns"): grpc's words against containerd's."""

from __future__ import annotations

import grpc
import pytest

from image_cri_shim.workers.runtime.upstream import Upstream

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
SOCKET = "/run/containerd/containerd.sock"
REFUSED = f"unix:{SOCKET}: connect failed: addr: unix:{SOCKET} error: Connection refused"


@pytest.fixture
def upstream() -> Upstream:
    return Upstream(SOCKET, 1.0)


@pytest.mark.parametrize(
    "details",
    [
        f"failed to connect to all addresses; last error: FAILED_PRECONDITION: {REFUSED}",
        f"failed to connect to all addresses; last error: UNKNOWN: unix:{SOCKET}: No such file or directory",
    ],
)
def test_a_runtime_that_cannot_be_reached_is_named(upstream: Upstream, details: str) -> None:
    assert (
        upstream.explain(UNAVAILABLE, details)
        == f"container runtime at unix://{SOCKET} is unreachable: {details}"
    )


@pytest.mark.parametrize(
    "details",
    ["Socket closed", "Stream removed (Socket closed)", "Stream removed (sendmsg: Broken pipe (32))"],
)
def test_a_connection_lost_during_the_call_is_named(upstream: Upstream, details: str) -> None:
    assert upstream.explain(UNAVAILABLE, details).startswith(
        f"connection to the container runtime at unix://{SOCKET} was lost: "
    )


@pytest.mark.parametrize(
    ("code", "details"),
    [
        (
            UNAVAILABLE,
            'failed to pull and unpack image "r.io/a:1": failed to prepare extraction snapshot'
            ' "extract-1 sha256:ab": connection error: desc = "transport: Error while dialing dial unix'
            ' /run/snap.sock: connect: connection refused": unavailable',
        ),
        (UNAVAILABLE, "read tcp 10.0.0.1:5000: connection reset by peer"),
        (
            UNAVAILABLE,
            "failed to connect to all addresses; last error: UNKNOWN: unix:/run/other.sock:"
            " Connection refused",
        ),
        (grpc.StatusCode.UNKNOWN, "Socket closed"),
        (grpc.StatusCode.UNKNOWN, f"failed to connect to all addresses; last error: {REFUSED}"),
    ],
    ids=[
        "containerd's own",
        "a registry's reset",
        "another socket",
        "not unavailable",
        "not unavailable either",
    ],
)
def test_the_runtimes_own_answers_pass_unchanged(
    upstream: Upstream, code: grpc.StatusCode, details: str
) -> None:
    assert upstream.explain(code, details) == details

"""Which handler the worker's server gives each method: the known ones from the table, the
rest of the CRI services forwarded as streams, any other service unimplemented."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from image_cri_shim.workers.runtime.upstream import Upstream
from image_cri_shim.workers.serve.server import Methods


class Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


async def _answer(request: bytes, context: Any) -> bytes:
    return request


KNOWN: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(_answer)


@pytest.fixture
def methods() -> Methods:
    return Methods({"/runtime.v1.ImageService/ImageStatus": KNOWN}, Upstream("/run/none.sock", 1.0))


def test_a_known_method_gets_its_handler_from_the_table(methods: Methods) -> None:
    assert methods.service(Details("/runtime.v1.ImageService/ImageStatus")) is KNOWN


@pytest.mark.parametrize(
    "method",
    ["/runtime.v1.ImageService/ImageStatusV2", "/runtime.v1alpha2.RuntimeService/SomethingNew"],
)
def test_a_method_of_a_cri_service_the_table_does_not_know_is_forwarded_as_a_stream(
    methods: Methods, method: str
) -> None:
    handler = methods.service(Details(method))
    assert handler is not None
    assert handler.request_streaming and handler.response_streaming


@pytest.mark.parametrize(
    "method", ["/grpc.health.v1.Health/Check", "/runtime.v2.ImageService/ImageStatus", ""]
)
def test_another_service_is_unimplemented(methods: Methods, method: str) -> None:
    assert methods.service(Details(method)) is None

"""The third-party private APIs the shim uses, each behind one function: these fail on a release
that removes or changes one, before a node does (pyproject.toml bounds each dependency)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import grpc.aio
import httpx

from image_cri_shim.supervisor.samples import open_samples
from image_cri_shim.workers.lookup.transport import set_body
from image_cri_shim.workers.runtime.calls import unary_call


def test_grpc_accepts_a_registered_method(tmp_path: Path) -> None:
    async def made() -> bool:
        # A channel connects lazily: creating the call needs no server.
        async with grpc.aio.insecure_channel(f"unix://{tmp_path}/none.sock") as channel:
            return callable(unary_call(channel, "/runtime.v1.ImageService/ImageStatus"))

    assert asyncio.run(made())


def test_httpx_takes_a_body_read_elsewhere() -> None:
    response = httpx.Response(200, stream=httpx.ByteStream(b"unread"))
    set_body(response, b'{"schemaVersion": 2}')
    assert response.content == b'{"schemaVersion": 2}'
    assert response.json() == {"schemaVersion": 2}


def test_prometheus_sample_files_read_and_write(tmp_path: Path) -> None:
    path = str(tmp_path / "counter_1.db")
    samples = open_samples(path)
    samples.write_value("key", 2.5, 10.0)
    samples.close()
    reading = open_samples(path, read_mode=True)  # how the retired totals read a child's file
    try:
        assert list(reading.read_all_values()) == [("key", 2.5, 10.0)]
    finally:
        reading.close()
    totals = open_samples(path)  # and how they add to their own
    try:
        assert totals.read_value("key") == (2.5, 10.0)
    finally:
        totals.close()

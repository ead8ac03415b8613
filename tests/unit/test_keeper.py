"""One look of the sandbox keeper (`Keeper._keep`), its runtime and shim calls answered by values:
what it says, to the log and the master, and what it leaves for its loop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from image_cri_shim.config import parse
from image_cri_shim.messages import Message, Sandbox
from image_cri_shim.protos import cri_pb2 as cri
from image_cri_shim.workers.runtime.sandbox import UNKNOWN
from image_cri_shim.workers.runtime.upstream import Upstream
from image_cri_shim.workers.serve import keeper as kp

ANSWERS = json.loads((Path(__file__).parent.parent / "sandbox-status.json").read_text())
PAUSE = "registry.k8s.io/pause:3.6"


class Refused(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class Runtime:
    """The answers of a containerd 1.6 and of the shim's PullImage, as values."""

    def __init__(self) -> None:
        self.held = False
        self.down = False
        self.pull_error: str | None = None
        self.pulls = 0
        self.info: dict[str, str] = ANSWERS["containerd 1.6.20~ds1"]["info"]

    async def status(self, request: bytes, timeout: float) -> bytes:
        if self.down:
            raise Refused(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")
        return cri.StatusResponse(info=self.info).SerializeToString()

    async def version(self, request: bytes, timeout: float) -> bytes:
        return cri.VersionResponse(runtime_name="containerd", runtime_version="1.6.20").SerializeToString()

    async def image_status(self, request: bytes, timeout: float) -> bytes:
        assert cri.ImageStatusRequest.FromString(request).image.image == PAUSE
        return cri.ImageStatusResponse(
            image=cri.Image(id="sha256:" + "a" * 64) if self.held else None
        ).SerializeToString()

    async def pull(self, request: bytes, timeout: float) -> bytes:
        assert cri.PullImageRequest.FromString(request).image.image == PAUSE
        self.pulls += 1
        if self.pull_error is not None:
            raise Refused(grpc.StatusCode.UNKNOWN, self.pull_error)
        self.held = True
        return cri.PullImageResponse(image_ref="sha256:" + "a" * 64).SerializeToString()


@pytest.fixture
def world() -> Iterator[tuple[kp.Keeper, Runtime, list[Message]]]:
    config = parse(
        "shim: /nonexistent/shim.sock\ncri: /nonexistent/cri.sock\naddress: http://hub:5000\n", "/c.yaml"
    )
    asyncio.set_event_loop(asyncio.new_event_loop())
    upstream = Upstream("/nonexistent/cri.sock", 60.0)
    told: list[Message] = []
    keeper = kp.Keeper(config, upstream, told.append)
    runtime = Runtime()
    calls: dict[str, Any] = {
        "_status": runtime.status,
        "_version": runtime.version,
        "_image_status": runtime.image_status,
        "_pull": runtime.pull,
    }
    for name, call in calls.items():
        setattr(keeper, name, call)
    yield keeper, runtime, told
    loop = asyncio.get_event_loop()
    loop.run_until_complete(keeper.stop())
    loop.run_until_complete(upstream.close())
    loop.close()
    asyncio.set_event_loop(None)


def keep(keeper: kp.Keeper, may_pull: bool) -> kp.Outcome:
    """One check, on the loop the keeper's channels were made for."""
    return asyncio.get_event_loop().run_until_complete(keeper._keep(may_pull=may_pull))


def test_a_present_image_costs_one_look_and_says_nothing(
    world: Any, caplog: pytest.LogCaptureFixture
) -> None:
    keeper, runtime, told = world
    runtime.held = True
    assert keep(keeper, True) == kp.SETTLED
    assert (runtime.pulls, told, keeper.image) == (0, [], PAUSE)


def test_an_absent_image_is_pulled_and_a_failure_is_told_once_until_it_changes(world: Any) -> None:
    keeper, runtime, told = world
    runtime.pull_error = "no such host"
    assert keep(keeper, True) == kp.FAILED
    assert keep(keeper, True) == kp.FAILED
    assert told == [Sandbox(PAUSE, "no such host")], "the same reason is told once"
    assert keep(keeper, False) == kp.WAITING and runtime.pulls == 2, "between pulls it only looks"
    runtime.pull_error = None
    assert keep(keeper, True) == kp.SETTLED
    assert told[-1] == Sandbox(PAUSE) and runtime.pulls == 3


def test_a_runtime_that_does_not_answer_is_looked_at_again_without_a_pull(world: Any) -> None:
    keeper, runtime, told = world
    runtime.down = True
    assert keep(keeper, True) == kp.SILENT
    assert (runtime.pulls, told) == (0, [])


def test_a_runtime_that_names_no_sandbox_image_is_told_once(world: Any) -> None:
    keeper, runtime, told = world
    runtime.info = {}
    assert keep(keeper, True) == kp.SETTLED
    assert keep(keeper, True) == kp.SETTLED
    assert told == [Sandbox("(unknown)", UNKNOWN)] and runtime.pulls == 0


def test_a_pull_the_runtime_does_not_hold_under_its_name_is_a_problem(world: Any) -> None:
    keeper, _, told = world

    async def pull(request: bytes, timeout: float) -> bytes:
        return cri.PullImageResponse(image_ref="sha256:b").SerializeToString()

    keeper._pull = pull
    assert keep(keeper, True) == kp.FAILED
    assert told == [Sandbox(PAUSE, "pulled as sha256:b, but the runtime does not hold it under this name")]


def test_a_listing_that_lacks_the_image_wakes_the_keeper_and_one_that_holds_it_does_not(world: Any) -> None:
    keeper, _, _ = world
    keeper.image = PAUSE
    holding = cri.ListImagesResponse(images=[cri.Image(id="x", repo_tags=[PAUSE])]).SerializeToString()
    keeper.on_listing(b"", holding)
    assert not keeper._wake.is_set()
    keeper.on_listing(
        cri.ListImagesRequest(filter=cri.ImageFilter(image=cri.ImageSpec(image="nginx"))).SerializeToString(),
        b"",
    )
    assert not keeper._wake.is_set(), "a filtered listing says nothing of the sandbox image"
    keeper.on_listing(b"", b"")
    assert keeper._wake.is_set()

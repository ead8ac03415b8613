"""Keeps the runtime's sandbox (pause) image on the node, under the name the runtime pulls it by.

The runtime pulls its sandbox image itself inside RunPodSandbox, past the shim: on a node that
cannot reach the image's own registry every pod would fail with "failed to pull sandbox image".
So the worker checks, in a task of its own, that the runtime holds that image — at start-up
(every generation, so after each reload too), when a RunPodSandbox passes through the shim, when
a full listing lacks it — and pulls it when it is absent by calling PullImage on the shim's own
socket, as any client would: the same rules, credentials, `mirrors`, failover and naming as any
pull (on containerd, and on cri-dockerd through Docker Engine's API, the image then carries the
caller's name natively, which is exactly the name the runtime looks for; CRI-O cannot rename its
records, so there it stays under the registry's name and the keeper warns). Nothing here is on a
call's path: a trigger only wakes the task.

A present image costs one ImageStatus and says nothing; a pulled one is one info line; one that
cannot be had is a warning with the reason, sent to the master too (`messages.Sandbox`) for
`STATUS=` and `/healthz`, and tried again with backoff (and at every trigger) until it is there.
Which image: `sandbox.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeAlias

import grpc
import grpc.aio

from image_cri_shim import logs
from image_cri_shim.config import Config
from image_cri_shim.messages import Message, Sandbox
from image_cri_shim.protos import cri_pb2 as cri
from image_cri_shim.reference import Reference, parse
from image_cri_shim.workers.lookup.decisions import Decision
from image_cri_shim.workers.runtime import sandbox
from image_cri_shim.workers.runtime.calls import QUIET, unary_call
from image_cri_shim.workers.runtime.upstream import MESSAGE_OPTIONS, Upstream

log = logs.get("sandbox")

V1 = "/runtime.v1"
ASK_TIMEOUT = 10.0  # Status and ImageStatus answer at once on a runtime that works
Outcome: TypeAlias = Literal["settled", "failed", "waiting", "silent"]
SETTLED: Outcome = "settled"  # present, or nothing to keep: wait for the next trigger
FAILED: Outcome = "failed"  # not had: the next pull after a backoff
WAITING: Outcome = "waiting"  # absent, and the backoff of the last failure not over
SILENT: Outcome = "silent"  # the runtime did not answer: look again soon, no pull was tried


class Keeper:
    def __init__(
        self,
        config: Config,
        upstream: Upstream,
        send: Callable[[Message], None],
        decide: Callable[[Reference], Awaitable[Decision]] | None = None,
    ) -> None:
        """`decide`: the worker's resolver (its cached decision says why a failed pull was not
        rewritten)."""
        self._configured = config.sandbox_image
        self._decide = decide
        self._timeout = config.timeout
        self._send = send
        self._wake = asyncio.Event()
        self._stopped = False
        self.image: str | None = config.sandbox_image  # the name, once known
        self._problem = ""  # what the master was told last
        self._status = unary_call(upstream.channel, f"{V1}.RuntimeService/Status")
        self._version = unary_call(upstream.channel, f"{V1}.RuntimeService/Version")
        self._image_status = unary_call(upstream.channel, f"{V1}.ImageService/ImageStatus")
        self._shim = grpc.aio.insecure_channel(f"unix://{config.shim}", options=(*MESSAGE_OPTIONS, *QUIET))
        self._pull = unary_call(self._shim, f"{V1}.ImageService/PullImage")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """The first check runs at once, in the keeper's task."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sandbox")

    def check(self) -> None:
        """Look again soon; never waits."""
        self._wake.set()

    async def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            await self._shim.close()

    async def _sleep(self, seconds: float | None) -> None:
        """Until a trigger, or `seconds` (None: no bound)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _run(self) -> None:
        failures, pull_at = 0, 0.0
        while not self._stopped:
            self._wake.clear()
            try:
                outcome = await self._keep(may_pull=time.monotonic() >= pull_at)
            except Exception as err:  # a fault of its own must not end the keeping
                log.error("sandbox image check failed", error=repr(err))
                outcome = FAILED
            if outcome == SETTLED:
                failures, pull_at = 0, 0.0
                await self._sleep(None)
                continue
            if outcome == SILENT:
                await self._sleep(sandbox.RETRY_FIRST)
                continue
            if outcome == FAILED:
                failures += 1
                pull_at = time.monotonic() + sandbox.retry_after(failures)
            await self._sleep(max(0.0, pull_at - time.monotonic()))

    async def _keep(self, may_pull: bool) -> Outcome:
        """One check, and a pull when it is absent and `may_pull` (its backoff is over): a trigger
        between two attempts only looks."""
        name = self._configured or await self._learn()  # asked at every check: the runtime may have changed
        if name is None:  # the runtime answered without one (said), or did not answer
            return SETTLED if self._problem == sandbox.UNKNOWN else SILENT
        self.image = name
        try:
            if await self._present(name):
                self._tell(name, "")
                return SETTLED
        except grpc.RpcError as err:  # the runtime is down: the master says so already
            log.debug("sandbox image status not answered", image=name, code=err.code().name)
            return SILENT
        if not may_pull:
            return WAITING
        request = cri.PullImageRequest(image=cri.ImageSpec(image=name)).SerializeToString()
        try:
            pulled = cri.PullImageResponse.FromString(await self._pull(request, timeout=self._timeout))
        except grpc.RpcError as err:
            if self._stopped:
                return SETTLED
            why = sandbox.unavailable(err.details() or err.code().name, await self._decision(name))
            self._tell(name, why)
            return FAILED
        if not await self._present(name):
            problem = f"pulled as {pulled.image_ref}, but the runtime does not hold it under this name"
            self._tell(name, problem)
            return FAILED
        log.info("sandbox image pulled", image=name, id=pulled.image_ref)
        self._tell(name, "", said=True)
        return SETTLED

    async def _learn(self) -> str | None:
        """The runtime's own sandbox image (`sandbox.learn`); None while the runtime does not
        answer, or when it names none (said once)."""
        try:
            known = await ask_runtime(self._status, self._version, None)
        except grpc.RpcError as err:
            log.debug("runtime status not answered", code=err.code().name)
            return None
        if known is None and self._problem != sandbox.UNKNOWN:
            self._problem = sandbox.UNKNOWN
            log.warning(sandbox.UNKNOWN)
            self._send(Sandbox("(unknown)", sandbox.UNKNOWN))
        return known.image if known is not None else None

    async def _decision(self, name: str) -> Decision | None:
        try:
            return await self._decide(parse(name)) if self._decide is not None else None
        except Exception:  # only words for a message: the pull's own will do
            return None

    async def _present(self, name: str) -> bool:
        request = cri.ImageStatusRequest(image=cri.ImageSpec(image=name)).SerializeToString()
        answer = cri.ImageStatusResponse.FromString(await self._image_status(request, timeout=ASK_TIMEOUT))
        return bool(answer.image.id)

    def _tell(self, name: str, problem: str, said: bool = False) -> None:
        """Log (unless `said` already) and tell the master when what there is to say changed."""
        if problem == self._problem:
            return
        if problem:
            log.warning(
                "sandbox image cannot be had: pods on this node may fail to start", image=name, reason=problem
            )
        elif self._problem and not said:  # put there by someone else meanwhile
            log.info("sandbox image present", image=name)
        self._problem = problem
        self._send(Sandbox(name, problem))

    # -- what passes through the shim --------------------------------------------------------------

    def on_listing(self, request: bytes, answer: bytes) -> None:
        """A ListImages answered: one that lists every image and lacks it wakes the keeper."""
        image = self.image
        if image is not None and not sandbox.listed(answer, image):
            listing = cri.ListImagesRequest.FromString(request)
            if not listing.filter.image.image:
                self.check()


Call = Callable[..., Awaitable[bytes]]


async def ask_runtime(status: Call, version: Call, configured: str | None) -> sandbox.Known | None:
    """`sandbox.learn` over the runtime's Status (verbose) and Version answers; raises the
    grpc.RpcError of a runtime that does not answer."""
    if configured is not None:
        return sandbox.learn(configured, None, "", "")
    info = cri.StatusResponse.FromString(
        await status(cri.StatusRequest(verbose=True).SerializeToString(), timeout=ASK_TIMEOUT)
    ).info
    said = cri.VersionResponse.FromString(
        await version(cri.VersionRequest(version="v1").SerializeToString(), timeout=ASK_TIMEOUT)
    )
    return sandbox.learn(None, info, said.runtime_name, said.runtime_version)

"""containerd's image records (its images API, namespace `k8s.io`), over the runtime channel.

The naming policy (`naming`) renames an image by copying its records under the caller's name;
this is only the four calls it needs, each a local metadata write.
"""

from __future__ import annotations

import time

import grpc
import grpc.aio

from image_cri_shim.protos import containerd_pb2 as ctr
from image_cri_shim.workers.runtime.calls import unary_call

IMAGES = "/containerd.services.images.v1.Images/"
NAMESPACE = (("containerd-namespace", "k8s.io"),)  # containerd's CRI keeps its images there
RECORD_TIMEOUT = 10.0  # a local metadata write


class OutOfTime(Exception):
    """No time is left before the caller's deadline for another record call."""


def call_timeout(until: float | None, now: float) -> float:
    """One record call's timeout: its own bound, or what is left before `until` (a
    time.monotonic() deadline) when that is less. Raises OutOfTime when nothing is left."""
    if until is None:
        return RECORD_TIMEOUT
    if until <= now:
        raise OutOfTime
    return min(RECORD_TIMEOUT, until - now)


class Records:
    """containerd's image records, over the runtime channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self._calls = {m: unary_call(channel, IMAGES + m) for m in ("Get", "Create", "Update", "Delete")}

    async def _call(self, method: str, request: bytes, until: float | None) -> bytes:
        timeout = call_timeout(until, time.monotonic())
        response: bytes = await self._calls[method](request, timeout=timeout, metadata=NAMESPACE)
        return response

    async def get(self, name: str, until: float | None = None) -> ctr.Image | None:
        try:
            raw = await self._call("Get", ctr.GetImageRequest(name=name).SerializeToString(), until)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return ctr.GetImageResponse.FromString(raw).image

    async def put(self, image: ctr.Image, until: float | None = None) -> None:
        """Create the record, or point an existing one of that name where `image` points."""
        try:
            await self._call("Create", ctr.CreateImageRequest(image=image).SerializeToString(), until)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
            await self._call("Update", ctr.UpdateImageRequest(image=image).SerializeToString(), until)

    async def delete(self, name: str, until: float | None = None) -> None:
        try:
            await self._call("Delete", ctr.DeleteImageRequest(name=name).SerializeToString(), until)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise

    async def served(self, until: float | None = None) -> bool | None:
        """Whether the runtime serves the API; None when it cannot be asked now."""
        try:
            await self.get("", until)
        except OutOfTime:
            return None
        except grpc.RpcError as err:
            code = err.code()
            if code == grpc.StatusCode.UNIMPLEMENTED:
                return False
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return None
        return True  # containerd answers an empty name with NOT_FOUND or INVALID_ARGUMENT

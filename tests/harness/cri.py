"""An independent CRI client for tests (stubs from `container-runtime-interface-api`, not ours).

It speaks `runtime.v1` or `runtime.v1alpha2` with that version's own messages, so a test of the
shim goes through the same bytes kubelet or crictl would send.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import grpc
from cri_api.v1 import api_pb2 as v1
from cri_api.v1 import api_pb2_grpc as v1_grpc
from cri_api.v1alpha2 import api_pb2 as v1alpha2
from cri_api.v1alpha2 import api_pb2_grpc as v1alpha2_grpc

CriVersion = Literal["v1", "v1alpha2"]
VERSIONS: tuple[CriVersion, ...] = ("v1", "v1alpha2")

MAX_MESSAGE = 16 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    # kubelet's CRI client reconnects with a 100 ms base backoff, capped at 3 s
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 3000),
]

# The two versions' messages are distinct classes with the same fields.
Image = v1.Image | v1alpha2.Image
VersionResponse = v1.VersionResponse | v1alpha2.VersionResponse
FilesystemUsage = v1.FilesystemUsage | v1alpha2.FilesystemUsage

_MODULES: dict[str, tuple[ModuleType, ModuleType]] = {
    "v1": (v1, v1_grpc),
    "v1alpha2": (v1alpha2, v1alpha2_grpc),
}


@dataclass(frozen=True)
class Method:
    """One method of a CRI service, as its own descriptors declare it."""

    path: str  # "/runtime.v1.RuntimeService/Version"
    client_streaming: bool
    server_streaming: bool


def methods(version: CriVersion) -> builtins.list[Method]:
    """Every ImageService and RuntimeService method of `version`, from the CRI package's descriptors."""
    pb, _ = _MODULES[version]
    return [
        Method(f"/{service.full_name}/{method.name}", method.client_streaming, method.server_streaming)
        for service in pb.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


class CriClient:
    """CRI ImageService calls with a deadline each, plus the raw stubs for anything else."""

    def __init__(
        self,
        socket_path: Path | str,
        version: CriVersion = "v1",
        *,
        timeout: float = 10.0,
        pull_timeout: float = 60.0,
    ) -> None:
        if version not in _MODULES:
            raise ValueError(f"unknown CRI version {version!r}; one of {VERSIONS}")
        self.version_name = version
        self.timeout = timeout
        self.pull_timeout = pull_timeout
        target = str(socket_path)
        self.target = target if target.startswith("unix:") else f"unix://{target}"
        self.channel = grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        #: The message module of this version: build any request with it (`client.pb.PullImageRequest`).
        self.pb, grpc_module = _MODULES[version]
        #: Raw stubs (untyped generated code) for calls this class does not wrap.
        self.images: Any = grpc_module.ImageServiceStub(self.channel)
        self.runtime: Any = grpc_module.RuntimeServiceStub(self.channel)

    def version(self, timeout: float | None = None) -> VersionResponse:
        response: VersionResponse = self.runtime.Version(
            self.pb.VersionRequest(), timeout=timeout or self.timeout
        )
        return response

    def pull(
        self,
        image: str,
        username: str | None = None,
        password: str | None = None,
        *,
        timeout: float | None = None,
    ) -> str:
        """PullImage; returns the image_ref (the image ID) the runtime reports."""
        request = self.pb.PullImageRequest(image=self.pb.ImageSpec(image=image))
        if username is not None or password is not None:
            request.auth.CopyFrom(self.pb.AuthConfig(username=username or "", password=password or ""))
        response = self.images.PullImage(request, timeout=timeout or self.pull_timeout)
        return str(response.image_ref)

    def status(self, image: str, *, verbose: bool = False, timeout: float | None = None) -> Image | None:
        """ImageStatus; None when the runtime says the image is not present."""
        request = self.pb.ImageStatusRequest(image=self.pb.ImageSpec(image=image), verbose=verbose)
        response = self.images.ImageStatus(request, timeout=timeout or self.timeout)
        if not response.HasField("image"):
            return None
        found: Image = response.image
        return found

    def pulled_as(self, image: str) -> str | None:
        """The name the shim pulled `image` as, from verbose ImageStatus's `info` (None if absent)."""
        request = self.pb.ImageStatusRequest(image=self.pb.ImageSpec(image=image), verbose=True)
        info = self.images.ImageStatus(request, timeout=self.timeout).info.get("image-cri-shim")
        return str(json.loads(info)["pulledAs"]) if info else None

    def remove(self, image: str, *, timeout: float | None = None) -> None:
        self.images.RemoveImage(
            self.pb.RemoveImageRequest(image=self.pb.ImageSpec(image=image)), timeout=timeout or self.timeout
        )

    def list(self, filter: str | None = None, *, timeout: float | None = None) -> builtins.list[Image]:
        """ListImages, optionally filtered by an image name as kubelet and crictl send it."""
        request = self.pb.ListImagesRequest()
        if filter is not None:
            request.filter.CopyFrom(self.pb.ImageFilter(image=self.pb.ImageSpec(image=filter)))
        response = self.images.ListImages(request, timeout=timeout or self.timeout)
        return list(response.images)

    def fs_info(self, *, timeout: float | None = None) -> builtins.list[FilesystemUsage]:
        """ImageFsInfo's image_filesystems."""
        response = self.images.ImageFsInfo(self.pb.ImageFsInfoRequest(), timeout=timeout or self.timeout)
        return list(response.image_filesystems)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> CriClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CriClientFactory:
    """Opens CRI clients for one test and closes their channels afterwards."""

    def __init__(self, default_socket: Callable[[], Path]) -> None:
        self._default_socket = default_socket
        self.clients: builtins.list[CriClient] = []

    def __call__(
        self, socket_path: Path | str | None = None, version: CriVersion = "v1", **kwargs: Any
    ) -> CriClient:
        """A client for `socket_path` (default: the test containerd's socket)."""
        client = CriClient(
            socket_path if socket_path is not None else self._default_socket(), version, **kwargs
        )
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()

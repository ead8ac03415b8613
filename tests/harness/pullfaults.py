"""Make a real container runtime fail a PullImage in each way a registry or the node can.

Each fault sets up what it needs (a docker-registry, an image, a fault proxy in front), pulls
straight from the runtime (no shim) and returns the gRPC status name and message it answered
with: the words the shim's failure classifier has to understand, from the runtime itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from .cri import CriClient
from .faultproxy import FaultProxy
from .images import OCI_MANIFEST, ImageBuilder, OciLayout, foreign_platform, push
from .processes import HarnessError
from .registry import Registry, RegistryFactory, free_port

MIB = 1 << 20


def repo() -> str:
    return f"library/f{uuid.uuid4().hex[:10]}"


def blob_path(registry: Registry, digest: str) -> Path:
    """Where docker-registry's filesystem storage keeps the bytes of `digest`."""
    hexdigest = digest.split(":", 1)[1]
    return registry.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"


def layer_digest(registry: Registry, name: str, tag: str) -> str:
    """The digest of the first layer of a single-platform image in `registry`."""
    _, _, body = registry.request("GET", f"/v2/{name}/manifests/{tag}", accept=OCI_MANIFEST)
    digest: str = json.loads(body)["layers"][0]["digest"]
    return digest


def delete_layer(registry: Registry, name: str, tag: str) -> str:
    """Make `registry` a partial mirror of the image: it keeps the manifest, loses a layer blob."""
    digest = layer_digest(registry, name, tag)
    shutil.rmtree(blob_path(registry, digest).parent)
    return digest


def big_content(size: int) -> str:
    """Image content that compresses little: `size` hex digits, a layer of about `size / 2` bytes."""
    return os.urandom(size // 2).hex()


class PullFaults:
    """The faults, by name; `provoke(name)` returns (status name, message)."""

    def __init__(
        self,
        client: CriClient,
        registries: RegistryFactory,
        images: ImageBuilder,
        workdir: Path,
        small_disk: CriClient | None = None,
    ) -> None:
        """`small_disk`: a client of the same runtime with a root of a few MiB (`disk-full`)."""
        self.client = client
        self.small_disk = small_disk
        self.registries = registries
        self.images = images
        self.workdir = workdir
        self._registry: Registry | None = None

    @property
    def registry(self) -> Registry:
        if self._registry is None or not self._registry.running:
            self._registry = self.registries()
        return self._registry

    def pull(
        self, image: str, timeout: float = 60.0, client: CriClient | None = None, **credentials: str
    ) -> tuple[str, str]:
        try:
            (client or self.client).pull(image, timeout=timeout, **credentials)
        except grpc.RpcError as err:
            return err.code().name, err.details() or ""
        return "OK", ""

    def provoke(self, fault: str) -> tuple[str, str]:
        kind, _, arg = fault.partition(":")
        method: Callable[..., tuple[str, str]] = getattr(self, "_" + kind.replace("-", "_"))
        return method(arg) if arg else method()

    def _manifest_missing(self) -> tuple[str, str]:
        return self.pull(f"{self.registry.host}/{repo()}:missing")

    def _blob_missing(self) -> tuple[str, str]:
        name = repo()
        self.images(self.registry, name, "1")
        delete_layer(self.registry, name, "1")
        return self.pull(f"{self.registry.host}/{name}:1")

    def _refused(self) -> tuple[str, str]:
        return self.pull(f"127.0.0.1:{free_port()}/{repo()}:1")

    def _invalid_reference(self) -> tuple[str, str]:
        return self.pull("UPPER/Case:1")

    @contextmanager
    def _proxy(self, registry: Registry | None = None) -> Iterator[FaultProxy]:
        proxy = FaultProxy((registry or self.registry).port)
        try:
            yield proxy
        finally:
            proxy.stop()

    def _status(self, spec: str) -> tuple[str, str]:
        """`status:blob-500`, `status:manifest-429`: the registry answers that status there.
        A 429 says `Retry-After: 1`, as throttling registries do: CRI-O retries a 429 five times,
        waiting what it says (else 2 s, doubled each time: a minute in all) before it answers."""
        where, _, status = spec.partition("-")
        name = repo()
        self.images(self.registry, name, "1")
        with self._proxy() as proxy:
            proxy.fault.status = int(status)
            proxy.fault.retry_after = "1" if status == "429" else None
            proxy.fault.marker = "/blobs/" if where == "blob" else "/manifests/"
            return self.pull(f"{proxy.host}/{name}:1")

    def _denied(self) -> tuple[str, str]:
        """A registry with htpasswd auth and no credentials sent."""
        private = self.registries(auth=True)
        name = repo()
        self.images(private, name, "1")
        return self.pull(f"{private.host}/{name}:1")

    def _killed_mid_pull(self) -> tuple[str, str]:
        """The registry is SIGKILLed 1 s into a pull of an 8 MiB layer at 2 MiB/s (more than the
        kernel's socket buffers hold: what a killed process had sent still arrives). Docker
        Engine tries a cut layer again 5 times, waiting 5, 10, 15 and 20 s, before it answers."""
        registry = self.registries()
        name = repo()
        self.images(registry, name, "1", content=big_content(16 * MIB))
        with self._proxy(registry) as proxy:
            proxy.fault.rate = 2 * MIB
            killer = threading.Timer(1.0, registry.kill)
            killer.start()
            try:
                return self.pull(f"{proxy.host}/{name}:1", timeout=180.0)
            finally:
                killer.cancel()

    def _deadline(self) -> tuple[str, str]:
        """The caller's deadline ends during a rate-limited pull."""
        name = repo()
        self.images(self.registry, name, "1", content=big_content(4 * MIB))
        with self._proxy() as proxy:
            proxy.fault.rate = MIB
            return self.pull(f"{proxy.host}/{name}:1", timeout=1.0)

    def _disk_full(self) -> tuple[str, str]:
        """An 8 MiB layer into a runtime whose root is a tmpfs of a few MiB."""
        if self.small_disk is None:
            raise HarnessError("disk-full needs a runtime with a small root (PullFaults(small_disk=...))")
        name = repo()
        self.images(self.registry, name, "1", content=big_content(16 * MIB))
        return self.pull(f"{self.registry.host}/{name}:1", client=self.small_disk)

    def _platform_missing(self) -> tuple[str, str]:
        name = repo()
        self.images(self.registry, name, "1", platforms=[foreign_platform()])
        return self.pull(f"{self.registry.host}/{name}:1")

    def _digest_mismatch(self) -> tuple[str, str]:
        """The registry serves other bytes (of the same length) for a layer than its digest says."""
        name = repo()
        self.images(self.registry, name, "1")
        path = blob_path(self.registry, layer_digest(self.registry, name, "1"))
        path.write_bytes(bytes(len(path.read_bytes())))
        return self.pull(f"{self.registry.host}/{name}:1")

    def _unpack(self) -> tuple[str, str]:
        """A layer that is stored and served correctly, but is not a tar archive."""
        name = repo()
        push(
            corrupt_layer(self.images.layout(uuid.uuid4().hex)), self.registry, name, "1", tmpdir=self.workdir
        )
        return self.pull(f"{self.registry.host}/{name}:1")


def corrupt_layer(layout: OciLayout) -> OciLayout:
    """`layout` with its layer replaced by bytes that are no gzip tar (digests kept consistent)."""
    blobs = layout.path / "blobs" / "sha256"
    manifest = json.loads((blobs / layout.digest.split(":", 1)[1]).read_bytes())
    junk = b"not a tar archive\n" * 64
    (blobs / hashlib.sha256(junk).hexdigest()).write_bytes(junk)
    manifest["layers"][0].update(digest=f"sha256:{hashlib.sha256(junk).hexdigest()}", size=len(junk))
    body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(body).hexdigest()
    (blobs / digest).write_bytes(body)
    index = json.loads((layout.path / "index.json").read_bytes())
    index["manifests"][0].update(digest=f"sha256:{digest}", size=len(body))
    (layout.path / "index.json").write_text(json.dumps(index))
    return OciLayout(layout.path, f"sha256:{digest}", layout.media_type)

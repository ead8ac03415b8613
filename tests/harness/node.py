"""A node's real parts, assembled in one place: containerd, registries, images, shims, CRI clients.

`Stack` is what a scenario holds. The `stack` fixture (conftest) builds one from the session's
parts with `stack_of`, `test_worker_scenario` the same way over another suite's containerd, and
the tools (`make bench`, `make soak`) with `Stack.started`, which starts every part itself and
the stand-in API server, each stopped through an ExitStack. Repositories from `repo()` are
unique, so a session's containerd never answers one test with another's image.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .containerd import CertsDir, Containerd
from .cri import CriClient, CriClientFactory, CriVersion
from .images import ImageBuilder
from .kubeapi import KubeApi
from .processes import HarnessError, ShimFactory, ShimProcess
from .registry import CertAuthority, Registry, RegistryFactory


def repo() -> str:
    return f"library/t{uuid.uuid4().hex[:10]}"


def entry(registry: Registry | str, priority: int | None = None, **extra: Any) -> dict[str, Any]:
    """A `registries[]` entry for a harness registry (its credentials and CA included) or a URL."""
    if isinstance(registry, str):
        item: dict[str, Any] = {"address": registry}
    else:
        item = {"address": registry.url}
        if registry.auth:
            item["auth"] = registry.auth
        if registry.ca_path:
            item["ca"] = str(registry.ca_path)
    if priority is not None:
        item["priority"] = priority
    item.update(extra)
    return item


@dataclass
class Shim:
    """A started worker plus what tests need around it."""

    process: ShimProcess
    socket: Path

    def log(self) -> str:
        return self.process.log_text()


@dataclass
class Stack:
    """The real parts one test uses: containerd, registries, images, shims, CRI clients."""

    containerd: Containerd
    registries: RegistryFactory
    images: ImageBuilder
    shims: ShimFactory
    cri: CriClientFactory
    dir: Path  # short: unix socket paths are limited to 107 bytes
    api: KubeApi | None = None  # the stand-in API server, when the stack has one

    @classmethod
    def started(cls, work: Path, resources: ExitStack) -> Stack:
        """Every part started here, outside pytest, with the stand-in API server; each is
        stopped through `resources`. `work` holds their files (and must be short)."""
        certs = CertsDir(work / "certs.d")
        containerd = Containerd(work / "containerd", certs)
        containerd.start()
        resources.callback(containerd.stop)
        registries = RegistryFactory(work / "registries", CertAuthority.create(work / "ca"), certs)
        resources.callback(registries.close)
        api = KubeApi()
        api.start()
        resources.callback(api.close)
        shims = ShimFactory()
        resources.callback(shims.close)
        cri = CriClientFactory(lambda: containerd.socket)
        resources.callback(cri.close)
        return cls(containerd, registries, ImageBuilder(work / "images"), shims, cri, work, api)

    def cluster(self) -> KubeApi:
        """The stand-in API server of a stack that has one."""
        if self.api is None:
            raise HarnessError("this stack has no API server (Stack.started makes one)")
        return self.api

    def direct(self, version: CriVersion = "v1") -> CriClient:
        """A client of containerd itself, bypassing the shim."""
        return self.cri(self.containerd.socket, version)

    def start(
        self, registries: Sequence[dict[str, Any]], address: dict[str, Any] | None = None, **settings: Any
    ) -> Shim:
        """A worker in front of the test containerd."""
        return self.start_on(self.containerd.address, registries, address, **settings)

    def start_on(
        self,
        cri: str,
        registries: Sequence[dict[str, Any]],
        address: dict[str, Any] | None = None,
        **settings: Any,
    ) -> Shim:
        """A worker in front of the runtime at `cri`, with debug logging unless told otherwise."""
        config: dict[str, Any] = {
            "shim": str(self.dir / "shim.sock"),
            "cri": cri,
            "stateDir": str(self.dir / "state"),
            "registries": list(registries),
            "debug": True,
            **settings,
        }
        if address is not None:
            config["address"] = address["address"]
            for key in ("auth", "ca", "insecureSkipVerify"):
                if key in address:
                    config[key] = address[key]
            if "priority" in address:
                config["offlinePriority"] = address["priority"]
        path = self.dir / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        socket = self.dir / "shim.sock"
        process = self.shims(path, socket, log_path=self.dir / f"shim-{uuid.uuid4().hex[:6]}.log")
        return Shim(process, socket)


@contextmanager
def stack_of(
    containerd: Containerd,
    registries: RegistryFactory,
    images: ImageBuilder,
    shims: ShimFactory,
    cri: CriClientFactory,
) -> Iterator[Stack]:
    """A Stack over parts that already run, with a short directory of its own (removed after)."""
    directory = Path(tempfile.mkdtemp(prefix="shim-"))
    try:
        yield Stack(containerd, registries, images, shims, cri, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)

"""Real pods for tests: busybox images, a CNI bridge network private to one containerd, and CRI
sandbox and container configs.

Images are built from Debian's `busybox-static` (/bin/busybox and its applet links in one layer);
the pause image is the same busybox sleeping. The network is the `bridge` plugin with
`host-local` addresses (Debian's `containernetworking-plugins`), copied into the containerd's
private CNI directories, on a bridge of its own that `close` deletes again.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .containerd import Containerd
from .cri import CriClient
from .images import LayoutWriter, OciLayout, node_platform, push
from .processes import HarnessError
from .registry import CertAuthority, RegistryFactory

BUSYBOX = Path("/bin/busybox")
CNI_PLUGINS = Path("/usr/lib/cni")
APPLETS = ("sh", "echo", "sleep", "cat", "true")


def busybox_layout(path: Path, command: list[str], label: str = "") -> OciLayout:
    """An image of busybox whose default command is `command`; a different `label` (in its
    environment) makes a different image."""
    if not BUSYBOX.exists():
        raise HarnessError(f"{BUSYBOX} is missing (Debian: apt-get install busybox-static)")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("bin", "tmp", "proc", "sys", "dev", "etc"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        data = BUSYBOX.read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode, info.mtime = len(data), 0o755, 0
        tar.addfile(info, io.BytesIO(data))
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname, link.mode, link.mtime = tarfile.SYMTYPE, "busybox", 0o777, 0
            tar.addfile(link)
    writer = LayoutWriter(path)
    settings = {"Cmd": command, "Env": ["PATH=/bin", f"IMAGE_LABEL={label}"]}
    return writer.finish(writer.image(buffer.getvalue(), node_platform(), settings))


class PodNetwork:
    """A bridge network for one containerd: plugins and config in its private CNI directories."""

    def __init__(self, containerd: Containerd, subnet: str) -> None:
        self.bridge = f"cs{uuid.uuid4().hex[:8]}"
        bin_dir, conf_dir = containerd.workdir / "cni/bin", containerd.workdir / "cni/net.d"
        bin_dir.mkdir(parents=True, exist_ok=True)
        conf_dir.mkdir(parents=True, exist_ok=True)
        for plugin in ("bridge", "host-local", "loopback"):
            source = CNI_PLUGINS / plugin
            if not source.exists():
                raise HarnessError(f"{source} is missing (apt-get install containernetworking-plugins)")
            shutil.copy2(source, bin_dir / plugin)
        conflist = {
            "cniVersion": "1.0.0",
            "name": self.bridge,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": subnet}]],
                        "dataDir": str(containerd.workdir / "cni/ipam"),
                    },
                }
            ],
        }
        (conf_dir / "10-test.conflist").write_text(json.dumps(conflist))

    def close(self) -> None:
        """Delete the bridge the plugin made on the host (pods must be gone already)."""
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=10, check=False)


def sandbox_config(client: CriClient, name: str) -> Any:
    pb = client.pb
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, uid=uuid.uuid4().hex, namespace="default", attempt=0),
        hostname=name,
        linux=pb.LinuxPodSandboxConfig(),
    )


def container_config(client: CriClient, name: str, image: str, command: list[str]) -> Any:
    pb = client.pb
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name, attempt=0),
        image=pb.ImageSpec(image=image),
        command=command,
        linux=pb.LinuxContainerConfig(),
    )


def remove_pods(client: CriClient) -> None:
    """Stop and remove every pod sandbox (and so its containers and their runc shims)."""
    pb, runtime = client.pb, client.runtime
    for sandbox in runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=30).items:
        runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sandbox.id), timeout=60)
        runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox.id), timeout=60)


def with_sandbox_image(work: Path, start: Callable[[str], Containerd]) -> Containerd:
    """A containerd that holds its sandbox image from the start, as a node with its pause image
    preloaded: the shim's sandbox keeper finds it there and does nothing, so tests of other things
    see no pull of its. `start(reference)` makes and starts the containerd with that sandbox image.
    (The keeper's own tests run containerd at its default: tests/integration/test_sandbox_image.py.)"""
    registries = RegistryFactory(work / "registries", CertAuthority.create(work / "ca"))
    try:
        layout = busybox_layout(work / "pause", ["/bin/sleep", "2147483647"])
        reference = push(layout, registries(), "pause", "1").reference
        daemon = start(reference)
        with CriClient(daemon.socket) as direct:
            direct.pull(reference)  # the registry goes: the image stays
    finally:
        registries.close()
    return daemon

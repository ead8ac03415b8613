"""The offline bundle on an older node: a Debian 11 userland (glibc 2.31, its own libstdc++ and
no Python), entered with chroot, with the real containerd of the host reachable through its
socket. The bundle's floor is glibc 2.17 (tests/integration/test_dist.py checks every ELF file); this runs
it where the build machine's glibc 2.36 is not there to hide a wrong symbol version.

The root is made once by debootstrap and cached (tests/harness/rootfs.py); each test writes to
an overlay of its own, so the cached root stays as debootstrap made it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from image_cri_shim import __version__
from tests.harness import Containerd, ImageBuilder, RegistryFactory
from tests.harness.cri import CriClient
from tests.harness.dist import NodeRoot, maps
from tests.harness.processes import wait_for
from tests.harness.rootfs import debian_root, glibc_version
from tests.harness.service import Service, alive, base_config

pytestmark = pytest.mark.timeout(3600)  # the first test may wait for the build and debootstrap


@pytest.fixture(scope="module")
def bullseye() -> Path:
    root = debian_root("bullseye", ["ca-certificates"])
    assert glibc_version(root) == "2.31"
    return root


def test_the_bundle_installs_and_serves_on_debian_11(
    bullseye: Path,
    extracted: Path,
    containerd: Containerd,
    registry_factory: RegistryFactory,
    image_factory: ImageBuilder,
    service_factory: Callable[..., Service],
    short_dir: Path,
    tmp_path: Path,
) -> None:
    binds = [extracted, short_dir, containerd.socket]

    node = NodeRoot(bullseye, binds, tmp_path / "layer")
    inside = node.argv

    def run(*argv: str | Path) -> str:
        return node.run(*argv, timeout=120)

    assert (
        run(extracted / "image-cri-shim" / "image-cri-shim", "--version") == f"image-cri-shim {__version__}\n"
    )
    said = run("sh", extracted / "install.sh", "--prefix", "/")
    assert "Installed /usr/local/bin/image-cri-shim" in said, said
    program = "/usr/local/bin/image-cri-shim"
    assert (tmp_path / "layer/upper/usr/local/lib/image-cri-shim" / __version__ / "image-cri-shim").is_file()
    assert not (bullseye / "usr/local/bin/image-cri-shim").exists(), "the cached root was written to"

    registry = registry_factory()
    image_factory(registry, "library/oldnode", "1")
    config = short_dir / "dry-run.yaml"
    config.write_text(yaml.safe_dump(base_config(containerd, registry)))
    dry = run(program, "-f", config, "--dry-run")
    assert "containerd" in dry, dry

    started = time.monotonic()
    service = service_factory(base_config(containerd, registry), program=inside(program))
    print(f"bundle on Debian 11: exec to READY=1 in {(time.monotonic() - started) * 1000:.0f} ms")
    titles = ["image-cri-shim: syncer", "image-cri-shim: worker gen=1"]

    def titled() -> dict[int, str] | None:
        found = service.children()
        return found if sorted(found.values()) == titles else None

    children = wait_for(titled, 10, f"children titled {titles}")
    worker = next(pid for pid, name in children.items() if "worker" in name)
    # The worker runs on Debian 11's glibc and libstdc++ (grpc is loaded), not the host's.
    assert {"libc-2.31.so", "libstdc++.so.6.0.28"} <= maps(worker), sorted(maps(worker))

    with CriClient(service.socket) as client:
        client.pull("oldnode:1")
    with CriClient(containerd.socket) as direct:  # under the caller's name, from the registry
        assert direct.status("docker.io/library/oldnode:1") is not None, "containerd has no such image"
    assert f"target={registry.host}/library/oldnode:1" in service.process.log_text()

    ready = service.reload_and_wait(lambda: os.kill(service.process.pid, signal.SIGHUP))
    assert "serving gen=2" in ready["STATUS"], ready

    children = service.children()
    service.process.signal(signal.SIGTERM)
    assert service.process.stop(timeout=30) == 0
    assert not any(alive(pid) for pid in children), "a child outlived the master"

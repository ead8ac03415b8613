"""The arm64 bundle, cross-built on this x86_64 machine by `make dist ARCH=arm64`, and run where
an arm64 node's programs are: an arm64 Debian 11 userland (glibc 2.31, its libstdc++, no
Python) under qemu-user, in front of an arm64 containerd (Debian 12's, 1.6) under qemu-user too.

Bullseye is the old node, as in test_dist_oldnode.py; its own containerd, 1.4, predates the
registry `config_path` (1.5) the harness configures registries with, so the containerd is
bookworm's, run in a root of its own, and the shim reaches it through its socket.

Runs when this machine can run arm64 programs: `make test` installs qemu-user-static, and this
module registers it with binfmt_misc (as root). Where that cannot be done the tests are skipped
with the reason, in the summary `make test` prints.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from image_cri_shim import __version__
from tests.harness import CertsDir, Containerd, ImageBuilder, RegistryFactory
from tests.harness.containerd import ROOT_PACKAGES
from tests.harness.cri import CriClient
from tests.harness.dist import (
    ELF_MACHINES,
    NodeRoot,
    assert_manylinux2014,
    assert_sums_cover,
    built,
    elf_files,
    elf_machine,
    emulation_problem,
    glibc_floor,
    maps,
    unpacked,
)
from tests.harness.images import Platform
from tests.harness.processes import wait_for
from tests.harness.rootfs import debian_root, glibc_version
from tests.harness.service import Service, alive, base_config, children

ARCH = "arm64"
# The arm64 userlands: the old node, and the one whose containerd serves it.
NODE = ("bullseye", ("ca-certificates",))
RUNTIME = ("bookworm", ROOT_PACKAGES)
pytestmark = pytest.mark.timeout(3600)  # the first test may wait for the toolchain, the roots and the build


@pytest.fixture(scope="module")
def arm64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The arm64 bundle, unpacked as an operator has it."""
    problem = emulation_problem(ARCH)
    if problem:
        pytest.skip(f"NOT RUN: the arm64 bundle, this machine cannot run arm64 programs: {problem}")
    # debootstrap under emulation is slow and mostly one core: the roots are made meanwhile
    with ThreadPoolExecutor(2) as pool:
        roots = [pool.submit(debian_root, suite, packages, ARCH) for suite, packages in (NODE, RUNTIME)]
        built(ARCH)
        for root in roots:
            root.result()
    return unpacked(ARCH, tmp_path_factory.mktemp("arm64-node"))


@pytest.fixture(scope="module")
def bullseye(arm64: Path) -> Path:
    root = debian_root(*NODE, arch=ARCH)
    assert glibc_version(root) == "2.31"
    return root


@pytest.fixture(scope="module")
def containerd_arm64(
    arm64: Path, tmp_path_factory: pytest.TempPathFactory, certs_d: CertsDir
) -> Iterator[Containerd]:
    root = debian_root(*RUNTIME, arch=ARCH)
    daemon = Containerd(tmp_path_factory.mktemp("containerd-arm64"), certs_d, root=root)
    daemon.start(timeout=120)
    yield daemon
    daemon.stop()


def test_the_arm64_bundle_is_the_amd64_one_for_arm64(arm64: Path, extracted: Path) -> None:
    """The same files (the extension modules named for their architecture), the same packages
    and versions in bundled.txt, every ELF file for aarch64, at most the manylinux2014 floor."""

    def paths(bundle: Path) -> set[str]:
        found = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()}
        return {re.sub(r"x86_64|aarch64", "ARCH", path) for path in found}

    assert paths(arm64) == paths(extracted)
    for name in ("install.sh", "image-cri-shim.service", "config.example.yaml"):
        assert (arm64 / name).read_bytes() == (extracted / name).read_bytes(), name
    assert_sums_cover(arm64)

    def packages(bundle: Path) -> list[str]:
        lines = (bundle / "bundled.txt").read_text().splitlines()
        return [line for line in lines if not line.startswith("#")]

    assert packages(arm64) == packages(extracted)
    header = (arm64 / "bundled.txt").read_text().splitlines()
    assert header[0].startswith(f"# image-cri-shim {__version__} for linux/arm64:"), header[0]
    assert "for aarch64-linux-gnu.2.17" in header[1], header[1]
    floor = glibc_floor(arm64)
    assert f"needs glibc >= {floor} on the node" in header[1] and floor <= "2.17", (header[1], floor)

    files = elf_files(arm64 / "image-cri-shim")
    wrong = [str(p.relative_to(arm64)) for p in files if elf_machine(p) != ELF_MACHINES["aarch64"]]
    assert not wrong, f"not aarch64: {wrong}"
    assert_manylinux2014(arm64)


def test_the_arm64_bundle_installs_and_serves_on_emulated_arm64_debian_11(
    arm64: Path,
    bullseye: Path,
    containerd_arm64: Containerd,
    registry_factory: RegistryFactory,
    image_factory: ImageBuilder,
    service_factory: Callable[..., Service],
    short_dir: Path,
    tmp_path: Path,
) -> None:
    containerd = containerd_arm64
    assert containerd.major == 1 and containerd.release.startswith("1.6."), containerd.release
    binds = [arm64, short_dir, containerd.socket]

    node = NodeRoot(bullseye, binds, tmp_path / "layer")
    inside = node.argv

    def run(*argv: str | Path) -> str:
        return node.run(*argv, timeout=300)

    assert run("uname", "-m") == "aarch64\n"
    assert run(arm64 / "image-cri-shim" / "image-cri-shim", "--version") == f"image-cri-shim {__version__}\n"
    said = run("sh", arm64 / "install.sh", "--prefix", "/")
    assert "Installed /usr/local/bin/image-cri-shim" in said, said
    program = "/usr/local/bin/image-cri-shim"
    installed = f"/usr/local/lib/image-cri-shim/{__version__}/image-cri-shim"
    assert run(program, "selfcheck").startswith("ok: ")

    registry = registry_factory()
    image_factory(registry, "library/arm", "1", platforms=[Platform("linux", "arm64")])
    config = short_dir / "dry-run.yaml"
    config.write_text(yaml.safe_dump(base_config(containerd, registry)))
    assert "containerd" in run(program, "-f", config, "--dry-run")

    started = time.monotonic()
    service = service_factory(base_config(containerd, registry), program=inside(program), wait_ready=False)
    service.notify.wait("READY", timeout=180)
    print(f"arm64 bundle under emulation: exec to READY=1 in {(time.monotonic() - started) * 1000:.0f} ms")

    # Under qemu-user the titles are the guest's: /proc shows qemu's command line, which names
    # the program it runs and the arguments the master gave it.
    def roles() -> dict[int, list[str]] | None:
        found = {pid: command(pid) for pid in children(service.process.pid)}
        kinds = sorted(next((a for a in argv if a in ("worker", "syncer")), "?") for argv in found.values())
        return found if kinds == ["syncer", "worker"] else None

    found = wait_for(roles, 60, "a worker and a syncer under the master")
    for argv in [command(service.process.pid), *found.values()]:
        assert installed in argv, argv  # each one the frozen program itself, re-executed
    worker = next(pid for pid, argv in found.items() if "worker" in argv)
    # qemu maps the guest's files: the worker runs on arm64 Debian 11's glibc and libstdc++
    assert {"libc-2.31.so", "libstdc++.so.6.0.28"} <= maps(worker), sorted(maps(worker))

    with CriClient(service.socket, timeout=120) as client:
        client.pull("arm:1")
    with CriClient(containerd.socket, timeout=60) as direct:  # under the caller's name, from the registry
        assert direct.status("docker.io/library/arm:1") is not None, "containerd has no such image"
    assert f"target={registry.host}/library/arm:1" in service.process.log_text()

    ready = service.reload_and_wait(lambda: os.kill(service.process.pid, signal.SIGHUP), timeout=120)
    assert "serving gen=2" in ready["STATUS"], ready

    kids = list(children(service.process.pid))
    service.process.signal(signal.SIGTERM)
    assert service.process.stop(timeout=60) == 0
    assert not any(alive(pid) for pid in kids), "a child outlived the master"


def command(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().decode(errors="replace").split("\0")

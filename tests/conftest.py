"""Fixtures that give tests real parts: containerd, docker-registry, OCI images, CRI clients, shims.

A part that cannot start fails the test with the reason and its log tail; nothing is skipped.
"""

from __future__ import annotations

import shutil
import tempfile
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.harness import (
    Blackhole,
    CertAuthority,
    CertsDir,
    Containerd,
    CriClientFactory,
    ImageBuilder,
    RegistryFactory,
    ShimFactory,
    evidence,
)
from tests.harness.containerd import ROOT_PACKAGES, SMALL_DISK
from tests.harness.dist import bundle, extracted
from tests.harness.node import Stack, stack_of
from tests.harness.pods import with_sandbox_image
from tests.harness.rootfs import debian_root
from tests.harness.service import PROGRAM, Service, start_service

__all__ = ["bundle", "extracted"]  # fixtures of the dist tests, defined with the bundle they build

# Tests using any of these fixtures are marked `integration` (deselect with -m "not integration").
REAL_PARTS = {
    "containerd", "containerd_of", "small_disk_of", "registry_factory", "image_factory", "cri_client",
    "shim_factory", "blackhole",
}  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: uses real parts (containerd, docker-registry, skopeo, child processes)"
    )
    config.addinivalue_line(
        "markers", "reliability: records evidence for docs/reliability.md (set automatically, see records)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if REAL_PARTS.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        function = getattr(item, "function", None)
        if isinstance(function, types.FunctionType) and records(
            function.__code__, function.__globals__, set()
        ):
            item.add_marker(pytest.mark.reliability)


def records(code: types.CodeType, namespace: dict[str, Any], seen: set[types.CodeType]) -> bool:
    """Whether `code` calls `evidence.record`: itself, in a nested function, through a function of
    its module, or through a module that records (`tools.soak`). Marking tests this way means a
    scenario is selected by `make reliability` as soon as it records, with nothing to remember."""
    if code in seen:
        return False
    seen.add(code)
    for name in code.co_names:
        target = namespace.get(name)
        if target is evidence.record:
            return True
        if isinstance(target, types.ModuleType) and any(v is evidence.record for v in vars(target).values()):
            return True
        if (
            isinstance(target, types.FunctionType)
            and target.__globals__ is namespace
            and records(target.__code__, namespace, seen)
        ):
            return True
    return any(isinstance(c, types.CodeType) and records(c, namespace, seen) for c in code.co_consts)


@pytest.fixture(scope="session")
def certs_d(tmp_path_factory: pytest.TempPathFactory) -> CertsDir:
    """containerd's registry config_path; registry fixtures write hosts.toml files into it."""
    return CertsDir(tmp_path_factory.mktemp("certs.d"))


@pytest.fixture(scope="session")
def containerd(tmp_path_factory: pytest.TempPathFactory, certs_d: CertsDir) -> Iterator[Containerd]:
    """One private containerd for the session (image service only; CNI is not configured), holding
    its sandbox image."""
    work = tmp_path_factory.mktemp("containerd")
    daemon = with_sandbox_image(
        work / "sandbox", lambda pause: started(Containerd(work, certs_d, sandbox_image=pause))
    )
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def containerd_of(
    tmp_path_factory: pytest.TempPathFactory, certs_d: CertsDir
) -> Iterator[Callable[[str], Containerd]]:
    """`containerd_of("trixie")`: that Debian suite's containerd, chrooted, one per suite for the
    session (the root is built on first use, then cached), holding its sandbox image; every one is
    stopped at the end."""
    daemons: dict[str, Containerd] = {}

    def get(suite: str) -> Containerd:
        if suite not in daemons:
            root = debian_root(suite, ROOT_PACKAGES)
            work = tmp_path_factory.mktemp(f"containerd-{suite}")
            daemons[suite] = with_sandbox_image(
                work / "sandbox",
                lambda pause: started(Containerd(work, certs_d, root=root, sandbox_image=pause)),
            )
        return daemons[suite]

    yield get
    for daemon in daemons.values():
        daemon.stop()


def started(daemon: Containerd) -> Containerd:
    daemon.start()
    return daemon


@pytest.fixture(scope="session")
def small_disk_of(
    containerd: Containerd,
    containerd_of: Callable[[str], Containerd],
    tmp_path_factory: pytest.TempPathFactory,
    certs_d: CertsDir,
) -> Iterator[Callable[[str], Containerd]]:
    """`small_disk_of("host")` (or a suite of SUITES): that containerd with a root of SMALL_DISK,
    for "disk full" tests; started on first use, stopped at the end."""
    daemons: dict[str, Containerd] = {}

    def get(suite: str) -> Containerd:
        if suite not in daemons:
            root = None if suite == "host" else containerd_of(suite).root
            work = tmp_path_factory.mktemp(f"small-{suite}")
            daemons[suite] = Containerd(work, certs_d, root=root, disk=SMALL_DISK)
            daemons[suite].start()
        return daemons[suite]

    yield get
    for daemon in daemons.values():
        daemon.stop()


@pytest.fixture
def own_containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    """A containerd of the test's own, for tests that stop, kill or freeze it."""
    daemon = Containerd(tmp_path_factory.mktemp("restarted-containerd"))
    daemon.start()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def cert_authority(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    return CertAuthority.create(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def registry_factory(
    tmp_path: Path, cert_authority: CertAuthority, certs_d: CertsDir
) -> Iterator[RegistryFactory]:
    """`registry_factory(auth=False, tls=False, trusted=True, port=None) -> Registry`, all stopped after."""
    factory = RegistryFactory(tmp_path / "registries", cert_authority, certs_d)
    yield factory
    factory.close()


@pytest.fixture(scope="session")
def image_builder(tmp_path_factory: pytest.TempPathFactory) -> ImageBuilder:
    return ImageBuilder(tmp_path_factory.mktemp("images"))


@pytest.fixture
def image_factory(image_builder: ImageBuilder) -> ImageBuilder:
    """`image_factory(registry, repo, tag, content=None, platforms=None) -> PushedImage` (layouts cached)."""
    return image_builder


@pytest.fixture
def cri_client(request: pytest.FixtureRequest) -> Iterator[CriClientFactory]:
    """`cri_client(socket_path=None, version="v1") -> CriClient`; default socket: the test containerd."""

    def containerd_socket() -> Path:
        daemon: Containerd = request.getfixturevalue("containerd")
        return daemon.socket

    factory = CriClientFactory(containerd_socket)
    yield factory
    factory.close()


@pytest.fixture
def shim_factory() -> Iterator[ShimFactory]:
    """`shim_factory(config_path, socket_path) -> ShimProcess`, stopped after the test."""
    factory = ShimFactory()
    yield factory
    factory.close()
    # Whatever a test did, the test registries' password never reached a shim's log.
    for shim in factory.shims:
        log = shim.log_text()
        for secret in (RegistryFactory.PASSWORD, RegistryFactory.PASSWORD.split(":", 1)[1]):
            assert secret not in log, f"a registry password reached the log of shim pid {shim.pid}"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="t-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    with Blackhole() as hole:
        yield hole


@pytest.fixture
def stack(
    containerd: Containerd,
    registry_factory: RegistryFactory,
    image_factory: ImageBuilder,
    shim_factory: ShimFactory,
    cri_client: CriClientFactory,
) -> Iterator[Stack]:
    """The real parts of one shim test, with a short directory for its sockets."""
    with stack_of(containerd, registry_factory, image_factory, shim_factory, cri_client) as built:
        yield built


@pytest.fixture
def service_factory(short_dir: Path) -> Iterator[Callable[..., Service]]:
    """`service_factory(config, env=None, wait_ready=True, program=PROGRAM) -> Service`: the master as
    systemd runs it, in `short_dir`; every one is stopped after the test."""
    started: list[Service] = []

    def start(
        config: dict[str, Any],
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
        program: Sequence[str] = PROGRAM,
    ) -> Service:
        service = start_service(short_dir, config, env=env, program=program, wait_ready=False)
        started.append(service)
        if wait_ready:
            service.notify.wait("READY", timeout=10)
        return service

    yield start
    for service in started:
        service.stop(timeout=20)
        print(service.process.describe(lines=60))

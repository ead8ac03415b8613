"""Each pull failure the classifier knows, provoked against real containerd (this machine's 1.6,
Debian's 1.7 and 2.x), and against real CRI-O when IMAGE_CRI_SHIM_CRIO names its binary: what the
runtime answers is classified as the fault's cause. The recorded answers of every runtime and
version are checked without sockets in tests/unit/test_failures.py."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from image_cri_shim.workers.pull.failures import Cause, classify
from tests.harness import Containerd, CriClientFactory, ImageBuilder, RegistryFactory
from tests.harness.containerd import SUITES
from tests.harness.crio import Crio, crio_binary, crio_pair
from tests.harness.pullfaults import PullFaults
from tests.harness.pullrecord import FAULTS

RUNTIMES = ("host", *SUITES)  # this machine's containerd (1.6), and Debian's 1.7 and 2.x


@pytest.mark.parametrize("suite", RUNTIMES)
@pytest.mark.parametrize(("fault", "cause"), FAULTS.items(), ids=list(FAULTS))
def test_provoked_failures_are_classified(
    fault: str,
    cause: Cause,
    suite: str,
    containerd: Containerd,
    containerd_of: Callable[[str], Containerd],
    small_disk_of: Callable[[str], Containerd],
    cri_client: CriClientFactory,
    registry_factory: RegistryFactory,
    image_factory: ImageBuilder,
    tmp_path: Path,
) -> None:
    daemon, small = containerd if suite == "host" else containerd_of(suite), small_disk_of(suite)
    faults = PullFaults(
        cri_client(daemon.socket),
        registry_factory,
        image_factory,
        tmp_path,
        small_disk=cri_client(small.socket),
    )
    provoked(faults, fault, cause, f"containerd {daemon.release}")


def provoked(faults: PullFaults, fault: str, cause: Cause, runtime: str) -> None:
    code, message = faults.provoke(fault)
    assert code != "OK", f"{fault}: the pull succeeded"
    assert classify(code, message).cause is cause, f"{runtime}, {fault}: {code} {message}"


@pytest.fixture(scope="module")
def real_crio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Crio, Crio]]:
    """The CRI-O IMAGE_CRI_SHIM_CRIO names, twice: as it is, and over a small storage."""
    binary = crio_binary()
    assert binary is not None
    with crio_pair(binary, Path(tempfile.mkdtemp(prefix="crf-"))) as pair:
        yield pair


# Real CRI-O only where a person supplies it (`make test-runtimes CRIO=…`): without one this test
# is not collected (there is nothing to provoke); CRI-O's recorded words are checked everywhere by
# tests/unit/test_failures.py.
if crio_binary() is not None:

    @pytest.mark.parametrize(("fault", "cause"), FAULTS.items(), ids=list(FAULTS))
    def test_provoked_failures_are_classified_on_real_crio(
        fault: str,
        cause: Cause,
        real_crio: tuple[Crio, Crio],
        cri_client: CriClientFactory,
        registry_factory: RegistryFactory,
        image_factory: ImageBuilder,
        tmp_path: Path,
    ) -> None:
        daemon, small = real_crio
        faults = PullFaults(
            cri_client(daemon.socket),
            registry_factory,
            image_factory,
            tmp_path,
            small_disk=cri_client(small.socket),
        )
        provoked(faults, fault, cause, "cri-o")

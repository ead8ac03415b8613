"""The pull-failure classifier: every message real containerd versions answered with, and each
failure provoked against the test session's real containerd.

tests/pull-messages.json holds what containerd said when each fault was provoked
(`python -m tools.pullmessages` writes it, with the same code the provoking test below runs),
so the words of every version checked stay checked here, without sockets.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from image_cri_shim.workers.failures import Cause, Verdict, classify
from tests.harness import Containerd, CriClientFactory, ImageBuilder, RegistryFactory
from tests.harness.containerd import SUITES
from tests.harness.pullfaults import FAULTS, PullFaults, load

NOT_RETRYABLE = frozenset(
    {
        Cause.DEADLINE,
        Cause.CANCELLED,
        Cause.DISK_FULL,
        Cause.LOCAL,
        Cause.UNPACK,
        Cause.INVALID_REFERENCE,
        Cause.RUNTIME,
        Cause.UNKNOWN,
    }
)


def recorded() -> list[tuple[str, str, str, str, Cause]]:
    return [
        (version, row["fault"], row["code"], row["message"], Cause[row["cause"]])
        for version, rows in sorted(load().items())
        for row in rows
    ]


def test_every_fault_was_recorded_for_every_version() -> None:
    table = load()
    for release in ("1.6.", "1.7.", "2."):
        assert any(version.startswith(f"containerd {release}") for version in table), sorted(table)
    for version, rows in table.items():
        assert {row["fault"] for row in rows} >= set(FAULTS), version


@pytest.mark.parametrize(
    ("version", "fault", "code", "message", "cause"),
    recorded(),
    ids=[f"{r[0].split()[-1]}-{r[1]}" for r in recorded()],
)
def test_real_messages_are_classified(
    version: str, fault: str, code: str, message: str, cause: Cause
) -> None:
    verdict = classify(code, message)
    assert verdict.cause is cause, f"{version}, {fault}: {code} {message}"
    assert verdict.retryable == (cause not in NOT_RETRYABLE)


# Answers after which no registry could help, besides those recorded: the runtime's own channel
# failing (grpc's wording), messages nobody has seen, and the words nested in other stages.
NEVER_RETRIED = [
    (
        "UNAVAILABLE",
        "failed to connect to all addresses; last error: UNKNOWN: unix:/run/containerd/containerd.sock:"
        " connection refused",
        Cause.RUNTIME,
    ),
    ("UNKNOWN", "something new happened", Cause.UNKNOWN),
    ("UNKNOWN", 'failed to pull and unpack image "x": something nobody has seen', Cause.UNKNOWN),
    ("CANCELLED", "context canceled", Cause.CANCELLED),
    ("DEADLINE_EXCEEDED", "Deadline Exceeded", Cause.DEADLINE),
    (
        "UNKNOWN",
        'failed to pull and unpack image "x": failed to extract layer sha256:00: unexpected EOF',
        Cause.UNPACK,
    ),
    (
        "UNKNOWN",
        'failed to pull and unpack image "x": failed to copy: open /var/lib/containerd/x: permission denied',
        Cause.LOCAL,
    ),
]


@pytest.mark.parametrize(("code", "message", "cause"), NEVER_RETRIED)
def test_what_no_registry_can_fix_is_not_retried(code: str, message: str, cause: Cause) -> None:
    verdict = classify(code, message)
    assert verdict.cause is cause
    assert not verdict.retryable and not verdict.registry_down


def test_only_connection_level_causes_back_the_registry_off() -> None:
    down = {cause for cause in Cause if Verdict(cause, "").registry_down}
    assert down == {Cause.CONNECTION, Cause.SERVER_ERROR, Cause.THROTTLED}


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
    code, message = faults.provoke(fault)
    assert code != "OK", f"{fault}: the pull succeeded"
    assert classify(code, message).cause is cause, f"containerd {daemon.release}, {fault}: {code} {message}"

"""The pull-failure classifier, without sockets: every message the real runtimes answered with,
and the answers after which no registry could help.

tests/pull-messages.json holds what containerd 1.6, 1.7 and 2.x, Docker Engine through cri-dockerd
and CRI-O said when each fault was provoked (`python -m tools.pullmessages` writes it with the faults
tests/integration/test_failures_provoked.py provokes against the session's runtimes), so the words
of every runtime and version checked stay checked here.
"""

from __future__ import annotations

import pytest

from image_cri_shim.workers.pull.failures import Cause, Verdict, classify
from tests.harness.pullrecord import FAULTS, load

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
    for release in ("containerd 1.6.", "containerd 1.7.", "containerd 2.", "cri-dockerd 0.4.", "cri-o 1.3"):
        assert any(version.startswith(release) for version in table), sorted(table)
    for version, rows in table.items():
        assert {row["fault"] for row in rows} >= set(FAULTS), version


@pytest.mark.parametrize(
    ("version", "fault", "code", "message", "cause"),
    recorded(),
    ids=[f"{r[0].split(',')[0].replace(' ', '-')}-{r[1]}" for r in recorded()],
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

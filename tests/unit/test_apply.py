"""What one ConfigMap state means for the config file, decided without touching it (syncer/apply.py)."""

from __future__ import annotations

import pytest

from image_cri_shim.config import ConfigMapRef
from image_cri_shim.syncer.apply import Applied, NotApplied, Result, decide
from image_cri_shim.syncer.snapshot import ABSENT, Snapshot

REF = ConfigMapRef()
PATH = "/etc/image-cri-shim/config.yaml"
WHERE = "ConfigMap kube-system/image-cri-shim"
LOCAL = b"address: http://sealos.hub:5000\ndebug: true\n"


def state(text: str) -> Snapshot:
    return Snapshot("5", {"registries.yaml": text})


def test_a_merge_that_changes_the_file_is_written() -> None:
    outcome = decide(state("debug: false\n"), REF, PATH, LOCAL)
    assert isinstance(outcome, Applied)
    assert outcome.changes and outcome.result is Result.WRITTEN
    assert outcome.message == "config updated from ConfigMap"
    assert b"debug: false" in outcome.text and outcome.config.debug is False


def test_a_merge_the_file_already_holds_is_unchanged() -> None:
    merged = decide(state("debug: false\n"), REF, PATH, LOCAL)
    assert isinstance(merged, Applied)
    again = decide(state("debug: false\n"), REF, PATH, merged.text)
    assert isinstance(again, Applied)
    assert not again.changes and again.result is Result.UNCHANGED and again.text == merged.text
    assert again.message == "config already matches ConfigMap"


def test_ignored_keys_are_notes() -> None:
    outcome = decide(state("sealos: {address: http://x.io, mirror: y}\n"), REF, PATH, LOCAL)
    assert isinstance(outcome, Applied) and outcome.notes == (
        "sealos.mirror: unknown key, ignored (sealos has address, auth and mirrors)",
    )


@pytest.mark.parametrize(
    ("snapshot", "local", "result", "problem"),
    [
        (
            ABSENT,
            LOCAL,
            Result.ABSENT,
            "ConfigMap kube-system/image-cri-shim not found: config file unchanged",
        ),
        (
            Snapshot("6", {"other": "x"}),
            LOCAL,
            Result.ABSENT,
            f"{WHERE} has no key registries.yaml: config file unchanged",
        ),
        (
            state("debug: false\n"),
            b"\xff\xfe",
            Result.REJECTED,
            f"config {PATH} is not UTF-8 text: not merged",
        ),
        (
            state("registries: [{address: a.io, priority: high}]"),
            LOCAL,
            Result.REJECTED,
            f"{WHERE} key registries.yaml not applied: the merged config is invalid",
        ),
    ],
)
def test_what_is_not_applied_and_why(snapshot: Snapshot, local: bytes, result: Result, problem: str) -> None:
    outcome = decide(snapshot, REF, PATH, local)
    assert isinstance(outcome, NotApplied)
    assert outcome.result is result and outcome.problem.startswith(problem)
    assert not outcome.retry, "the same input gives the same answer: wait for a change"


def test_only_a_failed_write_is_retried() -> None:
    assert NotApplied(Result.FAILED, "cannot write config x: No space left on device: file unchanged").retry
    assert not NotApplied(Result.REJECTED, "x").retry


def test_a_rejection_carries_the_passwords_it_saw() -> None:
    auth = "sealos: {address: https://r.io, auth: {username: u, password: s3cret-pw}}\n"
    outcome = decide(state(auth + "registries: [{address: a.io, priority: high}]\n"), REF, PATH, LOCAL)
    assert isinstance(outcome, NotApplied) and outcome.result is Result.REJECTED
    assert outcome.passwords == ("s3cret-pw",) and "s3cret-pw" not in outcome.problem


def test_every_result_is_a_label_of_the_metric() -> None:
    from image_cri_shim.metrics import SyncerMetrics

    metrics = SyncerMetrics(False)
    for result in Result:
        metrics.syncs.labels(result.value).inc()  # the catalog accepts each label value
    assert {r.value for r in Result} == {"written", "unchanged", "absent", "rejected", "failed"}

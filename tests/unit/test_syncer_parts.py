"""The syncer's parts on their own, without sockets: credential order, backoff, snapshots, one
apply step on a file."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import pytest

from image_cri_shim.atomic import remove_stale_temp_files
from image_cri_shim.config import ConfigMapRef
from image_cri_shim.syncer import cluster
from image_cri_shim.syncer.apply import Applied, NotApplied, Result, apply
from image_cri_shim.syncer.follow import BACKOFF_CAP, backoff
from image_cri_shim.syncer.snapshot import ABSENT, Snapshot, from_object

REF = ConfigMapRef()
LOCAL = b"address: http://sealos.hub:5000\ndebug: true\n"


# --------------------------------------------------------------------------- credential sources


def labels(env: dict[str, str]) -> list[str]:
    return [s.label for s in cluster.sources(env)]


def test_sources_in_contract_order() -> None:
    assert labels({"KUBECONFIG": "/k/a:/k/b", "HOME": "/home/op"}) == [
        "in-cluster service account",
        "$KUBECONFIG (/k/a:/k/b)",
        "/etc/kubernetes/kubelet.conf",
        "/etc/kubernetes/admin.conf",
        "/etc/rancher/k3s/k3s.yaml",
        "/home/op/.kube/config",
    ]


@pytest.mark.parametrize("env", [{}, {"HOME": ""}])
def test_without_home_root_is_used(env: dict[str, str]) -> None:
    found = labels(env)
    assert "$KUBECONFIG" not in " ".join(found)
    assert found[-1] == "/root/.kube/config"


def test_unusable_sources_say_why(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    with pytest.raises(cluster.Unavailable, match="not running in a pod"):
        cluster.client_for(cluster.Source("in-cluster", None), env)
    with pytest.raises(cluster.Unavailable, match="no such file"):
        cluster.client_for(cluster.Source("x", str(tmp_path / "absent")), env)
    bad = tmp_path / "bad"
    bad.write_text("apiVersion: v1\nkind: Config\nclusters: 3\n")
    with pytest.raises(cluster.Unavailable, match="not usable"):
        cluster.client_for(cluster.Source("x", str(bad)), env)


# --------------------------------------------------------------------------- backoff


def test_backoff_doubles_to_a_cap_with_jitter() -> None:
    rng = random.Random(7)
    for attempt in range(1, 30):
        ceiling = min(BACKOFF_CAP, 0.5 * 2 ** (attempt - 1))
        delays = [backoff(attempt, rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1, "jitter: nodes do not retry in step"
    assert backoff(1000, rng) <= BACKOFF_CAP


# --------------------------------------------------------------------------- snapshots


def test_snapshot_from_the_api_object() -> None:
    obj = {
        "metadata": {"name": "n", "resourceVersion": "42"},
        "data": {"k": "v"},
        "binaryData": {"b": "AA=="},
    }
    snapshot = from_object(obj)
    assert snapshot == Snapshot("42", {"k": "v"})
    assert snapshot.identity == "version 42" and snapshot.present
    assert from_object({"metadata": {"resourceVersion": "43"}}).data == {}
    assert ABSENT.identity == "absent" and not ABSENT.present
    cases: list[object] = [{}, {"metadata": {}}, {"metadata": {"resourceVersion": "1"}, "data": []}, []]
    for broken in cases:
        with pytest.raises(ValueError):
            from_object(broken)


# --------------------------------------------------------------------------- one apply step


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_bytes(LOCAL)
    path.chmod(0o644)
    return path


def test_apply_writes_0600_only_when_different(config_file: Path) -> None:
    snapshot = Snapshot("5", {"registries.yaml": "debug: false\n"})
    outcome = apply(snapshot, REF, str(config_file), LOCAL)
    assert isinstance(outcome, Applied) and outcome.result is Result.WRITTEN
    assert config_file.read_bytes() == outcome.text
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    inode = config_file.stat().st_ino
    again = apply(snapshot, REF, str(config_file), config_file.read_bytes())
    assert isinstance(again, Applied) and again.result is Result.UNCHANGED
    assert config_file.stat().st_ino == inode, "an unchanged result is not written"


@pytest.mark.parametrize(
    ("snapshot", "problem"),
    [
        (ABSENT, "ConfigMap kube-system/image-cri-shim not found: config file unchanged"),
        (Snapshot("6", {"other": "x"}), "ConfigMap kube-system/image-cri-shim has no key registries.yaml"),
        (
            Snapshot("7", {"registries.yaml": "registries: [{address: a.io, priority: high}]"}),
            "key registries.yaml not applied: the merged config is invalid: registries[0].priority",
        ),
    ],
)
def test_apply_problems_leave_the_file(config_file: Path, snapshot: Snapshot, problem: str) -> None:
    outcome = apply(snapshot, REF, str(config_file), LOCAL)
    assert isinstance(outcome, NotApplied) and problem in outcome.problem
    assert not outcome.retry
    assert config_file.read_bytes() == LOCAL


def test_apply_write_failure_is_retryable(tmp_path: Path) -> None:
    missing_dir = tmp_path / "gone" / "config.yaml"  # write_atomic cannot create its temp file
    outcome = apply(Snapshot("8", {"registries.yaml": "debug: false\n"}), REF, str(missing_dir), LOCAL)
    assert isinstance(outcome, NotApplied) and outcome.result is Result.FAILED and outcome.retry
    assert outcome.problem.startswith(f"cannot write config {missing_dir}: No such file or directory")


def test_stale_temp_files_are_removed(config_file: Path) -> None:
    stale = config_file.parent / f".{config_file.name}.abc123.tmp"
    stale.write_text("half")
    keep = config_file.parent / ".other.abc.tmp"
    keep.write_text("not ours")
    assert remove_stale_temp_files(str(config_file)) == 1
    assert not stale.exists() and keep.exists() and config_file.exists()
    assert sorted(os.listdir(config_file.parent)) == [".other.abc.tmp", "config.yaml"]

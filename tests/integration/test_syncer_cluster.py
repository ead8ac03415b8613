"""The syncer against the stand-in API server and closed ports: credentials that are denied are
passed over, errors in a few words; and what a syncer process loads (no grpc, no unused client
packages). Its parts without sockets: unit/test_syncer_parts.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import urllib3
from kubernetes import client as k8s

from image_cri_shim import logs
from image_cri_shim.syncer import cluster
from tests.harness.kubeapi import KubeApi
from tests.harness.registry import free_port


def test_connect_passes_over_denied_credentials(tmp_path: Path) -> None:
    with KubeApi(tokens={"good": "allowed", "node": "forbidden"}) as api:
        first = api.write_kubeconfig(tmp_path / "a", token="stale")
        second = api.write_kubeconfig(tmp_path / "b", token="node")
        third = api.write_kubeconfig(tmp_path / "c", token="good")
        candidates = [cluster.Source(p.name, str(p)) for p in (first, second, third)]

        def probe(api_client: object) -> int:
            return len(k8s.CoreV1Api(api_client).list_namespaced_config_map("kube-system").items)

        found = cluster.connect(candidates, probe, {})
        assert isinstance(found, cluster.Connection)
        assert found.source.label == "c" and found.first == 0 and found.server == api.url
        found.api.close()
        nothing = cluster.connect(candidates[:2], probe, {})
        assert isinstance(nothing, cluster.NoCluster)
        assert nothing.tried == ["a: HTTP 401 Unauthorized", "b: HTTP 403 Forbidden"]
    # The tokens of every loaded kubeconfig are masked in the log from then on.
    assert logs.redact("token good and stale") == "token *** and ***"


def test_errors_are_described_in_a_few_words() -> None:
    pool = urllib3.PoolManager(retries=False)
    with pytest.raises(Exception) as refused:
        pool.request("GET", f"http://127.0.0.1:{free_port()}/")
    assert cluster.describe(refused.value) == "connection refused"
    with pytest.raises(Exception) as unknown:
        pool.request("GET", "http://no-such-host.invalid/")
    assert cluster.describe(unknown.value) == "unknown host"
    assert cluster.describe(k8s.ApiException(status=503, reason="Service Unavailable")) == (
        "HTTP 503 Service Unavailable"
    )
    assert cluster.is_denied(k8s.ApiException(status=403)) and not cluster.is_denied(ValueError())


def test_the_syncer_never_loads_grpc() -> None:
    """grpc belongs to the worker (docs/architecture.md, "Walls"); the syncer's modules do not pull it in."""
    code = (
        "import sys\n"
        "from image_cri_shim.syncer import apply, cluster, follow, merge, process, snapshot\n"
        "assert 'kubernetes' in sys.modules\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'grpc'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[]\n"


def test_the_syncer_loads_the_client_without_the_packages_it_never_uses() -> None:
    # The package's eager __init__ (dynamic client, streams, informers) and CoreV1Api with its
    # hundreds of models are 40 MiB the syncer never uses.
    unwanted = ("kubernetes.dynamic", "kubernetes.stream", "kubernetes.client.api.core_v1_api")
    code = (
        "import sys, image_cri_shim.syncer.follow, image_cri_shim.syncer.check;"
        f"bad = [m for m in {unwanted!r} if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    argv = [sys.executable, "-c", code]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr

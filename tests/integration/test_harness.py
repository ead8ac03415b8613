"""The harness itself, proven with real parts: if these fail, no other integration test means anything."""

from __future__ import annotations

import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from tests.harness import (
    VERSIONS,
    Blackhole,
    Containerd,
    CriClientFactory,
    CriVersion,
    HarnessError,
    ImageBuilder,
    ManagedProcess,
    RegistryFactory,
    foreign_platform,
    free_port,
    node_platform,
    wait_for,
)
from tests.harness.containerd import SUITES
from tests.harness.registry import MANIFEST_TYPES
from tests.harness.service import CpuClock

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("version", VERSIONS)
def test_containerd_answers_version(
    containerd: Containerd, cri_client: CriClientFactory, version: CriVersion
) -> None:
    response = cri_client(containerd.socket, version).version()
    assert response.runtime_name == "containerd"
    assert response.runtime_api_version == version


@pytest.mark.parametrize("version", VERSIONS)
def test_pull_status_remove_from_plain_registry(
    containerd: Containerd,
    registry_factory: RegistryFactory,
    image_factory: ImageBuilder,
    cri_client: CriClientFactory,
    version: CriVersion,
) -> None:
    registry = registry_factory()
    image = image_factory(registry, "harness/plain", "v1")
    client = cri_client(version=version)

    image_id = client.pull(image.reference)

    assert image_id.startswith("sha256:")
    status = client.status(image.reference)
    assert status is not None
    assert status.id == image_id
    assert image.reference in status.repo_tags
    assert image.digest_reference in status.repo_digests
    # containerd 1.6 ignores ListImages filters: other tests' images may be listed too
    assert image_id in [i.id for i in client.list(image.reference)]
    assert client.fs_info()[0].fs_id.mountpoint
    client.remove(image.reference)
    assert client.status(image.reference) is None
    # Finding: containerd 1.6 pulls loopback registries over plain http with no hosts.toml at all.
    assert not containerd.certs_d.host_dir(registry.host).exists()


@pytest.mark.timeout(300)  # a first run builds the Debian root
@pytest.mark.parametrize("suite", SUITES)
def test_containerd_of_a_debian_suite_pulls_from_a_plain_loopback_registry(
    containerd_of: Callable[[str], Containerd],
    registry_factory: RegistryFactory,
    image_factory: ImageBuilder,
    cri_client: CriClientFactory,
    suite: str,
) -> None:
    daemon = containerd_of(suite)
    client = cri_client(daemon.socket)
    assert client.version().runtime_version.startswith(SUITES[suite])
    assert daemon.release.startswith(SUITES[suite])
    image = image_factory(registry_factory(), f"harness/{suite}", "v1")

    image_id = client.pull(image.reference)

    status = client.status(image.reference)
    assert status is not None and status.id == image_id
    assert image.reference in status.repo_tags
    assert image.digest_reference in status.repo_digests
    client.remove(image.reference)
    assert client.status(image.reference) is None
    old = cri_client(daemon.socket, "v1alpha2")
    if daemon.major >= 2:  # 2.x dropped v1alpha2
        with pytest.raises(grpc.RpcError) as err:
            old.version()
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    else:
        assert old.version().runtime_api_version == "v1alpha2"


def test_htpasswd_registry_needs_credentials(
    registry_factory: RegistryFactory,
    image_factory: ImageBuilder,
    cri_client: CriClientFactory,
) -> None:
    registry = registry_factory(auth=True)
    assert registry.ping() == 401
    image = image_factory(registry, "harness/private", "v1")
    client = cri_client()

    with pytest.raises(grpc.RpcError) as anonymous:
        client.pull(image.reference)
    assert "401 Unauthorized" in str(anonymous.value.details())

    with pytest.raises(grpc.RpcError) as wrong:
        client.pull(image.reference, registry.username, "wrong-password")
    assert "401 Unauthorized" in str(wrong.value.details())

    client.pull(image.reference, registry.username, registry.password)
    status = client.status(image.reference)
    assert status is not None and image.digest_reference in status.repo_digests
    client.remove(image.reference)


def test_tls_registry_with_ca_in_certs_d(
    containerd: Containerd,
    registry_factory: RegistryFactory,
    image_factory: ImageBuilder,
    cri_client: CriClientFactory,
) -> None:
    registry = registry_factory(tls=True, auth=True)
    assert registry.url.startswith("https://127.0.0.1:")
    hosts = (containerd.certs_d.host_dir(registry.host) / "hosts.toml").read_text()
    assert f'server = "https://{registry.host}"' in hosts and str(registry.ca_path) in hosts
    image = image_factory(registry, "harness/tls", "v1")
    client = cri_client()

    client.pull(image.reference, registry.username, registry.password)

    status = client.status(image.reference)
    assert status is not None and image.digest_reference in status.repo_digests
    client.remove(image.reference)


def test_tls_registry_without_hosts_toml_is_not_reachable(
    registry_factory: RegistryFactory,
    image_factory: ImageBuilder,
    cri_client: CriClientFactory,
) -> None:
    """Finding: without hosts.toml containerd talks plain http to a loopback TLS registry."""
    registry = registry_factory(tls=True, trusted=False)
    image = image_factory(registry, "harness/untrusted", "v1")

    with pytest.raises(grpc.RpcError) as err:
        cri_client().pull(image.reference)
    assert "400 Bad Request" in str(err.value.details())


def test_registry_stopped_and_started_serves_the_same_image(
    registry_factory: RegistryFactory,
    image_factory: ImageBuilder,
    cri_client: CriClientFactory,
) -> None:
    registry = registry_factory()
    image = image_factory(registry, "harness/restart", "v1")
    port = registry.port

    registry.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    registry.start()

    assert registry.port == port
    assert registry.manifest_digest("harness/restart", "v1") == image.digest
    client = cri_client()
    client.pull(image.reference)
    client.remove(image.reference)


def test_index_with_node_platform_pulls_and_foreign_only_index_does_not(
    registry_factory: RegistryFactory,
    image_factory: ImageBuilder,
    cri_client: CriClientFactory,
) -> None:
    registry = registry_factory()
    multi = image_factory(registry, "harness/multi", "v1", platforms=[foreign_platform(), node_platform()])
    foreign = image_factory(registry, "harness/foreign", "v1", platforms=[foreign_platform()])
    assert multi.media_type == foreign.media_type == "application/vnd.oci.image.index.v1+json"
    assert registry.manifest_digest("harness/multi", "v1") == multi.digest
    client = cri_client()

    client.pull(multi.reference)
    status = client.status(multi.reference)
    assert status is not None and multi.digest_reference in status.repo_digests
    client.remove(multi.reference)

    with pytest.raises(grpc.RpcError) as err:
        client.pull(foreign.reference)
    assert "no match for platform" in str(err.value.details())


@pytest.mark.parametrize("index", [False, True], ids=["manifest", "list"])
def test_docker_format_push_is_pullable(
    registry_factory: RegistryFactory, image_factory: ImageBuilder, cri_client: CriClientFactory, index: bool
) -> None:
    registry = registry_factory()
    platforms = [foreign_platform(), node_platform()] if index else None
    image = image_factory(registry, "harness/docker", "v1", platforms=platforms, docker_format=True)
    _, headers, _ = registry.request("HEAD", "/v2/harness/docker/manifests/v1", accept=MANIFEST_TYPES)
    assert headers["Content-Type"] == image.media_type
    assert image.media_type.startswith("application/vnd.docker.distribution.manifest.")
    assert headers["Docker-Content-Digest"] == image.digest
    client = cri_client()
    client.pull(image.reference)
    client.remove(image.reference)


def test_same_content_same_digest_everywhere(
    registry_factory: RegistryFactory, image_factory: ImageBuilder
) -> None:
    first, second = registry_factory(), registry_factory(auth=True)
    a = image_factory(first, "harness/same", "v1", content="same")
    b = image_factory(second, "other/path", "v2", content="same")
    c = image_factory(first, "harness/same", "v2", content="different")
    assert a.digest == b.digest != c.digest
    assert second.manifest_digest("other/path", "v2") == b.digest
    first.delete_manifest("harness/same", a.digest)
    assert first.manifest_digest("harness/same", "v1") is None


def test_building_and_pushing_is_fast(registry_factory: RegistryFactory, image_factory: ImageBuilder) -> None:
    registry = registry_factory()
    started = time.monotonic()
    image_factory(registry, "harness/fast", "v1")
    assert time.monotonic() - started < 2.0


def test_blackhole_accepts_and_never_answers(blackhole: Blackhole) -> None:
    with socket.create_connection(("127.0.0.1", blackhole.port), timeout=1) as conn:
        conn.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: blackhole.accepted == 1, 2, "the blackhole to accept")
        conn.settimeout(1.0)
        with pytest.raises(TimeoutError):
            conn.recv(1)


def test_free_port_refuses_connections() -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", free_port()), timeout=1).close()


def test_wait_for_fails_with_what_and_last_error() -> None:
    def broken() -> bool:
        raise ValueError("still broken")

    with pytest.raises(HarnessError, match=r"(?s)0.1s waiting for the thing.*still broken.*log tail"):
        wait_for(broken, 0.1, "the thing", detail=lambda: "log tail")


def test_process_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    code = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
        "time.sleep(30)"
    )
    proc = ManagedProcess([sys.executable, "-c", code], tmp_path / "stubborn.log")
    wait_for(lambda: "up" in proc.log_text(), 10, "the child to start", detail=proc.describe)

    started = time.monotonic()
    assert proc.stop(timeout=0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 3
    assert not proc.alive()


def test_containerd_start_failure_reports_the_log(tmp_path: Path) -> None:
    daemon = Containerd(tmp_path, extra_config="this is not toml")
    with pytest.raises(HarnessError, match=r"(?s)containerd exited during start-up.*last lines of") as err:
        daemon.start(timeout=10)
    print(err.value)


SPIN = (
    "import os, sys, threading, time\n"
    "def spin(seconds):\n"
    "    end = time.thread_time() + seconds\n"
    "    while time.thread_time() < end: pass\n"
    "def spin_then(seconds, rest):\n"
    "    spin(seconds); spun.set(); time.sleep(rest)\n"
    "spun = threading.Event()\n"
    "while not os.path.exists(sys.argv[2]): time.sleep(0.01)\n"
    "rest = 0 if sys.argv[1] == 'ends' else 30\n"
    "threading.Thread(target=spin_then, args=(0.3, rest), daemon=True).start()\n"
    "spin(0.2); spun.wait(); time.sleep(0.1); print('spun', flush=True); time.sleep(30)\n"
)


@pytest.mark.parametrize("thread", ["ends", "runs"])
def test_the_cpu_clock_counts_every_thread_and_one_that_ended(tmp_path: Path, thread: str) -> None:
    go = tmp_path / "go"
    proc = ManagedProcess([sys.executable, "-c", SPIN, thread, go], tmp_path / "spin.log")
    try:
        time.sleep(0.2)  # the interpreter has started: what the clock counts from here is the spinning
        clock = CpuClock(proc.popen.pid)
        go.touch()
        wait_for(lambda: "spun" in proc.log_text(), 20, "the child to spin", detail=proc.describe)
        assert 0.48 <= clock.seconds() <= 0.6  # 0.5 s spun; after a thread ended, within two ticks
    finally:
        proc.stop()

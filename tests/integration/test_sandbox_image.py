"""The sandbox (pause) image on a node that cannot reach registry.k8s.io, with the runtime's config
left alone: containerd 1.6 (this machine's), 1.7 (Debian trixie) and 2.x (sid) at their default
sandbox image, the private registry holding `pause` (behind credentials), and pods created as
kubelet creates them — RunPodSandbox on the runtime's own socket, never through the shim. The
service keeps the image on the node at start-up, and again after it was deleted and SIGHUP
started a new worker; where it cannot be had, STATUS= says why while the service serves."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.harness import CertAuthority, Containerd, RegistryFactory
from tests.harness.cli import run, write
from tests.harness.containerd import ROOT_PACKAGES, SUITES, default_sandbox_image
from tests.harness.cri import CriClient
from tests.harness.images import push
from tests.harness.pods import PodNetwork, busybox_layout, remove_pods, sandbox_config
from tests.harness.processes import wait_for
from tests.harness.registry import Registry
from tests.harness.rootfs import debian_root
from tests.harness.scrape import get
from tests.harness.service import Service, start_service

pytestmark = pytest.mark.timeout(300)

RUNTIMES = ("host", *SUITES)  # "host": this machine's containerd 1.6
SUBNETS = {"host": "10.251.5.0/24", "trixie": "10.251.6.0/24", "sid": "10.251.7.0/24"}
KEPT_WITHIN = 60.0  # a pull of a 1 MiB image from a local registry, on a loaded machine


@dataclass
class Node:
    containerd: Containerd
    network: PodNetwork
    registry: Registry
    pause: str  # the runtime's default sandbox image, e.g. registry.k8s.io/pause:3.6
    work: Path


@pytest.fixture(scope="module", params=RUNTIMES)
def node(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    work = tmp_path_factory.mktemp(f"sandbox-{request.param}")
    root = None if request.param == "host" else debian_root(request.param, ROOT_PACKAGES)
    pause = default_sandbox_image(root)
    assert pause.startswith("registry.k8s.io/pause:")
    registries = RegistryFactory(work / "registries", CertAuthority.create(work / "ca"))
    registry = registries(auth=True)
    daemon = Containerd(work / "containerd", root=root)  # no sandbox_image: the default
    network = PodNetwork(daemon, SUBNETS[request.param])
    daemon.start()
    try:
        yield Node(daemon, network, registry, pause, work)
    finally:
        try:
            with CriClient(daemon.socket, timeout=60) as direct:
                remove_pods(direct)
        finally:
            daemon.stop()
            network.close()
            registries.close()


def held(direct: CriClient, name: str) -> bool:
    return direct.status(name) is not None


def run_pod(direct: CriClient, name: str) -> str:
    """RunPodSandbox on the runtime's socket, as kubelet does; the pod's state once it answered."""
    pb = direct.pb
    pod = direct.runtime.RunPodSandbox(
        pb.RunPodSandboxRequest(config=sandbox_config(direct, name)), timeout=120
    )
    state = direct.runtime.PodSandboxStatus(
        pb.PodSandboxStatusRequest(pod_sandbox_id=pod.pod_sandbox_id), timeout=30
    ).status.state
    return str(pb.PodSandboxState.Name(state))


def kept(service: Service, direct: CriClient, name: str) -> float:
    """Seconds until the runtime holds `name`, from now."""
    started = time.monotonic()
    wait_for(
        lambda: held(direct, name),
        KEPT_WITHIN,
        f"the sandbox image {name} on the node",
        interval=0.2,
        detail=lambda: service.process.describe(30),
    )
    return time.monotonic() - started


def pulled(service: Service, times: int) -> None:
    """The log says `sandbox image pulled` exactly `times` times (the line follows the image's
    arrival by a moment: the keeper logs once it has seen the image under its name)."""

    def count() -> int:
        return service.process.log_text().count("sandbox image pulled")

    wait_for(lambda: count() >= times, 10, f"{times} 'sandbox image pulled' lines")
    time.sleep(0.5)  # no further one follows
    assert count() == times, service.process.log_text()


def test_pods_start_with_the_default_sandbox_image_from_the_private_registry(
    node: Node, short_dir: Path
) -> None:
    direct = CriClient(node.containerd.socket, timeout=30)
    pause = node.pause
    # The node cannot reach registry.k8s.io: the runtime's own pull of it fails.
    assert not held(direct, pause), "the node never held the pause image"
    with pytest.raises(grpc.RpcError) as refused:
        direct.pull(pause, timeout=120)
    print(f"direct pull of {pause}: {refused.value.code().name}: {refused.value.details()}")
    with pytest.raises(grpc.RpcError):
        run_pod(direct, "before")  # what every pod on this node did until now
    remove_pods(direct)

    layout = busybox_layout(node.work / "pause-layout", ["/bin/sleep", "2147483647"], label="pause")
    tag = pause.rsplit(":", 1)[1]
    pushed = push(layout, node.registry, "pause", tag)  # as registry.k8s.io/pause's repository path
    started = time.monotonic()
    service = start_service(
        short_dir, {"cri": node.containerd.address, "address": node.registry.url, "auth": node.registry.auth}
    )
    try:
        ready = time.monotonic() - started
        took = kept(service, direct, pause)
        print(f"{node.containerd.release}: READY=1 after {ready:.2f}s, {pause} on the node {took:.2f}s later")
        assert run_pod(direct, "first") == "SANDBOX_READY"
        status = direct.status(pause)
        assert status is not None and pause in status.repo_tags
        assert not any(node.registry.host in t for t in status.repo_tags), "named as the runtime expects"
        pulled(service, 1)
        log = service.process.log_text()
        assert "sandbox image cannot be had" not in log and "unavailable" not in service.notify.text()

        # Deleted, then SIGHUP: the new generation puts it back.
        remove_pods(direct)
        direct.remove(pause)
        assert not held(direct, pause)
        mark = time.monotonic()
        service.reload_and_wait(lambda: service.process.signal(signal.SIGHUP))
        took = kept(service, direct, pause)
        print(
            f"after SIGHUP: READY=1 after {time.monotonic() - mark - took:.2f}s, image back {took:.2f}s later"
        )
        assert service.generation() == 2
        assert run_pod(direct, "second") == "SANDBOX_READY"
        pulled(service, 2)
    finally:
        service.stop()
        print(service.process.describe(40))
        direct.close()
    assert pushed.digest


def status_with(service: Service, words: str, present: bool = True) -> str:
    """The latest STATUS= once it does (or, with `present` False, no longer does) carry `words`."""

    def latest() -> str | None:
        statuses = [m["STATUS"] for m in service.notify.since(0) if "STATUS" in m]
        return statuses[-1] if statuses and (words in statuses[-1]) == present else None

    return wait_for(
        latest,
        KEPT_WITHIN,
        f"STATUS= {'with' if present else 'without'} {words!r}",
        detail=lambda: service.process.describe(30),
    )


def test_a_sandbox_image_no_registry_holds_is_said_and_kept_once_it_can_be_had(
    tmp_path: Path, short_dir: Path
) -> None:
    """containerd 1.6 at its default: the warning in the log, STATUS= and /healthz while the
    service serves; the image is on the node soon after the registry has it."""
    registries = RegistryFactory(tmp_path / "registries", CertAuthority.create(tmp_path / "ca"))
    registry = registries()
    daemon = Containerd(tmp_path / "containerd")
    daemon.start()
    direct = CriClient(daemon.socket, timeout=30)
    pause = default_sandbox_image(None)
    metrics = short_dir / "metrics.sock"
    settings: dict[str, object] = {
        "cri": daemon.address,
        "address": registry.url,
        "metricsAddress": str(metrics),
        "cache": {"negativeCacheTTL": "1s"},  # the retry is tested, not how long "nobody has it" is kept
    }
    dry = run("-f", str(write(tmp_path, settings)), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"sandbox      {pause}  (from the runtime's Status)" in dry.stdout
    assert "absent: the shim pulls it" in dry.stdout
    assert "as asked, from registry.k8s.io: no configured registry holds it" in dry.stdout
    service = start_service(short_dir, settings)
    try:
        found = status_with(service, f"sandbox image {pause} unavailable")
        assert "serving gen=1" in found
        assert f"no configured registry holds it ({registry.host}/pause:" in found, (
            "the reason says what was asked"
        )
        assert "registry.k8s.io" in found.split("pulled as asked:")[1], "and what the runtime said"
        assert "sandbox image cannot be had" in service.process.log_text()
        code, health = get(str(metrics), "/healthz")
        assert code == 200 and health.startswith("ok:") and f"sandbox image {pause} unavailable" in health

        push(
            busybox_layout(tmp_path / "pause", ["/bin/sleep", "2147483647"]),
            registry,
            "pause",
            pause.split(":")[-1],
        )
        took = kept(service, direct, pause)  # at the next attempt (5 s after the first, then 10 s…)
        print(f"pushed: the image on the node {took:.2f}s later")
        dry = run("-f", str(write(tmp_path, settings)), "--dry-run")
        assert "on the node" in dry.stdout and f"from {registry.host}/pause:" in dry.stdout, dry.stdout
        resolved = run("-f", str(write(tmp_path, settings)), "--resolve", pause)
        assert f"target    {registry.host}/pause:{pause.split(':')[-1]}" in resolved.stdout, resolved.stdout
        status_with(service, "unavailable", present=False)
        assert "sandbox image present" not in service.process.log_text()
        pulled(service, 1)

        # Removed behind its back (by hand, or image garbage collection): a RunPodSandbox through
        # the shim, or a full listing that lacks it, brings it back.
        shim = CriClient(service.socket, timeout=60)
        for trigger in ("RunPodSandbox", "ListImages"):
            image = direct.status(pause)
            assert image is not None
            direct.remove(image.id)  # by ID, as image garbage collection does: every name goes
            assert not held(direct, pause)
            if trigger == "ListImages":
                shim.list()
            else:
                with pytest.raises(grpc.RpcError):  # this containerd has no pod network, nor the image yet
                    shim.runtime.RunPodSandbox(
                        shim.pb.RunPodSandboxRequest(config=sandbox_config(shim, "trigger")), timeout=60
                    )
            took = kept(service, direct, pause)
            print(f"{trigger} through the shim: the image back {took:.2f}s later")
        pulled(service, 3)
        shim.close()
    finally:
        service.stop()
        print(service.process.describe(40))
        direct.close()
        daemon.stop()
        registries.close()

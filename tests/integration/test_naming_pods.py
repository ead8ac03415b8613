"""Transparent naming with real pods, through the shim socket only, on containerd 1.6 (this
machine's), 1.7 (Debian trixie) and 2.x (sid): pull by a name that gets rewritten, run a pod and a
container by that name, and find the image under it alone, also after a restart of the shim with
every registry stopped. Both CRI versions where the runtime serves them."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.harness import (
    CertAuthority,
    Containerd,
    CriClientFactory,
    ImageBuilder,
    RegistryFactory,
    ShimFactory,
)
from tests.harness.containerd import ROOT_PACKAGES, SUITES
from tests.harness.cri import VERSIONS, CriClient, CriVersion
from tests.harness.images import PushedImage, push
from tests.harness.node import Stack, entry, repo
from tests.harness.pods import PodNetwork, busybox_layout, container_config, remove_pods, sandbox_config
from tests.harness.processes import wait_for
from tests.harness.registry import Registry
from tests.harness.rootfs import debian_root
from tests.harness.service import start_service
from tests.harness.tcpproxy import Gate, TcpProxy

pytestmark = pytest.mark.timeout(300)

RUNTIMES = ("host", *SUITES)  # "host": this machine's containerd 1.6
SUBNETS = {
    "host": "10.251.1.0/24",
    "trixie": "10.251.2.0/24",
    "sid": "10.251.3.0/24",
    "plain": "10.251.4.0/24",
}


@dataclass
class PodNode:
    """A containerd that runs pods: CNI bridge, a pause image already on the node."""

    containerd: Containerd
    network: PodNetwork
    pause_registry: Registry
    work: Path


def start_node(
    work: Path, runtime: str, disabled_plugins: tuple[str, ...] = ()
) -> tuple[PodNode, RegistryFactory]:
    registries = RegistryFactory(work / "registries", CertAuthority.create(work / "ca"))
    pause_registry = registries()
    pause = push(busybox_layout(work / "pause", ["/bin/sleep", "2147483647"]), pause_registry, "pause", "1")
    root = None if runtime in ("host", "plain") else debian_root(runtime, ROOT_PACKAGES)
    daemon = Containerd(
        work / "containerd", root=root, sandbox_image=pause.reference, disabled_plugins=disabled_plugins
    )
    network = PodNetwork(daemon, SUBNETS[runtime])
    daemon.start()
    with CriClient(daemon.socket) as direct:
        direct.pull(pause.reference)  # containerd pulls the sandbox image itself, past the shim
    return PodNode(daemon, network, pause_registry, work), registries


@pytest.fixture(scope="module", params=RUNTIMES)
def node(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodNode]:
    work = tmp_path_factory.mktemp(f"pods-{request.param}")
    built, registries = start_node(work, request.param)
    yield built
    stop_node(built, registries)


def stop_node(node: PodNode, registries: RegistryFactory) -> None:
    try:
        with CriClient(node.containerd.socket, timeout=60) as direct:
            remove_pods(direct)
    finally:
        node.containerd.stop()
        node.network.close()
        registries.close()


@dataclass
class Names:
    caller: str
    caller_digest: str
    pushed: PushedImage


def push_busybox(node: PodNode, mirror: Registry) -> Names:
    """A busybox image at the mirror, asked for as registry.k8s.io/e2e-test-images/…:1.29-2."""
    name = f"bb{uuid.uuid4().hex[:8]}"
    layout = busybox_layout(node.work / name, ["/bin/sleep", "3600"], label=name)  # an image of its own
    pushed = push(layout, mirror, f"e2e-test-images/{name}", "1.29-2")
    caller = f"registry.k8s.io/e2e-test-images/{name}:1.29-2"
    return Names(caller, f"registry.k8s.io/e2e-test-images/{name}@{pushed.digest}", pushed)


def assert_named_as_asked(client: CriClient, names: Names, image_id: str, renamed: bool = True) -> None:
    """ImageStatus and ListImages name the image as the caller asked, and by nothing else."""
    status = client.status(names.caller)
    assert status is not None and status.id == image_id
    assert list(status.repo_tags) == [names.caller]
    assert list(status.repo_digests) == [names.caller_digest]
    listed = [i for i in client.list() if i.id == image_id]
    assert [(list(i.repo_tags), list(i.repo_digests)) for i in listed] == [
        ([names.caller], [names.caller_digest])
    ]
    assert not any(names.pushed.host in t for i in client.list() for t in (*i.repo_tags, *i.repo_digests))
    # (containerd 1.6 ignores ListImages filters: other images may be listed too)
    assert image_id in [i.id for i in client.list(names.caller)], "a filter by the caller's name finds it"
    if renamed:
        assert client.status(names.pushed.reference) is None, "the rewritten name is gone"


def run_container(client: CriClient, pod: str, sandbox: object, names: Names, label: str) -> str:
    """CreateContainer by the caller's name, StartContainer, ExecSync echo; the container's id."""
    pb, runtime = client.pb, client.runtime
    config = container_config(client, label, names.caller, ["/bin/sleep", "3600"])
    request = pb.CreateContainerRequest(pod_sandbox_id=pod, config=config, sandbox_config=sandbox)
    container = str(runtime.CreateContainer(request, timeout=60).container_id)
    runtime.StartContainer(pb.StartContainerRequest(container_id=container), timeout=60)
    done = runtime.ExecSync(
        pb.ExecSyncRequest(container_id=container, cmd=["echo", label], timeout=10), timeout=30
    )
    assert (done.exit_code, done.stdout) == (0, f"{label}\n".encode())
    return container


def container_image(client: CriClient, container: str) -> tuple[str, str]:
    pb = client.pb
    status = client.runtime.ContainerStatus(
        pb.ContainerStatusRequest(container_id=container), timeout=30
    ).status
    return str(status.image.image), str(status.image_ref)


def start_shim(stack: Stack, node: PodNode, mirror: Registry) -> Path:
    return stack.start_on(node.containerd.address, [], address=entry(mirror)).socket


@pytest.fixture
def stack(
    node: PodNode,
    registry_factory: RegistryFactory,
    image_factory: ImageBuilder,
    shim_factory: ShimFactory,
    cri_client: CriClientFactory,
    short_dir: Path,
) -> Stack:
    return Stack(node.containerd, registry_factory, image_factory, shim_factory, cri_client, short_dir)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_pod_runs_from_the_name_it_pulled_and_the_image_is_listed_under_it_alone(
    node: PodNode, stack: Stack, version: CriVersion
) -> None:
    mirror = stack.registries()
    names = push_busybox(node, mirror)
    client = stack.cri(start_shim(stack, node, mirror), version)
    if node.containerd.major >= 2 and version == "v1alpha2":
        with pytest.raises(grpc.RpcError) as err:
            client.version()
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED, "2.x serves v1 only: passed through"
        return

    image_id = client.pull(names.caller)
    assert_named_as_asked(client, names, image_id)
    assert client.pulled_as(names.caller) == names.pushed.reference
    direct = stack.direct()
    assert direct.status(names.caller) is not None and direct.status(names.pushed.reference) is None, (
        "containerd's own records carry the caller's name"
    )

    sandbox = sandbox_config(client, f"pod-{version}")
    pod = str(
        client.runtime.RunPodSandbox(
            client.pb.RunPodSandboxRequest(config=sandbox), timeout=60
        ).pod_sandbox_id
    )
    first = run_container(client, pod, sandbox, names, "first")
    image, image_ref = container_image(client, first)
    assert image == names.caller
    assert image_ref in (names.caller_digest, image_id)

    # The shim restarted with every registry down: the same answers, and a container by that name.
    stack.shims.close()
    mirror.stop()
    node.pause_registry.stop()
    client = stack.cri(start_shim(stack, node, mirror), version)
    assert_named_as_asked(client, names, image_id)
    run_container(client, pod, sandbox, names, "second")

    pb = client.pb
    client.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    client.remove(names.caller)
    assert client.status(names.caller) is None
    assert direct.status(names.caller) is None and direct.status(image_id) is None


def test_a_name_also_pulled_directly_stays(node: PodNode, stack: Stack) -> None:
    """What a client sees for an image pulled both directly and through the shim: both names."""
    mirror = stack.registries()
    client = stack.cri(start_shim(stack, node, mirror))
    direct_first = push_busybox(node, mirror)
    image_id = client.pull(direct_first.pushed.reference)  # its own name: not rewritten
    assert client.pull(direct_first.caller) == image_id
    status = client.status(direct_first.caller)
    assert status is not None
    assert sorted(status.repo_tags) == sorted([direct_first.caller, direct_first.pushed.reference])
    assert sorted(status.repo_digests) == sorted(
        [direct_first.caller_digest, direct_first.pushed.digest_reference]
    )

    shim_first = push_busybox(node, mirror)
    image_id = client.pull(shim_first.caller)
    stack.direct().pull(shim_first.pushed.reference)  # past the shim, afterwards
    status = client.status(shim_first.caller)
    assert status is not None and status.id == image_id
    assert sorted(status.repo_tags) == sorted([shim_first.caller, shim_first.pushed.reference])
    for names in (direct_first, shim_first):
        client.remove(names.caller)
        assert client.status(names.pushed.reference) is None, "RemoveImage removes the image, every name"


def test_concurrent_pulls_of_one_name_all_succeed_and_leave_the_callers_name(
    node: PodNode, stack: Stack
) -> None:
    mirror = stack.registries()
    names = push_busybox(node, mirror)
    client = stack.cri(start_shim(stack, node, mirror))
    with ThreadPoolExecutor(8) as pool:  # a failed pull raises here
        results = list(pool.map(lambda _: client.pull(names.caller), range(8)))
    assert len(set(results)) == 1 and len(results) == 8
    assert_named_as_asked(client, names, results[0])
    client.remove(names.caller)


def test_a_pull_answered_while_another_runs_runs_its_pod_by_the_callers_name_at_once(
    node: PodNode, stack: Stack
) -> None:
    """While another image's pull runs, an answered pull's records are renamed after it (about a
    second at most); meanwhile the shim names the image as asked and CreateContainer through it
    by the caller's name runs the container (by the image's ID, as kubelet sends it anyway)."""
    mirror, slow_registry = stack.registries(), stack.registries()
    names, long = push_busybox(node, mirror), repo()
    stack.images(slow_registry, long, "1")
    held = Gate(count=1000, timeout=4.0)  # the slow registry's blobs each wait 4 s
    slow = TcpProxy(slow_registry.port, gate=held)
    try:
        shim = stack.start_on(
            node.containerd.address, [entry(f"http://{slow.host}", 500)], address=entry(mirror)
        )
        client, direct = stack.cri(shim.socket), stack.direct()
        sandbox = sandbox_config(client, "pod-waiting")
        pod = str(
            client.runtime.RunPodSandbox(
                client.pb.RunPodSandboxRequest(config=sandbox), timeout=60
            ).pod_sandbox_id
        )
        running = threading.Thread(target=lambda: client.pull(f"{long}:1", timeout=60))
        running.start()
        wait_for(lambda: held.arrived > 0, 10, "the long pull waits for its blobs")
        image_id = client.pull(names.caller)
        assert direct.status(names.caller) is None, "containerd's records are renamed after the other pull"
        assert_named_as_asked(client, names, image_id, renamed=False)
        container = run_container(client, pod, sandbox, names, "waiting")
        assert running.is_alive(), "all of it while the other pull still ran"
        wait_for(
            lambda: direct.status(names.caller) is not None and direct.status(names.pushed.reference) is None,
            10,
            "containerd's records renamed: the caller's written, the pulled ones removed",
        )
        assert container_image(client, container)[0] == names.caller
        running.join(60)
        pb = client.pb
        client.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
        client.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
        client.remove(names.caller)
    finally:
        slow.stop()


@pytest.fixture(scope="module")
def plain_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodNode]:
    """containerd 1.6 without its gRPC images API: a runtime the shim can only translate for."""
    built, registries = start_node(
        tmp_path_factory.mktemp("pods-plain"), "plain", ("io.containerd.grpc.v1.images",)
    )
    yield built
    stop_node(built, registries)


@pytest.mark.parametrize("version", VERSIONS)
def test_without_image_records_answers_and_create_container_are_translated(
    version: CriVersion,
    plain_node: PodNode,
    registry_factory: RegistryFactory,
    image_factory: ImageBuilder,
    shim_factory: ShimFactory,
    cri_client: CriClientFactory,
    short_dir: Path,
) -> None:
    stack = Stack(plain_node.containerd, registry_factory, image_factory, shim_factory, cri_client, short_dir)
    mirror = stack.registries()
    names = push_busybox(plain_node, mirror)
    client = stack.cri(start_shim(stack, plain_node, mirror), version)
    image_id = client.pull(names.caller)
    assert_named_as_asked(client, names, image_id, renamed=False)
    direct = stack.direct()
    assert direct.status(names.caller) is None, "the runtime itself knows only the pulled name"
    assert direct.status(names.pushed.reference) is not None

    sandbox = sandbox_config(client, f"pod-plain-{version}")
    pod = str(
        client.runtime.RunPodSandbox(
            client.pb.RunPodSandboxRequest(config=sandbox), timeout=60
        ).pod_sandbox_id
    )
    run_container(client, pod, sandbox, names, "mapped")

    stack.shims.close()
    mirror.stop()
    client = stack.cri(start_shim(stack, plain_node, mirror), version)
    assert_named_as_asked(client, names, image_id, renamed=False)
    run_container(client, pod, sandbox, names, "again")
    client.runtime.StopPodSandbox(client.pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    client.runtime.RemovePodSandbox(client.pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    client.remove(names.caller)
    assert direct.status(names.pushed.reference) is None


def test_names_hold_across_a_reload_with_every_registry_down(
    containerd: Containerd,
    registry_factory: RegistryFactory,
    image_factory: ImageBuilder,
    cri_client: CriClientFactory,
    short_dir: Path,
) -> None:
    """The service (master and workers): a reload starts a new worker with an empty cache."""
    mirror = registry_factory()
    name = f"library/r{uuid.uuid4().hex[:8]}"
    pushed = image_factory(mirror, name, "1")
    caller = f"docker.io/{name}:1"
    service = start_service(short_dir, {"cri": containerd.address, "address": mirror.url})
    try:
        client = cri_client(service.socket)
        image_id = client.pull(caller)
        mirror.stop()
        ready = service.reload_and_wait(lambda: service.edit(lambda c: c.update(debug=True)))
        assert "serving gen=2" in ready["STATUS"]
        status = cri_client(service.socket).status(caller)
        assert status is not None and status.id == image_id
        assert (list(status.repo_tags), list(status.repo_digests)) == (
            [caller],
            [f"docker.io/{name}@{pushed.digest}"],
        )
        assert cri_client(service.socket).pulled_as(caller) == pushed.reference
    finally:
        service.stop()
        print(service.process.describe(lines=40))
    cri_client().remove(caller)


def test_an_image_preloaded_under_the_mirror_name_gains_the_callers_name(
    containerd: Containerd,
    registry_factory: RegistryFactory,
    image_factory: ImageBuilder,
    shim_factory: ShimFactory,
    cri_client: CriClientFactory,
    short_dir: Path,
) -> None:
    """As sealos preloads images under its hub's name: the first ImageStatus by the pod's name
    finds it there (no registry asked) and gives it a record under that name; the preloaded
    name stays."""
    mirror = registry_factory()
    name = f"library/p{uuid.uuid4().hex[:8]}"
    pushed = image_factory(mirror, name, "1")
    direct = cri_client()
    image_id = direct.pull(pushed.reference)
    stack = Stack(containerd, registry_factory, image_factory, shim_factory, cri_client, short_dir)
    shim = stack.start([], address=entry(mirror))
    mirror.stop()
    client = cri_client(shim.socket)
    caller = f"docker.io/{name}:1"
    status = client.status(caller)
    assert status is not None and status.id == image_id
    assert sorted(status.repo_tags) == sorted([caller, pushed.reference])
    assert direct.status(caller) is not None, "containerd's own record under the caller's name"
    assert "rewrite decision" not in shim.log()
    client.remove(caller)
    assert direct.status(pushed.reference) is None

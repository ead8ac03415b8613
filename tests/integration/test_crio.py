"""On a CRI-O node, through the shim's socket only: a pull by a name only the private registries
hold, ImageStatus and ListImages by the caller's name and by the ID, a digest pull, RemoveImage by
the caller's name, pull-time failover when the decided registry dies, host-network pods by the
caller's name and by PullImage's image_ref, and v1alpha2. CRI-O has no API for its image records:
the shim translates names in answers, and what it hands back as image_ref and ImageStatus' id
(CRI-O's bare-hex config digest) never names the mirror.

CRI-O is the real binary when IMAGE_CRI_SHIM_CRIO names one (`make test-runtimes`), else the
stand-in (tests/harness/crio.py); each run says which.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.harness.cri import CriClient
from tests.harness.crio import DEFAULT_PAUSE_IMAGE, CriO, crio
from tests.harness.images import push
from tests.harness.node import Shim, Stack, entry, repo
from tests.harness.pods import busybox_layout, container_config, remove_pods, sandbox_config
from tests.harness.processes import wait_for
from tests.harness.registry import CertAuthority, Registry, RegistryFactory

pytestmark = pytest.mark.timeout(300)

BARE_ID = re.compile(r"[0-9a-f]{64}")


@pytest.fixture(scope="module")
def crio_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="cr-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def pause_image(crio_dir: Path) -> Iterator[str]:
    """The sandbox image's registry, up for the whole module (the runtime pulls it itself)."""
    registries = RegistryFactory(crio_dir / "registries", CertAuthority.create(crio_dir / "ca"))
    try:
        # a sandbox that ends on SIGTERM: CRI-O waits out its stop timeout for one that does not
        command = ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
        pause = push(busybox_layout(crio_dir / "pause", command), registries(), "pause", "1")
        yield pause.reference
    finally:
        registries.close()


@pytest.fixture(scope="module")
def runtime(crio_dir: Path, pause_image: str) -> Iterator[CriO]:
    started = crio(crio_dir / "runtime", pause_image)
    print(f"CRI-O: {started.kind}", file=sys.stderr)
    yield started
    started.stop()


def started(stack: Stack, runtime: CriO) -> tuple[Shim, Registry, Registry]:
    """Registry A (auth) as `address`, B as a lower-priority entry; the shim in front of CRI-O."""
    a, b = stack.registries(auth=True), stack.registries()
    return stack.start_on(runtime.address, [entry(b, 10)], entry(a, 100)), a, b


def no_mirror(text: object, *registries: Registry) -> None:
    for registry in registries:
        assert registry.host not in str(text), text


def test_a_private_only_pull_answers_by_the_callers_name_and_removes_by_it(
    stack: Stack, runtime: CriO
) -> None:
    shim, a, b = started(stack, runtime)
    client, direct = stack.cri(shim.socket), stack.cri(runtime.socket)
    assert client.version().runtime_name == "cri-o"
    name = repo()
    pushed = stack.images(a, name, "1")  # only the private registry holds it
    caller = f"docker.io/{name}:1"

    ref = client.pull(f"{name}:1")
    assert BARE_ID.fullmatch(ref), ref  # CRI-O's image ID: the config digest, bare hex
    status = client.status(f"{name}:1")
    assert status is not None, shim.log()
    assert (status.id, list(status.repo_tags)) == (ref, [caller])
    assert list(status.repo_digests) == [f"docker.io/{name}@{pushed.digest}"]
    by_id = client.status(ref)
    assert by_id is not None and list(by_id.repo_tags) == [caller]
    assert [i.id for i in client.list(caller)] == [ref]
    no_mirror([ref, status, by_id, client.list()], a, b)
    assert direct.status(f"{a.host}/{name}:1") is not None, "CRI-O itself holds the pulled name"

    # v1alpha2: CRI-O does not serve it; its answer comes back, and v1 keeps serving
    with pytest.raises(grpc.RpcError) as raised:
        stack.cri(shim.socket, "v1alpha2").status(f"{name}:1")
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert client.status(f"{name}:1") is not None

    client.remove(f"{name}:1")
    assert client.status(f"{name}:1") is None
    assert direct.status(ref) is None, [list(i.repo_tags) for i in direct.list()]


def test_a_digest_pull_answers_by_the_callers_name(stack: Stack, runtime: CriO) -> None:
    shim, a, b = started(stack, runtime)
    client = stack.cri(shim.socket)
    name = repo()
    pushed = stack.images(b, name, "1")  # A answers not found first
    asked = f"{name}@{pushed.digest}"
    ref = client.pull(asked)
    assert BARE_ID.fullmatch(ref), ref
    status = client.status(asked)
    assert status is not None and status.id == ref, shim.log()
    assert list(status.repo_digests) == [f"docker.io/{asked}"]
    no_mirror([status, client.list(), client.list(asked)], a, b)
    client.remove(asked)
    assert stack.cri(runtime.socket).status(ref) is None


def test_the_decided_registry_dying_fails_over_in_the_same_pull(stack: Stack, runtime: CriO) -> None:
    shim, a, b = started(stack, runtime)
    client = stack.cri(shim.socket)
    name = repo()
    stack.images(a, name, "1")
    stack.images(b, name, "1")
    client.pull(f"{name}:1")  # decided: A
    client.remove(f"{name}:1")
    a.stop()  # the decision still names A; CRI-O answers "RegistryUnavailable: … connection refused"
    ref = client.pull(f"{name}:1")
    assert BARE_ID.fullmatch(ref), ref
    assert client.pulled_as(f"{name}:1") == f"{b.host}/{name}:1"
    log = shim.log()
    failovers = re.findall(r'msg="pull failover".*', log)
    assert len(failovers) == 1 and f"to={b.host}/{name}:1" in failovers[0], log
    assert "connection refused" in failovers[0], failovers
    no_mirror([ref, client.status(f"{name}:1")], a, b)


def test_pods_run_by_the_callers_name_and_by_the_image_ref(
    stack: Stack, runtime: CriO, crio_dir: Path
) -> None:
    shim, a, b = started(stack, runtime)
    client = stack.cri(shim.socket)
    name = f"bb{uuid.uuid4().hex[:8]}"
    push(
        busybox_layout(crio_dir / name, ["/bin/sleep", "3600"], label=name), a, f"e2e-test-images/{name}", "1"
    )
    caller = f"registry.k8s.io/e2e-test-images/{name}:1"
    image_id = client.pull(caller)
    pb, service = client.pb, client.runtime
    sandbox = sandbox_config(client, f"pod-{name}")
    sandbox.linux.security_context.namespace_options.network = pb.NamespaceMode.NODE  # host network
    sandbox.hostname = ""  # the node's: no UTS namespace of its own with the host's network
    pod = service.RunPodSandbox(pb.RunPodSandboxRequest(config=sandbox), timeout=60).pod_sandbox_id
    try:
        for label, image in (("by-name", caller), ("by-ref", image_id)):
            config = container_config(client, label, image, ["/bin/sleep", "3600"])
            config.image.user_specified_image = caller  # as kubelet sends it; CRI-O wants it
            request = pb.CreateContainerRequest(pod_sandbox_id=pod, config=config, sandbox_config=sandbox)
            container = service.CreateContainer(request, timeout=60).container_id
            service.StartContainer(pb.StartContainerRequest(container_id=container), timeout=60)
            status = service.ContainerStatus(
                pb.ContainerStatusRequest(container_id=container), timeout=30
            ).status
            assert status.state == pb.ContainerState.CONTAINER_RUNNING, label
            print(
                f"{label}: ContainerStatus image={status.image.image} image_ref={status.image_ref}",
                file=sys.stderr,
            )
        no_mirror([image_id, client.status(caller)], a, b)
    finally:
        direct = stack.cri(runtime.socket)
        for container in direct.runtime.ListContainers(pb.ListContainersRequest(), timeout=30).containers:
            # sleep as PID 1 ignores SIGTERM: CRI-O would wait its 30 s stop timeout for each
            direct.runtime.StopContainer(
                pb.StopContainerRequest(container_id=container.id, timeout=0), timeout=60
            )
        remove_pods(direct)


def test_a_sandbox_image_from_a_mirror_is_not_held_under_crios_name_and_the_shim_says_so(
    stack: Stack, crio_dir: Path
) -> None:
    """CRI-O at its default pause_image on a node that cannot reach registry.k8s.io: the shim pulls
    it from the private registry, but CRI-O can give it no second name, so it stays under the
    mirror's name; the keeper warns that CRI-O does not hold it under its own (registries.conf
    is what covers it there)."""
    runtime = crio(crio_dir / "bare")  # no pause_image: CRI-O's built-in one
    direct = CriClient(runtime.socket, timeout=60)
    try:
        info = direct.runtime.Status(direct.pb.StatusRequest(verbose=True), timeout=30).info
        pause = json.loads(info["config"])["sandboxImage"]
        assert pause == DEFAULT_PAUSE_IMAGE, info
        assert direct.status(pause) is None
        a = stack.registries(auth=True)
        tag = pause.rsplit(":", 1)[1]
        push(
            busybox_layout(crio_dir / "bare-pause", ["/bin/sleep", "2147483647"], label="pause"),
            a,
            "pause",
            tag,
        )
        shim = stack.start_on(runtime.address, [], entry(a))
        said = "but the runtime does not hold it under this name"
        wait_for(lambda: said in shim.log(), 60, "the keeper's warning", detail=shim.log)
        warning = next(line for line in shim.log().splitlines() if said in line)
        assert "sandbox image cannot be had" in warning and f"image={pause}" in warning, warning
        assert direct.status(pause) is None, "CRI-O holds it under the mirror's name only"
        assert direct.status(f"{a.host}/pause:{tag}") is not None
        assert "sandbox image pulled" not in shim.log()
        print(f"CRI-O ({runtime.kind}): {warning}")
    finally:
        direct.close()
        runtime.stop()

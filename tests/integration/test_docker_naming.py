"""On a Docker-backed node (cri-dockerd over Docker Engine) the caller's name is native, through
the shim's socket only: after a rewritten pull Docker's own records carry the caller's name, so
no answer, status or `docker images` line names the mirror; RemoveImage by the caller's name
removes the image; all of it across restarts of the shim and of Docker, with every registry down.

Docker Engine is Debian's, run privately; cri-dockerd is the real binary when
IMAGE_CRI_SHIM_CRI_DOCKERD names one (`make test-runtimes`), else the stand-in (tests/harness/docker.py).
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

from tests.harness.cli import run, write
from tests.harness.cri import CriClient
from tests.harness.docker import DEFAULT_SANDBOX_IMAGE, CriDockerd, DockerEngine, cri_dockerd
from tests.harness.images import push
from tests.harness.node import Shim, Stack, entry, repo
from tests.harness.pods import busybox_layout, container_config, remove_pods, sandbox_config
from tests.harness.processes import wait_for
from tests.harness.registry import CertAuthority, Registry, RegistryFactory

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def docker_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="dk-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def engine(docker_dir: Path) -> Iterator[DockerEngine]:
    daemon = DockerEngine(docker_dir / "engine").start()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def sandbox_image(engine: DockerEngine, docker_dir: Path) -> Iterator[str]:
    """The pause image, on the node before any pod (Docker pulls it itself, past the shim)."""
    registries = RegistryFactory(docker_dir / "registries", CertAuthority.create(docker_dir / "ca"))
    try:
        pause = push(
            busybox_layout(docker_dir / "pause", ["/bin/sleep", "2147483647"]), registries(), "pause", "1"
        )
        engine.api.pull(pause.reference)
        yield pause.reference
    finally:
        registries.close()


@pytest.fixture(scope="module")
def cri(engine: DockerEngine, docker_dir: Path, sandbox_image: str) -> Iterator[CriDockerd]:
    runtime = cri_dockerd(engine, docker_dir / "cri-dockerd.sock", sandbox_image)
    print(f"cri-dockerd: {runtime.kind}", file=sys.stderr)
    yield runtime
    runtime.stop()


def familiar(name: str) -> str:
    """How Docker (and so cri-dockerd) spells `docker.io/library/x:1`: `x:1`."""
    return name.removeprefix("docker.io/").removeprefix("library/")


def started(stack: Stack, cri: CriDockerd, engine: DockerEngine) -> tuple[Shim, Registry, Registry]:
    """Registry A (auth) as `address`, B as a lower-priority entry; the shim in front of cri-dockerd."""
    a, b = stack.registries(auth=True), stack.registries()
    shim = stack.start_on(
        f"unix://{cri.socket}", [entry(b, 10)], entry(a, 100), dockerSocket=str(engine.socket)
    )
    return shim, a, b


def no_mirror(text: object, *registries: Registry) -> None:
    for registry in registries:
        assert registry.host not in str(text), text


def test_a_rewritten_pull_is_held_by_docker_under_the_callers_name(
    stack: Stack, cri: CriDockerd, engine: DockerEngine
) -> None:
    shim, a, b = started(stack, cri, engine)
    client = stack.cri(shim.socket)
    name = repo()
    stack.images(a, name, "1")  # only the private registry holds it
    caller = f"docker.io/{name}:1"

    ref = client.pull(f"{name}:1")
    assert ref.startswith("sha256:"), ref  # the image ID, not the mirror's repo digest
    status = client.status(f"{name}:1")
    assert status is not None, shim.log()
    assert (list(status.repo_tags), list(status.repo_digests), status.id) == ([familiar(caller)], [], ref)
    by_id = client.status(ref)
    assert by_id is not None and list(by_id.repo_tags) == [familiar(caller)]
    listed = client.list(familiar(caller))  # Docker matches a filter against its own spelling
    assert [(i.id, list(i.repo_tags)) for i in listed] == [(ref, [familiar(caller)])]
    no_mirror([client.list(), engine.api.names()], a, b)
    log = shim.log()
    assert "naming=docker" in log, log

    # v1alpha2: cri-dockerd does not serve it; its answer comes back, and v1 keeps serving
    with pytest.raises(grpc.RpcError) as raised:
        stack.cri(shim.socket, "v1alpha2").status(f"{name}:1")
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert client.status(f"{name}:1") is not None

    # RemoveImage by the caller's name removes the image, and leaves no name behind
    client.remove(f"{name}:1")
    assert client.status(f"{name}:1") is None
    assert engine.api.inspect(ref) is None, engine.api.names()
    assert f'msg="image removed" image=docker.io/{name}:1 id={ref}' in shim.log()


def test_a_digest_pull_answers_by_the_callers_name(
    stack: Stack, cri: CriDockerd, engine: DockerEngine
) -> None:
    shim, a, b = started(stack, cri, engine)
    client = stack.cri(shim.socket)
    name = repo()
    pushed = stack.images(a, name, "1")
    asked = f"{name}@{pushed.digest}"
    ref = client.pull(asked)
    assert ref.startswith("sha256:"), ref
    status = client.status(asked)
    assert status is not None and status.id == ref, shim.log()
    assert list(status.repo_digests) == [familiar(f"docker.io/{asked}")]  # as Docker spells it
    no_mirror([status, client.list(), client.list(asked)], a, b)
    # Docker makes digest records only when it pulls: its pulled record keeps the image there
    held = engine.api.inspect(ref)
    assert held is not None and (held["RepoTags"] or [], held["RepoDigests"]) == ([], [f"{a.host}/{asked}"])
    client.remove(asked)
    assert engine.api.inspect(ref) is None


def test_a_pulled_name_the_node_held_before_stays(
    stack: Stack, cri: CriDockerd, engine: DockerEngine
) -> None:
    shim, _, b = started(stack, cri, engine)
    name = repo()
    pushed = stack.images(b, name, "1")
    engine.api.pull(pushed.reference)  # preloaded past the shim, under the registry's name
    caller = familiar(f"docker.io/{name}:1")
    client = stack.cri(shim.socket)
    ref = client.pull(f"{name}:1")
    status = client.status(f"{name}:1")
    assert status is not None and status.id == ref, shim.log()
    assert sorted(status.repo_tags) == sorted([caller, pushed.reference])
    assert sorted(n for n in engine.api.names() if name.split("/")[-1] in n) == sorted(
        [caller, pushed.reference, f"{b.host}/{name}@{pushed.digest}"]
    )
    client.remove(f"{name}:1")
    assert engine.api.inspect(ref) is None


def test_names_survive_restarts_of_the_shim_and_of_docker_with_every_registry_down(
    stack: Stack, cri: CriDockerd, engine: DockerEngine
) -> None:
    shim, a, b = started(stack, cri, engine)
    name = repo()
    stack.images(b, name, "2")  # only B holds it: A answers not found first
    ref = stack.cri(shim.socket).pull(f"{name}:2")
    shim.process.stop()
    a.stop()
    b.stop()
    engine.restart()
    shim = stack.start_on(
        f"unix://{cri.socket}", [entry(b, 10)], entry(a, 100), dockerSocket=str(engine.socket)
    )
    client = stack.cri(shim.socket)
    status = client.status(f"{name}:2")
    assert status is not None and status.id == ref, shim.log()
    assert list(status.repo_tags) == [familiar(f"docker.io/{name}:2")]
    no_mirror([client.list(), engine.api.names()], a, b)
    client.remove(f"{name}:2")
    assert engine.api.inspect(ref) is None


def test_without_dockers_api_the_image_ref_is_the_image_id(
    stack: Stack, cri: CriDockerd, engine: DockerEngine
) -> None:
    a = stack.registries()
    shim = stack.start_on(f"unix://{cri.socket}", [], entry(a), dockerSocket=str(stack.dir / "none.sock"))
    client: CriClient = stack.cri(shim.socket)
    name = repo()
    stack.images(a, name, "1")
    ref = client.pull(f"{name}:1")
    assert ref.startswith("sha256:"), ref
    status = client.status(f"{name}:1")
    assert status is not None and list(status.repo_tags) == [f"docker.io/{name}:1"], shim.log()
    no_mirror([status, client.list(f"{name}:1")], a)
    assert "naming=translation" in shim.log()
    client.remove(f"{name}:1")
    assert engine.api.inspect(ref) is None, engine.api.names()


def test_dry_run_names_the_runtime_and_its_naming_mode(
    stack: Stack, cri: CriDockerd, engine: DockerEngine
) -> None:
    a = stack.registries()
    for socket, expected in (
        (
            engine.socket,
            f"names        native: Docker Engine's image records, through its API at {engine.socket}",
        ),
        (stack.dir / "none.sock", "names        translation: the caller's names in answers"),
    ):
        config: dict[str, object] = {
            "cri": str(cri.socket),
            "address": a.url,
            "dockerSocket": str(socket),
            "configMap": {"enabled": False},
        }
        done = run("-f", str(write(stack.dir, config)), "--dry-run")
        assert done.returncode == 0, done.stderr
        assert f"{cri.socket}: docker {engine.api.version()} (v1)" in done.stdout, done.stdout
        assert expected in done.stdout, done.stdout


def test_pods_run_by_the_callers_name_and_by_the_image_ref_and_their_status_names_no_mirror(
    stack: Stack, cri: CriDockerd, engine: DockerEngine, docker_dir: Path
) -> None:
    shim, a, b = started(stack, cri, engine)
    client = stack.cri(shim.socket)
    name = f"bb{uuid.uuid4().hex[:8]}"
    layout = busybox_layout(docker_dir / name, ["/bin/sleep", "3600"], label=name)
    push(layout, a, f"e2e-test-images/{name}", "1.29-2")
    caller = f"registry.k8s.io/e2e-test-images/{name}:1.29-2"
    image_id = client.pull(caller)
    assert image_id.startswith("sha256:"), image_id
    pb, runtime = client.pb, client.runtime
    sandbox = sandbox_config(client, f"pod-{name}")
    sandbox.linux.security_context.namespace_options.network = pb.NamespaceMode.NODE  # host network
    pod = runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=sandbox), timeout=60).pod_sandbox_id
    try:
        for label, image in (("by-name", caller), ("by-ref", image_id)):
            config = container_config(client, label, image, ["/bin/sleep", "3600"])
            request = pb.CreateContainerRequest(pod_sandbox_id=pod, config=config, sandbox_config=sandbox)
            container = runtime.CreateContainer(request, timeout=60).container_id
            runtime.StartContainer(pb.StartContainerRequest(container_id=container), timeout=60)
            status = runtime.ContainerStatus(
                pb.ContainerStatusRequest(container_id=container), timeout=30
            ).status
            assert status.state == pb.ContainerState.CONTAINER_RUNNING
            assert (status.image.image, status.image_ref) == (caller, f"docker://{image_id}"), label
            no_mirror(status, a, b)
        no_mirror([client.list(), engine.api.names()], a, b)
    finally:
        remove_pods(stack.cri(cri.socket))


def test_the_decided_registry_dying_fails_over_in_the_same_pull(
    stack: Stack, cri: CriDockerd, engine: DockerEngine
) -> None:
    shim, a, b = started(stack, cri, engine)
    client = stack.cri(shim.socket)
    name = repo()
    stack.images(a, name, "1")
    stack.images(b, name, "1")
    client.pull(f"{name}:1")  # decided: A
    client.remove(f"{name}:1")
    a.stop()  # the decision still names A; Docker answers "Error response from daemon: … connection refused"
    ref = client.pull(f"{name}:1")
    assert ref.startswith("sha256:"), ref
    log = shim.log()
    failovers = re.findall(r'msg="pull failover".*', log)
    assert len(failovers) == 1 and f"to={b.host}/{name}:1" in failovers[0], log
    assert "connection refused" in failovers[0], failovers
    no_mirror([ref, client.status(f"{name}:1"), client.list(), engine.api.names()], a, b)


def test_a_node_that_never_held_the_sandbox_image_gets_it_under_the_runtimes_name(
    stack: Stack, docker_dir: Path
) -> None:
    """cri-dockerd at its default sandbox image on a node that cannot reach registry.k8s.io and
    never held it: the shim keeps it in Docker under that very name, and a pod created on
    cri-dockerd's own socket (kubelet's path, past the shim) starts."""
    engine = DockerEngine(docker_dir / "bare").start()
    runtime = cri_dockerd(engine, docker_dir / "bare-cri.sock")  # no --pod-infra-container-image
    direct = CriClient(runtime.socket, timeout=60)
    try:
        info = direct.runtime.Status(direct.pb.StatusRequest(verbose=True), timeout=30).info
        pause = json.loads(info["config"])["sandboxImage"]
        assert pause == DEFAULT_SANDBOX_IMAGE, info
        assert direct.status(pause) is None and engine.api.names() == []
        pb = direct.pb
        sandbox = sandbox_config(direct, "kept-pause")
        sandbox.linux.security_context.namespace_options.network = pb.NamespaceMode.NODE
        with pytest.raises(grpc.RpcError) as refused:  # what every pod on this node did until now
            direct.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=sandbox), timeout=60)
        assert f'failed pulling image "{pause}"' in str(refused.value.details()), refused.value
        remove_pods(direct)
        a, b = stack.registries(auth=True), stack.registries()
        layout = busybox_layout(docker_dir / "bare-pause", ["/bin/sleep", "2147483647"], label="pause")
        push(layout, a, "pause", pause.rsplit(":", 1)[1])
        shim = stack.start_on(
            f"unix://{runtime.socket}", [entry(b, 10)], entry(a, 100), dockerSocket=str(engine.socket)
        )
        wait_for(lambda: "sandbox image pulled" in shim.log(), 60, "the sandbox image kept", detail=shim.log)
        status = direct.status(pause)
        assert status is not None and list(status.repo_tags) == [pause], shim.log()
        no_mirror([direct.list(), engine.api.names()], a, b)
        pod = direct.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=sandbox), timeout=60).pod_sandbox_id
        state = direct.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod), timeout=30)
        assert state.status.state == pb.PodSandboxState.SANDBOX_READY
        print(f"cri-dockerd ({runtime.kind}): {pause} kept as {list(status.repo_tags)}, pod {pod[:12]} ready")
    finally:
        try:
            remove_pods(direct)
        finally:
            direct.close()
            runtime.stop()
            engine.stop()
